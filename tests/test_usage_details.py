"""The usage of an answer made from several requests (reranked over K answers, some from the cache)
reports every detail count the answers did (cached, cache write, reasoning tokens, their breakdowns),
summed, in the shape openai's types declare, so that it validates strictly; the budget charges what
it did (reasoning tokens are inside the output tokens). Test doubles: no real server reports these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai.types import CompletionUsage
from openai.types.responses import Response, ResponseUsage

from blackbox_sdk import Budget, OpenAI
from blackbox_sdk.local._responses_api import response_usage

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}
CACHE_WRITES = {"ttl_12h_tokens": 1, "ttl_30m_tokens": 2}


def longest(question: str, answers: list[str]) -> list[float]:
    """A reranker: longer answers first."""
    return [float(len(a)) for a in answers]


class Server:
    """Answers /responses and /chat/completions; answer i (from 1) is i letters long and reports
    i cached tokens, 10 * i cache-write tokens (with a TTL breakdown when `breakdown`) and 100 * i
    reasoning tokens; `details=False` leaves the detail counts out of every answer."""

    def __init__(self, details: bool = True, breakdown: bool = False) -> None:
        self.details, self.breakdown, self.requests = details, breakdown, 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        i, body = self.requests, json.loads(request.content)
        if request.url.path.endswith("/chat/completions"):
            return httpx2.Response(200, json=self.chat(i))
        given: dict[str, Any] = {"cached_tokens": i, "cache_write_tokens": 10 * i} if self.details else {}
        if self.breakdown:
            given["cache_write_tokens_details"] = CACHE_WRITES
        usage = {"input_tokens": 200, "input_tokens_details": given, "output_tokens": 300 + i,
                 "output_tokens_details": {"reasoning_tokens": 100 * i} if self.details else {}, "total_tokens": 500 + i}
        message = {"type": "message", "id": f"msg_{i}", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "a" * i, "annotations": []}]}
        response = {"id": f"resp_{i}", "object": "response", "created_at": 1, "model": body["model"], "status": "completed",
                    "output": [message], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage}
        return httpx2.Response(200, json=response)

    def chat(self, i: int) -> dict[str, Any]:
        """A chat completion whose usage has every detail openai's `CompletionUsage` declares."""
        usage = {"prompt_tokens": 200, "completion_tokens": 300, "total_tokens": 500,
                 "prompt_tokens_details": {"cached_tokens": i, "cache_write_tokens": 10 * i, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 100 * i, "accepted_prediction_tokens": i,
                                               "rejected_prediction_tokens": 2 * i, "audio_tokens": 0}}
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "b" * i}}
        return {"id": f"chat_{i}", "object": "chat.completion", "created": 1, "model": MODEL, "choices": [choice], "usage": usage}


def client(server: Server, budget: Budget, cache: Path | None = None) -> OpenAI:
    """The SDK's client on the double, reranking with `longest`."""
    http = httpx2.Client(transport=httpx2.MockTransport(server))
    return OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, budget=budget,
                  cache=cache, reranker=longest)


def strict(usage: Any, model: type) -> dict[str, Any]:
    """The usage as JSON, after checking that openai's type takes it strictly."""
    data = usage.to_dict()
    model.model_validate(data, strict=True)
    return data


def test_a_reranked_response_reports_the_answers_detail_counts_summed() -> None:
    """Three answers' cached, cache-write and reasoning tokens summed, the whole usage valid for openai's
    strict `ResponseUsage` (so the Response is validated, not built leniently); charged as before."""
    budget = Budget(total_usd=5.0, prices=PRICES)
    response = client(Server(), budget).responses.create(model=MODEL, input="hi", rerank_n=3)
    assert response.blackbox.requests == 3 and response.output_text == "aaa"
    assert strict(response.usage, ResponseUsage) == {
        "input_tokens": 600, "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 60},
        "output_tokens": 906, "output_tokens_details": {"reasoning_tokens": 600}, "total_tokens": 1506}
    Response.model_validate(response.to_dict(), strict=True)
    assert budget.report().spent_usd == pytest.approx((600 * 1.0 + 906 * 2.0) / 1e6)  # reasoning is inside output


def test_a_reranked_stream_ends_with_the_summed_usage() -> None:
    """A reranked stream's final response carries the same usage as the whole answer's."""
    stream = client(Server(), Budget(total_usd=5.0, prices=PRICES)).responses.create(model=MODEL, input="hi", rerank_n=2, stream=True)
    final = list(stream)[-1].response
    assert strict(final.usage, ResponseUsage)["output_tokens_details"] == {"reasoning_tokens": 300}


def test_counts_no_answer_reported_stay_as_openai_declares_them() -> None:
    """Answers without details: the required counts are 0, the optional breakdown absent; a breakdown
    some answers report is summed."""
    plain = client(Server(details=False), Budget(total_usd=5.0, prices=PRICES)).responses.create(model=MODEL, input="hi", rerank_n=2)
    assert strict(plain.usage, ResponseUsage)["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert plain.usage.output_tokens_details.reasoning_tokens == 0
    broken_down = client(Server(breakdown=True), Budget(total_usd=5.0, prices=PRICES)).responses.create(model=MODEL, input="hi", rerank_n=2)
    details = strict(broken_down.usage, ResponseUsage)["input_tokens_details"]
    assert details == {"cached_tokens": 3, "cache_write_tokens": 30, "cache_write_tokens_details": {"ttl_12h_tokens": 2, "ttl_30m_tokens": 4}}


def test_answers_from_the_cache_add_their_detail_counts(tmp_path: Path) -> None:
    """Two answers from the cache and one fetched: the reranked usage sums all three answers' details,
    as it sums their tokens; the budget charges only the one fetched."""
    budget = Budget(total_usd=5.0, prices=PRICES)
    sdk = client(Server(), budget, cache=tmp_path / "cache")
    sdk.responses.create(model=MODEL, input="hi", rerank_n=2)
    spent = budget.report().spent_usd
    response = sdk.responses.create(model=MODEL, input="hi", rerank_n=3)
    assert response.blackbox.cached_candidates == 2 and response.blackbox.requests == 1
    data = strict(response.usage, ResponseUsage)
    assert data["output_tokens"] == 906 and data["output_tokens_details"] == {"reasoning_tokens": 600}
    assert data["input_tokens_details"] == {"cached_tokens": 6, "cache_write_tokens": 60}
    assert budget.report().spent_usd - spent == pytest.approx((200 * 1.0 + 303 * 2.0) / 1e6)


def test_a_reranked_chat_completion_sums_its_detail_counts() -> None:
    """Chat's combined usage keeps every detail count of `CompletionUsage`, summed; charged as before."""
    budget = Budget(total_usd=5.0, prices=PRICES)
    completion = client(Server(), budget).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], rerank_n=3)
    data = strict(completion.usage, CompletionUsage)
    assert data["prompt_tokens_details"] == {"audio_tokens": 0, "cache_write_tokens": 60, "cached_tokens": 6}
    assert data["completion_tokens_details"] == {"accepted_prediction_tokens": 6, "audio_tokens": 0, "reasoning_tokens": 600, "rejected_prediction_tokens": 12}
    assert budget.report().spent_usd == pytest.approx((600 * 1.0 + 900 * 2.0) / 1e6)


def test_the_local_models_usage_is_valid_for_openai() -> None:
    """The local `hf:` model's Responses usage has every count openai's `ResponseUsage` requires."""
    ResponseUsage.model_validate(response_usage(3, 4), strict=True)
