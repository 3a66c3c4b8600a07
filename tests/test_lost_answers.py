"""A request the server took but whose answer never came back (a read timed out, the connection dropped
after the request was sent) is billed by the server all the same: under a budget it is charged its
worst case, and a retry after it is held on the budget before it is sent, so that the cap holds.
A budgeted stream asks the server for its usage, which counts what the text can't show (a reasoning
model's hidden tokens). The real llama.cpp server times out a real read; doubles stand in for what it
can't show (a timeout followed by an answer, a background response still queued, reasoning tokens)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import (
    AsyncOpenAI, Budget, BudgetExceededError, CallLog, ConfigError, OpenAI, RateLimitExceededError, RateLimits, RetryPolicy, StoreUnavailableError,
)
from blackbox_sdk.budget import settle_owed
from blackbox_sdk.local import free_port

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # $1000 per million tokens: one token costs $0.001
QUESTION = [{"role": "user", "content": "Write a long story about a dragon."}]
ANSWER = {
    "id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}


def _budget(folder: Path, cap: float = 10.0) -> Budget:
    return Budget(total_usd=cap, prices=PRICES, ledger=str(folder / "ledger.db"))


def _times_out_then(answers: list[dict[str, Any] | None]) -> tuple[httpx2.MockTransport, list[dict[str, Any]]]:
    """A transport that answers each request with the next of `answers`, a read timeout for None; and the requests it saw."""
    seen: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        answer = answers[len(seen) - 1]
        if answer is None:
            raise httpx2.ReadTimeout("timed out", request=request)
        return httpx2.Response(200, json=answer)

    return httpx2.MockTransport(handle), seen


def _assert_log_matches_ledger(budget: Budget, log: CallLog) -> None:
    log.flush()
    logged = sum(record.cost_usd for record in log.calls())
    assert logged == pytest.approx(budget.report().spent_usd)
    assert budget.report().reserved_usd == 0.0


def test_a_real_read_timeout_is_charged_its_worst_case_each_attempt(llama_server: str, tmp_path: Path) -> None:
    budget, log = _budget(tmp_path), CallLog(tmp_path / "calls.db")
    client = OpenAI(base_url=llama_server, api_key="none", timeout=0.05, max_retries=1, budget=budget, log=log)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=48)
    spends = budget.settled_since(0)
    assert [spend.completion_tokens for spend in spends] == [48, 48]  # both attempts: every output token they may bill
    assert all(spend.prompt_tokens > 0 for spend in spends)
    assert budget.report().spent_usd == pytest.approx(sum(spend.usd_nano for spend in spends) / 1e9)
    _assert_log_matches_ledger(budget, log)
    [record] = list(log.calls())
    assert record.error is not None and record.error.startswith("APITimeoutError")
    log.close()


def test_a_connection_never_made_charges_nothing(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    client = OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="none", max_retries=1, budget=budget)
    with pytest.raises(openai.APIConnectionError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=48)
    assert isinstance(raised.value.__cause__, httpx2.ConnectError)
    assert budget.report().spent_usd == 0.0
    assert budget.report().reserved_usd == 0.0


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_retry_after_a_lost_answer_is_held_and_the_answer_charged_beside_it(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    transport, seen = _times_out_then([None, ANSWER])
    ledger = request.getfixturevalue("redis_server").url if store == "redis" else str(tmp_path / "ledger.db")
    budget, log = Budget(total_usd=10.0, prices=PRICES, ledger=ledger), CallLog(tmp_path / "calls.db")
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=2, budget=budget, log=log)
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    assert answer.choices[0].message.content == "Apple." and len(seen) == 2
    lost, paid = budget.settled_since(0)
    assert (lost.completion_tokens, paid.completion_tokens, paid.prompt_tokens) == (100, 2, 9)
    assert answer.blackbox.cost_usd == pytest.approx((lost.usd_nano + paid.usd_nano) / 1e9)
    assert answer.blackbox.retries == 1
    _assert_log_matches_ledger(budget, log)
    log.close()


def test_a_retry_the_cap_cannot_hold_is_refused_and_the_lost_answer_charged(tmp_path: Path) -> None:
    transport, seen = _times_out_then([None, ANSWER])
    budget = _budget(tmp_path, cap=0.2)  # one worst case (about $0.1 for 100 output tokens and the prompt) fits, two do not
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=2, budget=budget)
    with pytest.raises(BudgetExceededError) as refused:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    assert isinstance(refused.value.__cause__, openai.APITimeoutError)
    assert len(seen) == 1  # the retry was never sent
    [lost] = budget.settled_since(0)
    assert lost.completion_tokens == 100
    assert budget.report().reserved_usd == 0.0 and budget.report().spent_usd <= 0.2


def test_a_lost_stream_is_charged_its_prompt(tmp_path: Path) -> None:
    transport, _ = _times_out_then([None])
    budget = _budget(tmp_path)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=0, budget=budget)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100, stream=True)
    [lost] = budget.settled_since(0)
    assert lost.completion_tokens == 0 and lost.prompt_tokens > 0  # a server stops a stream its reader left
    assert budget.report().reserved_usd == 0.0


def test_the_async_client_holds_its_retry_off_the_event_loop(tmp_path: Path) -> None:
    transport, seen = _times_out_then([None, ANSWER])
    budget = _budget(tmp_path)
    client = AsyncOpenAI(api_key="sk-test", http_client=httpx2.AsyncClient(transport=transport), max_retries=2, budget=budget)

    async def ask() -> Any:
        return await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)

    answer = asyncio.run(ask())
    assert len(seen) == 2 and answer.blackbox.retries == 1
    assert [spend.completion_tokens for spend in budget.settled_since(0)] == [100, 2]
    assert budget.report().reserved_usd == 0.0


def _queued(request: httpx2.Request) -> httpx2.Response:
    """A Responses API answer to `background=True`: queued, no output or usage yet."""
    return httpx2.Response(200, json={
        "id": "resp_1", "object": "response", "created_at": 1, "status": "queued", "background": True, "model": MODEL,
        "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None, "error": None,
        "incomplete_details": None, "instructions": None, "metadata": {}, "text": {"format": {"type": "text"}},
    })


def test_a_background_response_still_queued_is_charged_its_worst_case(tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(_queued)), budget=budget)
    response = client.responses.create(model=MODEL, input="Write a long story.", background=True, max_output_tokens=300)
    assert response.status == "queued"
    [charged] = budget.settled_since(0)
    assert charged.completion_tokens == 300  # the server generates on, and bills, what the SDK never sees
    assert response.blackbox.cost_usd == pytest.approx(charged.usd_nano / 1e9)
    assert response.blackbox.usage_counted


def _reasoning_stream(request: httpx2.Request) -> httpx2.Response:
    """A chat stream as OpenAI sends a reasoning model's: two visible tokens, and usage (counting the 500 hidden
    reasoning tokens) in a last chunk only when `stream_options.include_usage` asked for it (every other chunk
    then carries `"usage": null`)."""
    body = json.loads(request.content)
    asked = (body.get("stream_options") or {}).get("include_usage")
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, **({"usage": None} if asked else {})}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Ap"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "ple."}, "finish_reason": "stop"}]},
    ]
    if asked:
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 502, "total_tokens": 511,
                                                          "completion_tokens_details": {"reasoning_tokens": 500}}})
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("asked", [False, True])
def test_a_budgeted_stream_asks_for_the_usage_that_counts_hidden_tokens(asked: bool, tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(_reasoning_stream)), budget=budget)
    options = {"stream_options": {"include_usage": True}} if asked else {}
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1000, stream=True, **options))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Apple."
    assert [c.usage.completion_tokens for c in chunks if c.usage is not None] == ([502] if asked else [])  # the caller's view
    [spend] = budget.settled_since(0)
    assert spend.completion_tokens == 502  # the reasoning tokens billed, not the 2 the text shows


@pytest.mark.parametrize("asked", [False, True])
def test_a_budgeted_stream_hands_on_the_chunks_openai_gives_for_the_usage_asked(asked: bool, tmp_path: Path) -> None:
    """The usage the SDK asked for on its own leaves no `"usage": null` in the caller's chunks (`to_dict()`, a proxy's
    re-sent JSON): they are the ones openai's client yields for the caller's request."""
    options = {"stream_options": {"include_usage": True}} if asked else {}
    bare = openai.OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(_reasoning_stream)))
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(_reasoning_stream)), budget=_budget(tmp_path))
    streams = [c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1000, stream=True, **options) for c in (bare, client)]
    expected, got = ([chunk.to_dict() for chunk in stream] for stream in streams)
    assert got == expected


def test_the_rate_window_counts_a_lost_answer_beside_the_one_that_came(tmp_path: Path) -> None:
    transport, _ = _times_out_then([None, ANSWER])
    limits = RateLimits(tpm=100_000)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=2, budget=_budget(tmp_path), rate_limit=limits)
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    lost, paid = client.options.budget.settled_since(0)
    counted = lost.prompt_tokens + lost.completion_tokens + paid.prompt_tokens + paid.completion_tokens
    with pytest.raises(RateLimitExceededError):  # room for all but what both answers used: the lost one counts
        limits.admit(key=None, model=MODEL, tokens=100_000 - counted + 1)
    assert limits.admit(key=None, model=MODEL, tokens=100_000 - counted) is not None


def _stream_of_one(request: httpx2.Request) -> httpx2.Response:
    """A chat stream as a server that ignores `n` sends it: one choice, whatever was asked, and its usage."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    ]
    text = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def test_a_fanned_out_stream_whose_later_stream_was_lost_is_charged_it(tmp_path: Path) -> None:
    opened: list[int] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        opened.append(json.loads(request.content).get("n"))
        if len(opened) > 1:  # the second stream's answer is lost
            raise httpx2.ReadTimeout("timed out", request=request)
        return _stream_of_one(request)

    budget, log = _budget(tmp_path), CallLog(tmp_path / "calls.db")
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), max_retries=0, budget=budget, log=log)
    with pytest.raises(openai.APITimeoutError):
        list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100, n=2, stream=True))
    assert opened == [2, 1]
    [spend] = budget.settled_since(0)
    assert spend.completion_tokens == 2 and spend.prompt_tokens > 9  # the first stream's usage, and the lost one's prompt
    _assert_log_matches_ledger(budget, log)
    log.close()


