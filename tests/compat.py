"""What the compatibility suite (tests/test_compat_*.py) shares: the SDK's clients on both real
backends, and the call log, cache and budget that show each library's calls went through the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from blackbox_sdk import AsyncOpenAI, Budget, Cache, CallLog, CallRecord, OpenAI

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}  # USD per million tokens: every answer costs something
QUESTION = "What is the capital of France?"


@dataclass
class Sdk:
    """One backend's base URL with the log, cache and budget that its SDK clients share."""

    backend: str  # "llama" (llama.cpp's server) or "hf" (the in-process local model)
    base_url: str
    log: CallLog
    cache: Cache
    budget: Budget
    _clients: list[OpenAI] = field(default_factory=list)
    _async_clients: list[AsyncOpenAI] = field(default_factory=list)

    def client(self) -> OpenAI:
        """A sync SDK client on this backend, logging, caching and charging."""
        client = OpenAI(base_url=self.base_url, api_key="sk-compat", log=self.log, cache=self.cache, budget=self.budget)
        self._clients.append(client)
        return client

    def async_client(self) -> AsyncOpenAI:
        """An async SDK client on this backend, logging, caching and charging."""
        client = AsyncOpenAI(base_url=self.base_url, api_key="sk-compat", log=self.log, cache=self.cache, budget=self.budget)
        self._async_clients.append(client)
        return client

    def calls(self) -> list[CallRecord]:
        """Every call logged so far, oldest first."""
        self.log.flush()
        return list(self.log.calls())

    def spent(self) -> float:
        """What the budget's ledger has been charged, in USD."""
        return self.budget.spent()

    async def aclose(self) -> None:
        """Close the clients (the async ones on the test's own event loop), the log and the cache."""
        for client in self._clients:
            client.close()
        for async_client in self._async_clients:
            await async_client.close()
        self.log.close()
        self.cache.close()


def open_sdk(backend: str, base_url: str, tmp_path: Path) -> Sdk:
    """Fresh log, cache and priced budget under `tmp_path` for one backend."""
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    return Sdk(backend, base_url, CallLog(tmp_path / "calls.db"), Cache(tmp_path / "cache"), budget)


@pytest_asyncio.fixture(loop_scope="function")
async def llama_sdk(llama_server: str, tmp_path: Path) -> AsyncIterator[Sdk]:
    """The SDK on llama.cpp's OpenAI-compatible server."""
    sdk = open_sdk("llama", llama_server, tmp_path)
    yield sdk
    await sdk.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def hf_sdk(gguf_path: Path, tmp_path: Path) -> AsyncIterator[Sdk]:
    """The SDK on the in-process `hf:` backend."""
    sdk = open_sdk("hf", f"hf:{gguf_path}", tmp_path)
    yield sdk
    await sdk.aclose()


@pytest.fixture(params=["llama", "hf"])
def sdk(request: pytest.FixtureRequest) -> Sdk:
    """The SDK on each real backend in turn."""
    return request.getfixturevalue(f"{request.param}_sdk")


def assert_charged_and_logged(sdk: Sdk, calls_before: int = 0) -> CallRecord:
    """The library's latest call went through the SDK: logged, not from the cache, and charged; returns its record."""
    calls = sdk.calls()
    assert len(calls) > calls_before, "the library's call did not reach the SDK's call log"
    record = calls[-1]
    assert record.model == MODEL and record.error is None and not record.cache_hit
    assert record.cost_usd > 0 and sdk.spent() > 0
    return record


def assert_cache_hit(sdk: Sdk, spent_before: float, calls_before: int) -> CallRecord:
    """The library's repeated call was answered from the SDK's cache: logged as a hit, nothing more spent."""
    calls = sdk.calls()
    assert len(calls) == calls_before + 1, f"expected one more logged call, got {len(calls) - calls_before}"
    record = calls[-1]
    assert record.cache_hit and record.cost_usd == 0.0
    assert sdk.spent() == pytest.approx(spent_before)
    return record
