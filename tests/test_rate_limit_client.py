"""`OpenAI(rate_limit=RateLimits(...))`: a call past the window is refused (or waits) before it is
reserved or sent, is logged, and the window counts what the server really used."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from servers import InstantUpstream, RedisServer
from sqlite_locks import locked_while_the_loop_ticks

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, ConfigError, OpenAI, RateLimitExceededError, RateLimits

MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hi"}]


def _answer(content: str) -> dict[str, Any]:
    """A chat answer of ``content`` from the fake upstream, two tokens out."""
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}


def test_the_third_call_in_the_window_is_refused_before_anything_is_spent(llama_server: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices={MODEL: {"input": 1.0, "output": 1.0}})
    limits = RateLimits(rpm=2, per="client")
    client = OpenAI(base_url=llama_server, api_key="sk-test", rate_limit=limits, budget=budget, log=tmp_path / "calls.db")
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    spent = budget.spent()
    with pytest.raises(RateLimitExceededError) as refused:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert 0 < refused.value.retry_after <= 60
    assert budget.spent() == spent and budget.report().outstanding_reservations == 0
    records = list(CallLog(tmp_path / "calls.db").calls())
    assert len(records) == 3 and "RateLimitExceededError" in (records[-1].error or "")


def test_tpm_counts_what_the_server_used_not_the_worst_case(llama_server: str) -> None:
    limits = RateLimits(tpm=5_000, per="model")
    client = OpenAI(base_url=llama_server, api_key="sk-test", rate_limit=limits)
    for _ in range(5):  # each is admitted at its 2,000-token worst case, then corrected to the few it used
        completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2000, temperature=0)
        assert completion.usage.total_tokens < 500
    uncorrected = RateLimits(tpm=5_000, per="model")
    admitted = [uncorrected.admit(key=None, model=MODEL, tokens=2000) for _ in range(2)]
    with pytest.raises(RateLimitExceededError):
        uncorrected.admit(key=None, model=MODEL, tokens=2000)  # without corrections, the third worst case would not fit
    assert len(admitted) == 2


async def test_the_async_client_waits_for_room_by_policy(llama_server: str) -> None:
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)
        raise RateLimitExceededError("stop here", limit=1, scope="client", retry_after=seconds)

    limits = RateLimits(rpm=1, per="client", policy="wait", max_wait_s=120, asleep=asleep)
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", rate_limit=limits)
    await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    with pytest.raises(RateLimitExceededError):
        await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert len(slept) == 1 and 0 < slept[0] <= 60
    await client.close()


def test_a_rate_window_lost_mid_call_still_returns_and_logs_the_paid_answer(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = InstantUpstream(_answer("Apple."), before=redis_server.stop)  # the window's store dies while the request is out
    limits = RateLimits(rpm=100, tpm=100_000, store=redis_server.url)
    client = OpenAI(base_url=upstream.url, api_key="sk-test", rate_limit=limits, log=tmp_path / "calls.db", max_retries=0)
    try:
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            paid = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a fruit?"}])
    finally:
        client.close()
        upstream.close()
    assert paid.choices[0].message.content == "Apple."  # not thrown away for a window that can't be corrected
    assert "rate window could not be corrected" in caplog.text
    [record] = CallLog(tmp_path / "calls.db").calls()
    assert record.error is None and record.usage["completion_tokens"] == 2


def test_a_budgets_own_key_is_the_calls_key_for_the_window_the_ledger_and_the_log(tmp_path: Path) -> None:
    upstream = InstantUpstream(_answer("Hi."))
    budget = Budget(total_usd=10.0, key="team-a", prices={"gpt-4o-mini": {"input": 1.0, "output": 1.0}})
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, rate_limit=RateLimits(rpm=1, per="key"),
                    log=tmp_path / "calls.db", max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4)  # no budget_key: the budget's
        with pytest.raises(RateLimitExceededError) as refused:  # the same key, named: the same window, now full
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4, budget_key="team-a")
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4, budget_key="team-b")
    finally:
        client.close()
        upstream.close()
    assert refused.value.scope == "key:team-a"
    assert budget.spent(key="team-a") > 0 and budget.spent(key="team-b") > 0
    assert [record.key for record in CallLog(tmp_path / "calls.db").calls()] == ["team-a", "team-a", "team-b"]


async def test_an_async_call_waits_for_a_locked_sqlite_window_without_blocking_the_event_loop(tmp_path: Path) -> None:
    window = tmp_path / "window.db"
    upstream = InstantUpstream(_answer("Hi."))
    client = AsyncOpenAI(base_url=upstream.url, api_key="sk-test", rate_limit=RateLimits(rpm=10, store=window), max_retries=0)
    try:
        async with locked_while_the_loop_ticks(window) as watch:  # opening the window waits on SQLite's busy timeout
            completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            done = time.monotonic()
    finally:
        await client.close()
        upstream.close()
    assert completion.choices[0].message.content == "Hi."
    assert done >= watch.released  # the call did wait for the lock
    assert watch.longest_stall() < 0.5  # the loop ran all the while


@pytest.mark.parametrize(("first", "room_back"), [("timeout", False), ("500", True), ("connect", True)])
def test_a_failed_call_keeps_its_room_in_the_window_only_when_the_server_may_have_run_it(first: str, room_back: bool) -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        if first == "timeout":
            raise httpx2.ReadTimeout("slow", request=request)  # sent whole: the server may be generating, and bill it
        if first == "connect":
            raise httpx2.ConnectError("refused", request=request)  # never reached the server
        return httpx2.Response(500, json={"error": {"message": "boom"}})

    client = OpenAI(api_key="sk-test", base_url="http://upstream.test/v1", max_retries=0, rate_limit=RateLimits(rpm=1),
                    http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    asked = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    with pytest.raises(openai.APIError):
        client.chat.completions.create(**asked)
    if room_back:
        with pytest.raises(openai.APIError):  # admitted again, and sent
            client.chat.completions.create(**asked)
    else:
        with pytest.raises(RateLimitExceededError):  # the lost answer's request still counts in the minute
            client.chat.completions.create(**asked)


@pytest.mark.parametrize("field", ["max_tokens", "n", "messages"])
def test_a_tpm_window_refuses_an_extra_body_that_changes_the_worst_case_it_admits(llama_server: str, tmp_path: Path, field: str) -> None:
    """openai's client writes `extra_body` over the arguments: a cap, `n` or prompt set there would be admitted at
    the call's smaller worst case and answered at the larger. Refused before anything is admitted or sent, as a
    budget refuses it; an `rpm` window alone admits calls, not tokens, and sends it."""
    hidden = {"max_tokens": 2000, "n": 4, "messages": HELLO * 50}[field]
    limits = RateLimits(tpm=5_000, per="model")
    client = OpenAI(base_url=llama_server, api_key="sk-test", rate_limit=limits, log=tmp_path / "calls.db", max_retries=0)
    with pytest.raises(ConfigError, match=f"extra_body sets '{field}'.*tokens-per-minute"):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, extra_body={field: hidden})
    assert limits.admit(key=None, model=MODEL, tokens=5_000)  # nothing was admitted: the whole window is free
    calls = OpenAI(base_url=llama_server, api_key="sk-test", rate_limit=RateLimits(rpm=100), max_retries=0)
    answer = calls.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=50, extra_body={"max_tokens": 2})
    assert answer.usage is not None and answer.usage.completion_tokens <= 2


def test_a_call_without_max_tokens_past_the_whole_tpm_names_the_cap_it_was_given_before_sending() -> None:
    sent: list[int] = []
    upstream = InstantUpstream(_answer("Hi."), before=lambda: sent.append(1))
    client = OpenAI(base_url=upstream.url, api_key="sk-test", rate_limit=RateLimits(tpm=1_000, policy="wait"), max_retries=0)
    try:
        with pytest.raises(RateLimitExceededError) as refused:  # no max_tokens: RateLimits' default_max_output_tokens (4096) is admitted
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    finally:
        client.close()
        upstream.close()
    message = str(refused.value)
    assert "can never fit tpm=1000" in message and "default_max_output_tokens" in message, message
    assert refused.value.retry_after == float("inf") and sent == []


def test_tpm_admits_the_prompt_tokens_the_endpoint_adds_as_the_budget_learnt_them(tmp_path: Path) -> None:
    """An endpoint that bills 500 prompt tokens the SDK can't count (a gateway's preamble): once an answer taught the
    budget's ledger so, a call is admitted with them, and one that can't fit a 300-token window is refused unsent."""
    answer = _answer("hi")
    answer["usage"] = {"prompt_tokens": 509, "completion_tokens": 2, "total_tokens": 511}
    sent: list[None] = []
    upstream = InstantUpstream(answer, before=lambda: sent.append(None))
    budget = Budget(total_usd=10.0, prices={MODEL: {"input": 1.0, "output": 1.0}}, ledger=tmp_path / "ledger.db")
    try:
        OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        limited = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, rate_limit=RateLimits(tpm=300))
        with pytest.raises(RateLimitExceededError) as refused:
            limited.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)  # 14 tokens counted, 500 more learnt
        assert refused.value.retry_after == float("inf") and len(sent) == 1
    finally:
        upstream.close()