def test_a_lost_completion_is_charged_every_answer_best_of_generates(llama_server: str, tmp_path: Path) -> None:
    budget = _budget(tmp_path)
    client = OpenAI(base_url=llama_server, api_key="none", timeout=0.05, max_retries=0, budget=budget)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model=MODEL, prompt="Once upon a time", best_of=3, max_tokens=48)
    [lost] = budget.settled_since(0)
    assert lost.completion_tokens == 48 * 3  # best_of's answers: all generated, all billed
    assert budget.report().reserved_usd == 0.0


def test_a_lost_completion_of_several_prompts_is_charged_each_prompts_answers(tmp_path: Path) -> None:
    transport, seen = _times_out_then([None])  # llama.cpp refuses several prompts: a double times out
    budget = _budget(tmp_path)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=0, budget=budget)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model=MODEL, prompt=["Once upon a time", "The dragon"], n=2, max_tokens=48)
    assert seen[0]["n"] == 2
    [lost] = budget.settled_since(0)
    assert lost.completion_tokens == 48 * 2 * 2  # n answers for each prompt
    assert budget.report().reserved_usd == 0.0


def test_adaptive_rounds_count_a_lost_answer_in_the_rate_window_once(tmp_path: Path) -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        asked = json.loads(request.content).get("n") or 1
        if not handled:
            handled.append(asked)
            raise httpx2.ReadTimeout("timed out", request=request)
        choices = [{"index": i, "message": {"role": "assistant", "content": f"Apple {i}."}, "finish_reason": "stop"} for i in range(asked)]
        return httpx2.Response(200, json={**ANSWER, "choices": choices})

    handled: list[int] = []
    limits = RateLimits(tpm=100_000)
    client = OpenAI(
        api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), max_retries=1, budget=_budget(tmp_path),
        rate_limit=limits, reranker=lambda question, answers: [0.0] * len(answers), rerank_n=8, rerank_confidence=0.99,
    )
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)  # equal scores: rounds of 1, 1, 2 and 4
    spends = client.options.budget.settled_since(0)
    assert len(spends) == 5  # the lost answer, then one per round
    counted = sum(spend.prompt_tokens + spend.completion_tokens for spend in spends)
    assert limits.admit(key=None, model=MODEL, tokens=100_000 - counted) is not None  # the lost answer counted once, not each round


