"""A call's worst case as the server may bill it, whatever the caller wrote: a legacy completion with `best_of`
fanned out over a server that ignores `n` (each single request carries `best_of`), a raw view's lost answer
(charged for the `n` it sent, not the caller's), a chat call that names both output caps. The real llama.cpp
server shows what it can (it ignores `n`, `best_of` and `max_completion_tokens`); doubles lose answers."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, CallLog, ConfigError, OpenAI

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # $1000 per million tokens: one token costs $0.001
QUESTION = [{"role": "user", "content": "Write a long story about a dragon."}]
ONE_COMPLETION = {
    "id": "c", "object": "text_completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "text": " there was", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
}


def _budget(folder: Path, cap: float, **options: Any) -> Budget:
    return Budget(total_usd=cap, prices=PRICES, ledger=str(folder / "ledger.db"), **options)


def _recording(seen: list[dict[str, Any]], **options: Any) -> httpx2.Client:
    """An HTTP client that notes each request body it sends."""
    return httpx2.Client(event_hooks={"request": [lambda request: seen.append(json.loads(request.content))]}, timeout=120, **options)


def test_a_best_of_call_to_a_server_that_may_ignore_n_reserves_best_of_for_each_single_request(llama_server: str, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    budget = _budget(tmp_path, cap=0.4)  # best_of's 3 generations of 16 tokens fit; 2 single requests of 3 each do not
    client = OpenAI(base_url=llama_server, api_key="none", budget=budget, http_client=_recording(seen))
    with pytest.raises(BudgetExceededError, match="6 x 16 output tokens"):
        client.completions.create(model=MODEL, prompt="Once upon a time", n=2, best_of=3, max_tokens=16)
    assert seen == [] and budget.report().spent_usd == 0.0
    roomy = OpenAI(base_url=llama_server, api_key="none", budget=_budget(tmp_path, cap=10.0), http_client=_recording(seen))
    answer = roomy.completions.create(model=MODEL, prompt="Once upon a time", n=2, best_of=3, max_tokens=16)
    assert len(answer.choices) == 2  # llama.cpp ignored n: the SDK sent a single request for the second answer
    assert [(sent["n"], sent["best_of"]) for sent in seen] == [(2, 3), (1, 3)]  # each may have best_of generated


def test_lost_single_requests_of_a_best_of_fan_out_stay_within_the_reservation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        if len(seen) > 1:  # the single requests' answers are lost: each is charged best_of's generations
            raise httpx2.ReadTimeout("timed out", request=request)
        return httpx2.Response(200, json=ONE_COMPLETION)  # one choice: the server ignored n

    budget, log = _budget(tmp_path, cap=10.0), CallLog(tmp_path / "calls.db")
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), max_retries=0, budget=budget, log=log)
    with caplog.at_level(logging.WARNING), pytest.raises(openai.APITimeoutError):
        client.completions.create(model=MODEL, prompt="Once upon a time", n=3, best_of=3, max_tokens=100)
    assert [(sent["n"], sent["best_of"]) for sent in seen] == [(3, 3), (1, 3), (1, 3)]
    [spend] = budget.settled_since(0)
    assert spend.completion_tokens == 2 + 2 * 3 * 100
    assert "more than its reservation" not in caplog.text
    log.flush()
    assert sum(record.cost_usd for record in log.calls()) == pytest.approx(budget.report().spent_usd)
    log.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_raw_view_s_lost_answer_is_charged_the_n_it_sent(asynchronous: bool, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        raise httpx2.ReadTimeout("timed out", request=request)

    budget, log = _budget(tmp_path, cap=0.25, policy="shrink"), CallLog(tmp_path / "calls.db")  # n=4 shrinks to 1
    options: dict[str, Any] = {"api_key": "sk-test", "max_retries": 0, "budget": budget, "log": log}
    ask = {"model": MODEL, "messages": QUESTION, "n": 4, "max_tokens": 100}
    if asynchronous:
        async def run() -> None:
            client = AsyncOpenAI(http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handle)), **options)
            async with client.with_streaming_response.chat.completions.create(**ask):
                pass

        with pytest.raises(openai.APITimeoutError):
            asyncio.run(run())
    else:
        client = OpenAI(http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), **options)
        with pytest.raises(openai.APITimeoutError), client.with_streaming_response.chat.completions.create(**ask):
            pass
    [sent] = seen
    [lost] = budget.settled_since(0)
    assert lost.completion_tokens == sent["n"] * sent["max_tokens"]  # what went out, not the caller's n
    assert budget.report().spent_usd <= 0.25 and budget.report().reserved_usd == 0.0
    log.flush()
    assert sum(record.cost_usd for record in log.calls()) == pytest.approx(budget.report().spent_usd)
    log.close()


def test_a_chat_call_naming_both_output_caps_reserves_the_larger(llama_server: str, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    budget = _budget(tmp_path, cap=0.2)  # 8 output tokens fit; the 400 llama.cpp honours (it ignores max_completion_tokens) do not
    client = OpenAI(base_url=llama_server, api_key="none", budget=budget, http_client=_recording(seen))
    with pytest.raises(BudgetExceededError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=400, max_completion_tokens=8)
    assert seen == [] and budget.report().spent_usd == 0.0
    shrinking = OpenAI(base_url=llama_server, api_key="none", budget=_budget(tmp_path, cap=0.2, policy="shrink"), http_client=_recording(seen))
    answer = shrinking.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=400, max_completion_tokens=8)
    [sent] = seen
    assert sent["max_completion_tokens"] == 8 and 8 <= sent["max_tokens"] < 400  # each cap at most what was granted
    assert answer.usage is not None and answer.usage.completion_tokens <= sent["max_tokens"]
    assert shrinking.options.budget.report().spent_usd <= 0.2


@pytest.mark.parametrize("hidden", [{"max_tokens": 3000}, {"n": 5}, {"model": "gpt-4o"}])
def test_an_extra_body_that_sets_what_the_worst_case_is_reckoned_from_is_refused(hidden: dict[str, Any], tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    transport = httpx2.MockTransport(lambda request: seen.append(json.loads(request.content)) or httpx2.Response(500))
    budget = _budget(tmp_path, cap=1.0)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), budget=budget)
    with pytest.raises(ConfigError, match=f"extra_body sets '{next(iter(hidden))}'"):  # openai's client would send it over max_tokens=8, n=1
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, extra_body=hidden)
    assert seen == [] and budget.report().reserved_usd == 0.0
    unbudgeted = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=0)
    with pytest.raises(openai.InternalServerError):  # without a budget it goes out as written
        unbudgeted.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, extra_body=hidden)
    assert seen[0][next(iter(hidden))] == next(iter(hidden.values()))
