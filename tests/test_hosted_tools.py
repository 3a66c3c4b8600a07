"""Tools the provider runs itself (web search, file search, code interpreter, image generation, remote
MCP, a hosted shell) bill a fee per call and read their results in as input tokens the SDK never
counted: under a budget a request naming one is refused before it is sent; a cache hit is served, and
tools the caller's code runs (functions, a local shell, ...) go through as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from responses_upstream import ResponsesUpstream

from blackbox_sdk import Budget, OpenAI, PriceMissingError

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}  # a loopback endpoint is free unless priced
FUNCTION = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture
def upstream() -> Iterator[ResponsesUpstream]:
    server = ResponsesUpstream(["Paris is the capital."] * 8)
    yield server
    server.close()


def _client(upstream: ResponsesUpstream, folder: Path, budget: bool = True) -> OpenAI:
    ledger = Budget(total_usd=5.0, prices=PRICES, ledger=str(folder / "ledger.db")) if budget else None
    return OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0, budget=ledger, cache=str(folder / "cache"))


@pytest.mark.parametrize("tool", [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "docs", "server_url": "https://example.invalid/mcp"},
    {"type": "shell", "environment": {"type": "container_auto"}},
    {"type": "tool_search"},
    {"type": "a_tool_from_next_year"},
])
def test_a_budgeted_request_with_a_provider_run_tool_is_refused_unsent(upstream: ResponsesUpstream, tmp_path: Path, tool: dict[str, Any]) -> None:
    client = _client(upstream, tmp_path)
    with pytest.raises(PriceMissingError, match=f"tool '{tool['type']}'.*with_options\\(budget=None\\)"):
        client.responses.create(model=MODEL, input="What is the capital of France?", tools=[FUNCTION, tool])
    assert upstream.bodies == []
    report = client.options.budget.report()
    assert (report.spent_usd, report.reserved_usd) == (0.0, 0.0)


@pytest.mark.parametrize("tool", [
    FUNCTION,
    {"type": "custom", "name": "grammar"},
    {"type": "local_shell"},
    {"type": "shell", "environment": {"type": "local"}},
    {"type": "tool_search", "execution": "client"},
    {"type": "apply_patch"},
])
def test_tools_the_callers_code_runs_are_sent_and_charged(upstream: ResponsesUpstream, tmp_path: Path, tool: dict[str, Any]) -> None:
    client = _client(upstream, tmp_path)
    response = client.responses.create(model=MODEL, input="What is the capital of France?", tools=[tool])
    assert response.output_text == "Paris is the capital."
    assert upstream.bodies[0]["tools"] == [tool]
    assert client.options.budget.report().spent_usd > 0


def test_without_a_budget_and_from_the_cache_a_hosted_tool_request_is_served(upstream: ResponsesUpstream, tmp_path: Path) -> None:
    asked = {"model": MODEL, "input": "What is the capital of France?", "tools": [{"type": "web_search"}]}
    first = _client(upstream, tmp_path, budget=False).responses.create(**asked)
    again = _client(upstream, tmp_path).responses.create(**asked)  # budgeted, sharing the cache folder
    assert again.blackbox.cache_hit and again.output_text == first.output_text
    assert len(upstream.bodies) == 1


def test_chat_web_search_options_are_refused_under_a_budget(tmp_path: Path) -> None:
    seen: list[Any] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(500)

    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), max_retries=0,
                    budget=Budget(total_usd=5.0, ledger=str(tmp_path / "ledger.db")))
    with pytest.raises(PriceMissingError, match="web_search_options"):
        client.chat.completions.create(model="gpt-4o-search-preview", messages=[{"role": "user", "content": "news?"}], web_search_options={})
    assert seen == []