def test_a_cancel_while_a_retry_waits_charges_the_lost_answer_once(llama_server: str, tmp_path: Path) -> None:
    budget, log = _budget(tmp_path), CallLog(tmp_path / "calls.db")

    async def ask() -> None:
        waiting = asyncio.Event()

        async def wait(seconds: float) -> None:
            waiting.set()
            await asyncio.Event().wait()  # the backoff never ends: the cancel comes first

        retry = RetryPolicy(max_retries=2, async_sleep=wait)
        client = AsyncOpenAI(base_url=llama_server, api_key="none", timeout=0.05, retry=retry, budget=budget, log=log)
        call = asyncio.ensure_future(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=48))
        await waiting.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(ask())
    [lost] = budget.settled_since(0)  # held and charged before the wait; the retry never went out
    assert lost.completion_tokens == 48
    _assert_log_matches_ledger(budget, log)
    log.close()


def test_an_interrupt_while_a_retry_after_a_429_waits_charges_nothing(tmp_path: Path) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    transport = httpx2.MockTransport(lambda request: httpx2.Response(429, json={"error": {"message": "slow down"}}))
    budget = _budget(tmp_path)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), retry=RetryPolicy(max_retries=2, sleep=interrupted), budget=budget)
    with pytest.raises(KeyboardInterrupt):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    assert budget.report().spent_usd == 0.0  # the 429 was the request's answer: nothing was out when the interrupt came
    assert budget.report().reserved_usd == 0.0


