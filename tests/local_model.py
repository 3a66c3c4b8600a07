"""What the tests of the local model share: the SmolLM2 GGUF loaded once, and the plain openai clients over its
transports. A test module takes these fixtures with ``pytest_plugins = ["local_model"]`` (its own fixture of the
same name, if any, wins)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import openai
import pytest
import torch

from blackbox_sdk.local import AsyncHFTransport, HFBackend, HFTransport, default_gguf_path, load_backend

BASE_URL = "http://hf.local/v1"


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    """The SmolLM2 GGUF, loaded once per process."""
    torch.set_num_threads(1)
    return load_backend(default_gguf_path())


@pytest.fixture(scope="module")
def client(backend: HFBackend) -> Iterator[openai.OpenAI]:
    """The plain openai client over the local transport."""
    http = httpx2.Client(transport=HFTransport(backend))
    with openai.OpenAI(api_key="x", base_url=BASE_URL, http_client=http, max_retries=0) as openai_client:
        yield openai_client


@pytest.fixture
async def aclient(backend: HFBackend) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async openai client over the async local transport."""
    http = httpx2.AsyncClient(transport=AsyncHFTransport(backend))
    async with openai.AsyncOpenAI(api_key="x", base_url=BASE_URL, http_client=http, max_retries=0) as openai_client:
        yield openai_client