def test_a_raw_stream_is_sent_as_the_caller_wrote_it(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="none", budget=_budget(tmp_path))
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True)
    sent = json.loads(raw.http_request.content)
    assert "stream_options" not in sent
    assert all(chunk.choices for chunk in raw.parse())  # no usage chunk the caller did not ask for


def test_a_retry_the_ledger_cannot_hold_says_the_first_request_went_out(redis_server: Any, tmp_path: Path) -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        redis_server.stop()  # the ledger goes down while the answer is lost
        raise httpx2.ReadTimeout("timed out", request=request)

    budget = Budget(total_usd=10.0, prices=PRICES, ledger=redis_server.url)
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), max_retries=2, budget=budget)
    with pytest.raises(StoreUnavailableError) as refused:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    assert any("the retry, not sent, of a request whose answer was lost (APITimeoutError)" in note for note in refused.value.__notes__)
    redis_server.start()  # back, empty: the lost answer's owed charge lands (none is left owed at exit)
    assert settle_owed() == 0 and budget.spent() > 0


def test_a_retry_after_a_lost_answer_counts_the_first_hold_under_the_per_call_cap(tmp_path: Path) -> None:
    transport, seen = _times_out_then([None, None])
    # the call's worst case (about 30 prompt tokens + 100 output tokens at $0.001 each) fits $0.2 once, not twice
    budget = Budget(total_usd=10.0, per_call_usd=0.2, prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=1, budget=budget)
    with pytest.raises(BudgetExceededError, match="per-call budget of \\$0.200000") as refused:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100)
    assert len(seen) == 1  # the retry was not sent: with the lost answer it could bill past the per-call cap
    assert refused.value.scope == "per_call" and refused.value.spent > 0.1  # the first request's hold, told as spent
    report = budget.report()
    assert report.reserved_usd == 0.0 and 0.1 < report.spent_usd <= 0.2  # the lost answer, charged its worst case once


def test_a_call_s_earlier_charges_count_under_the_per_call_cap(tmp_path: Path) -> None:
    budget = Budget(per_call_usd=0.2, prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    held = budget.reserve(model=MODEL, prompt_tokens=50, max_output_tokens=100, call_spent_usd=0.0)
    budget.release(held)
    with pytest.raises(BudgetExceededError, match="\\$0.080000 spent"):
        budget.reserve(model=MODEL, prompt_tokens=50, max_output_tokens=100, call_spent_usd=0.08)
    shrinking = Budget(per_call_usd=0.2, policy="shrink", prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    fit = shrinking.reserve(model=MODEL, prompt_tokens=50, max_output_tokens=100, call_spent_usd=0.08)
    assert fit.shrunk and fit.worst_case_usd <= 0.12 + 1e-12
    shrinking.release(fit)
    for bad in (float("nan"), 10**400):  # an int past a float's range: math.isfinite's OverflowError before
        with pytest.raises(ConfigError, match="call_spent_usd"):
            budget.reserve(model=MODEL, prompt_tokens=50, max_output_tokens=100, call_spent_usd=bad)


@pytest.mark.parametrize("kind", [OpenAI, AsyncOpenAI])
def test_an_answer_that_is_not_json_is_charged_as_lost_and_holds_nothing_back(kind: type, tmp_path: Path) -> None:
    """A server (or gateway) that streams to a request that asked for no stream: openai hands back the body's text,
    which no answer can be read from. It is an APIResponseValidationError, charged its worst case (the server
    generated it), logged; the calibration gate it held is free, so the next call goes at once."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": "Apple."}, "finish_reason": "stop"}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    seen: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.content)
        return httpx2.Response(200, content=sse, headers={"Content-Type": "text/event-stream"})

    budget = _budget(tmp_path)
    transport = httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) if kind is AsyncOpenAI else httpx2.Client(transport=httpx2.MockTransport(handler))
    client = kind(api_key="sk-test", base_url="http://upstream.test/v1", http_client=transport, budget=budget, log=tmp_path / "calls.db")

    async def ask() -> Any:
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
        return await answer if kind is AsyncOpenAI else answer

    for _ in range(2):
        with pytest.raises(openai.APIResponseValidationError, match="not JSON"):
            asyncio.run(asyncio.wait_for(ask(), 20))
    assert len(seen) == 2 and budget.report().reserved_usd == 0.0
    assert budget.spent() >= 2 * 8 * 0.001  # each charged at least its 8 output tokens: the server generated them
    records = list(CallLog(tmp_path / "calls.db").calls())
    assert [r.error is not None for r in records] == [True, True] and records[0].cost_usd > 0


UNREADABLE = [
    pytest.param(b'{"id": "c", "choices": [', False, json.JSONDecodeError, id="cut-json"),
    pytest.param(b"", False, json.JSONDecodeError, id="empty"),
    pytest.param(json.dumps({**ANSWER, "choices": "none"}).encode(), True, openai.APIResponseValidationError, id="invalid-strict"),
]


@pytest.mark.parametrize("kind", [OpenAI, AsyncOpenAI])
@pytest.mark.parametrize(("body", "strict", "raised"), UNREADABLE)
def test_an_answer_openai_cannot_read_raises_as_openai_and_is_charged_as_lost(kind: type, body: bytes, strict: bool, raised: type, tmp_path: Path) -> None:
    """A 200 whose JSON body can't be parsed (openai raises json.JSONDecodeError), or under
    `_strict_response_validation` does not fit openai's types (APIResponseValidationError): the SDK raises the
    same; the server answered, so it generated and bills it: charged its worst case as a lost answer, logged."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"Content-Type": "application/json"})

    budget, log = _budget(tmp_path), CallLog(tmp_path / "calls.db")
    transport = httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) if kind is AsyncOpenAI else httpx2.Client(transport=httpx2.MockTransport(handler))
    client = kind(api_key="sk-test", base_url="http://upstream.test/v1", http_client=transport, budget=budget, log=log, _strict_response_validation=strict)

    async def ask() -> Any:
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
        return await answer if kind is AsyncOpenAI else answer

    with pytest.raises(raised):
        asyncio.run(asyncio.wait_for(ask(), 20))
    assert budget.spent() >= 8 * 0.001  # its 8 output tokens at least: the server generated them
    _assert_log_matches_ledger(budget, log)
    assert [record.error is not None for record in log.calls()] == [True]


@pytest.mark.parametrize("client_class", [OpenAI, AsyncOpenAI])
def test_a_raw_stream_never_parsed_holds_no_reservation_once_returned(tmp_path: Path, client_class: type[Any]) -> None:
    """`with_raw_response.create(stream=True)` is settled at its worst case as it returns (the SDK can't see what the
    caller reads): a raw response dropped unread leaves nothing reserved, whatever the garbage collector does."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"content": "Apple."}, "finish_reason": "stop"}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    budget = _budget(tmp_path)

    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    async def create(client: Any) -> Any:
        return await client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True)

    if client_class is OpenAI:
        client = OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)), budget=budget)
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True)
    else:
        client = AsyncOpenAI(api_key="sk-test", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handle)), budget=budget)
        raw = asyncio.run(create(client))
    assert budget.report().reserved_usd == 0.0 and budget.report().spent_usd > 0  # settled as it returned
    spent = budget.report().spent_usd
    del raw
    gc.collect()
    assert budget.report().reserved_usd == 0.0 and budget.report().spent_usd == spent
