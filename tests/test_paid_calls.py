"""A call is accounted whatever happens once it was sent: a stream closed or dropped unread, a cache
that can't store the answer, a fan-out request that fails after others were answered, a cancelled
async call. And what is held is the real worst case: `best_of`, several prompts, a tokens-per-minute
window when the caller gave no output cap; an answer the budget cut short is never cached.

The server is an in-process double that answers like OpenAI (these are faults a real server can't
be made to show on demand); the same paths run against llama.cpp in test_cut_streams.py and
test_budget_holds.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, Cache, CallLog, OpenAI, RateLimitExceededError, RateLimits
from blackbox_sdk._pipeline import _flows

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}
HI = [{"role": "user", "content": "hi"}]
CHUNKS = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
]


def answer(choices: int = 1, prompt: int = 10, completion: int = 5) -> dict[str, Any]:
    """A chat completion with `choices` choices and its usage."""
    return {
        "id": "x", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": i, "message": {"role": "assistant", "content": f"hello {i}"}, "finish_reason": "stop"} for i in range(choices)],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


class Server:
    """An OpenAI double: JSON or SSE by the request's `stream`; `fail_after` answers, then 500s."""

    def __init__(self, fail_after: int | None = None, on_request: Callable[[], None] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_after, self.on_request = fail_after, on_request
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        with self.lock:
            self.bodies.append(json.loads(request.content))
            failing = self.fail_after is not None and len(self.bodies) > self.fail_after
        if self.on_request is not None:
            self.on_request()
        if failing:
            return httpx2.Response(500, json={"error": {"message": "down", "type": "server_error"}})
        if self.bodies[-1].get("stream"):
            sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in CHUNKS) + b"data: [DONE]\n\n"
            return httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=answer())


def client(server: Server, **options: Any) -> OpenAI:
    """The SDK's client on the double."""
    http = httpx2.Client(transport=httpx2.MockTransport(server))
    return OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, **options)


def async_client(server: Server, **options: Any) -> AsyncOpenAI:
    """The SDK's async client on the double (the handler runs in the loop)."""

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return server(request)

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return AsyncOpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, **options)


def held(budget: Budget) -> tuple[int, float]:
    """Reservations outstanding and USD spent."""
    report = budget.report()
    return report.outstanding_reservations, report.spent_usd


def errors(log: CallLog) -> list[str | None]:
    """Each logged call's error, oldest first."""
    log.flush()
    return [record.error for record in log.calls()]


@pytest.fixture
def quick_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncalibrated endpoint's gate is waited on for 2 s, not 120."""
    monkeypatch.setattr(_flows, "CALIBRATION_WAIT_S", 2.0)


@pytest.mark.parametrize("how", ["close", "with", "drop"])
def test_a_stream_never_read_is_charged_released_and_logged(tmp_path: Path, quick_gate: None, how: str) -> None:
    """Closing a generator that never started runs none of its clean-up: the stream itself accounts for it."""
    budget, log = Budget(total_usd=1.0, prices=PRICES), CallLog(tmp_path / "calls.db")
    sdk = client(Server(), budget=budget, log=log, cache=str(tmp_path / "cache"))
    stream = sdk.chat.completions.create(model=MODEL, messages=HI, stream=True, max_tokens=50)
    if how == "close":
        stream.close()
    elif how == "with":
        with stream:
            pass
    else:
        del stream
        gc.collect()
        deadline = time.monotonic() + 10
        while held(budget)[0] and time.monotonic() < deadline:  # the finaliser accounts in a thread of its own
            time.sleep(0.01)
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 0  # the prompt the server was sent is charged
    started = time.monotonic()
    sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=50)  # neither the claim nor the gate was left held
    assert time.monotonic() - started < 1.0
    assert errors(log)[0] == "RuntimeError: stream closed before its end"


def test_an_async_stream_never_read_is_charged_and_released(quick_gate: None) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES)

    async def main() -> None:
        sdk = async_client(Server(), budget=budget)
        stream = await sdk.chat.completions.create(model=MODEL, messages=HI, stream=True, max_tokens=50)
        await stream.close()

    asyncio.run(main())
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 0


def test_an_answer_the_cache_cannot_store_is_still_settled_and_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another writer holds the cache file past its timeout while the request is in flight."""
    locker: list[sqlite3.Connection] = []

    def lock_the_cache() -> None:
        connection = sqlite3.connect(tmp_path / "cache" / "cache.db", timeout=5, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        locker.append(connection)

    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = client(Server(on_request=lock_the_cache), budget=budget, cache=Cache(tmp_path / "cache", timeout=0.2))
    try:
        got = sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=50)
    finally:
        locker[0].execute("ROLLBACK")
    assert got.choices[0].message.content == "hello 0"
    assert held(budget) == (0, pytest.approx(10 * 1e-6 + 5 * 2e-6))
    assert "could not be cached" in caplog.text


def test_answers_that_arrived_before_a_fan_out_failed_are_charged() -> None:
    """The server ignores n: the first request is answered (and billed), the fan-out requests fail."""
    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = client(Server(fail_after=1), budget=budget)
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model=MODEL, messages=HI, n=3, max_tokens=50)
    assert held(budget) == (0, pytest.approx(10 * 1e-6 + 5 * 2e-6))


def test_best_of_is_reserved_as_the_generations_the_server_bills() -> None:
    """n=1 x 400 tokens fits $0.002; best_of=5 makes it five generations, which don't."""
    server = Server()
    sdk = client(server, budget=Budget(total_usd=0.002, prices=PRICES))
    with pytest.raises(BudgetExceededError):
        sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=400, best_of=5)
    sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=400)
    assert len(server.bodies) == 1


@pytest.mark.parametrize("kind", ["tools", "functions"])
def test_function_definitions_are_reserved_as_prompt_tools_and_legacy_functions_alike(kind: str) -> None:
    """A schema of 60 fields is ~1,500 prompt tokens, past $0.001 at $1/M: the call is refused before sending whether
    the schema comes as `tools` or as chat's legacy `functions` (which the server bills the same, and the count left out)."""
    fields = {f"field_{i}": {"type": "string", "description": f"the value of field number {i} in the record"} for i in range(60)}
    schema = {"name": "record", "description": "Record the values", "parameters": {"type": "object", "properties": fields}}
    given = {"tools": [{"type": "function", "function": schema}]} if kind == "tools" else {"functions": [schema]}
    server = Server()
    sdk = client(server, budget=Budget(total_usd=0.001, prices=PRICES))
    with pytest.raises(BudgetExceededError):
        sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, **given)
    assert server.bodies == []


def test_a_call_of_several_prompts_is_refused_not_shrunk_below_its_prompts() -> None:
    """Shrinking may drop choices, but every prompt of a batch gets its answer: the batch is refused whole."""
    server = Server()
    sdk = client(server, budget=Budget(total_usd=0.0025, prices=PRICES, policy="shrink"))
    with pytest.raises(BudgetExceededError):
        sdk.completions.create(model=MODEL, prompt=["a", "b", "c", "d"], max_tokens=1000)
    assert server.bodies == []


def test_an_answer_the_budget_cut_short_is_not_cached(tmp_path: Path) -> None:
    server = Server()
    cache = str(tmp_path / "cache")
    tight = client(server, budget=Budget(total_usd=0.0001, prices=PRICES, policy="shrink", min_output_tokens=1), cache=cache)
    tight.chat.completions.create(model=MODEL, messages=HI, max_tokens=1000)
    assert server.bodies[-1]["max_tokens"] < 1000
    roomy = client(server, budget=Budget(total_usd=1.0, prices=PRICES), cache=cache)
    again = roomy.chat.completions.create(model=MODEL, messages=HI, max_tokens=1000)
    assert not again.blackbox.cache_hit and server.bodies[-1]["max_tokens"] == 1000


def test_a_tokens_window_admits_and_sends_a_cap_when_the_caller_gave_none() -> None:
    """Without one the output is unbounded, so the window could pass its limit many times over."""
    server = Server()
    sdk = client(server, rate_limit=RateLimits(tpm=1000, default_max_output_tokens=500))
    sdk.chat.completions.create(model=MODEL, messages=HI)
    assert server.bodies[-1]["max_tokens"] == 500
    narrow = Server()
    with pytest.raises(RateLimitExceededError):  # its worst case (the prompt and 500 output tokens) can never fit 400
        client(narrow, rate_limit=RateLimits(tpm=400, default_max_output_tokens=500)).chat.completions.create(model=MODEL, messages=HI)
    assert narrow.bodies == []
    requests_only = Server()
    client(requests_only, rate_limit=RateLimits(rpm=10)).chat.completions.create(model=MODEL, messages=HI)
    assert "max_tokens" not in requests_only.bodies[-1]  # a requests-per-minute window needs no cap


class SlowStore:
    """Makes one store step slow, so that an async call's timeout cancels it while it runs in a thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        slow = getattr(owner, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)
            return slow(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)


def test_an_async_call_cancelled_while_it_reserves_leaves_nothing_held(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES)
    SlowStore(monkeypatch, type(budget), "reserve")

    async def main() -> None:
        sdk = async_client(Server(), budget=budget)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=50), 0.1)

    asyncio.run(main())
    time.sleep(0.5)  # the slowed reserve has long finished in its thread
    assert held(budget) == (0, 0.0)


def test_an_async_call_cancelled_while_it_claims_leaves_no_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / "cache")
    SlowStore(monkeypatch, type(cache), "claim_reading")  # the claim the client takes (with its read)
    server = Server()

    async def main() -> float:
        sdk = async_client(server, cache=cache)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sdk.chat.completions.create(model=MODEL, messages=HI), 0.1)
        started = time.monotonic()
        await sdk.chat.completions.create(model=MODEL, messages=HI)
        return time.monotonic() - started

    assert asyncio.run(main()) < 2.0  # not the 60 s single-flight wait on a claim nobody will drop
    assert len(server.bodies) == 1



def test_a_stream_that_ends_without_a_choice_is_charged_and_logged_not_stored(tmp_path: Path) -> None:
    """A server that sends `[DONE]` and nothing else: an empty stream for the caller, the prompt charged, nothing cached."""

    def empty(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"})

    budget, log = Budget(total_usd=1.0, prices=PRICES), CallLog(tmp_path / "calls.db")
    http = httpx2.Client(transport=httpx2.MockTransport(empty))
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, budget=budget, log=log, cache=str(tmp_path / "cache"))
    assert list(sdk.chat.completions.create(model=MODEL, messages=HI, stream=True, max_tokens=50)) == []
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 0
    assert errors(log) == ["ConnectionError: the server's stream ended without a choice"]


@pytest.mark.parametrize(
    ("usage", "spent"),
    [
        pytest.param({"prompt_tokens_details": {"cached_tokens": 2000}}, 1000 * 1e-6 + 500 * 2e-6, id="more-cached-than-prompt-charged-uncached"),
        pytest.param({"total_tokens": float("inf")}, 1000 * 1e-6 + 500 * 2e-6, id="infinite-total-under-a-rate-limit"),
    ],
)
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")  # openai's model of the server's infinite total
def test_a_servers_impossible_usage_never_fails_a_paid_call_or_leaves_a_hold(usage: dict[str, Any], spent: float) -> None:
    def reporting(request: httpx2.Request) -> httpx2.Response:
        body = answer(prompt=1000, completion=500)
        body["usage"].update(usage)
        return httpx2.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})  # json writes inf as Infinity

    budget = Budget(total_usd=1.0, prices=PRICES)
    http = httpx2.Client(transport=httpx2.MockTransport(reporting))
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, budget=budget, rate_limit=RateLimits(tpm=100_000))
    sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=600)
    assert held(budget) == (0, pytest.approx(spent))


def _answering(body: dict[str, Any]) -> httpx2.Client:
    """An HTTP client whose server answers `body` (json writes NaN and infinity as JSON's NaN and Infinity)."""
    encoded = json.dumps(body).encode()
    return httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(200, content=encoded, headers={"content-type": "application/json"})))


WORST_OUTPUT_USD = 600 * 2e-6  # max_tokens=600 at the output price: the reserved worst case holds this and the prompt


@pytest.mark.parametrize(
    ("usage", "worst_case"),
    [
        ({"prompt_tokens": float("nan")}, True), ({"prompt_tokens": "many"}, True), ({"completion_tokens": float("inf")}, True),
        ({"completion_tokens": -1}, True), ([1000, 500], False), ("1500", False),
    ],
    ids=["nan-prompt", "word-prompt", "infinite-completion", "negative-completion", "usage-a-list", "usage-a-string"],
)
@pytest.mark.filterwarnings("error::UserWarning")  # the server's bad count is handled, not warned of through pydantic
def test_a_usage_that_holds_no_count_never_fails_a_paid_chat_call(tmp_path: Path, usage: Any, worst_case: bool) -> None:
    body = answer(prompt=1000, completion=500)
    body["usage"] = {**body["usage"], **usage} if isinstance(usage, dict) else usage
    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=_answering(body), max_retries=0, budget=budget, cache=str(tmp_path / "cache"))
    got = sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=600)  # int() of the count raised, and the hold was released
    assert got.choices[0].message.content == "hello 0"
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 0
    assert (spent > WORST_OUTPUT_USD) is worst_case  # an unreadable count: the worst case, never 0 for it; no usage at all: the SDK counts


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_one_unreadable_count_among_fanned_out_answers_charges_the_worst_case(stream: bool) -> None:
    """A server that ignores `n` answers each of its requests apart; one of them with a count that can't be real."""
    sent: list[dict[str, Any]] = []

    def one_each(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        completion: Any = float("nan") if len(sent) == 2 else 5
        if not stream:
            return httpx2.Response(200, content=json.dumps(answer(prompt=10, completion=completion)).encode(), headers={"content-type": "application/json"})
        usage = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [], "usage": answer(prompt=10, completion=completion)["usage"]}
        sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [*CHUNKS, usage]) + b"data: [DONE]\n\n"
        return httpx2.Response(200, content=sse, headers={"content-type": "text/event-stream"})

    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(one_each)), max_retries=0, budget=budget)
    got = sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=600, n=2, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))
    if stream:
        list(got)
    assert len(sent) == 2
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 2 * WORST_OUTPUT_USD  # both answers' worst case, not the first's 5 tokens and 0 for the second


@pytest.mark.parametrize("input_tokens", [float("nan"), "many", [1]], ids=["nan", "word", "list"])
@pytest.mark.filterwarnings("error::UserWarning")  # the server's bad count is handled, not warned of through pydantic
def test_a_usage_that_holds_no_count_never_fails_a_paid_responses_call(input_tokens: Any) -> None:
    message = {"type": "message", "id": "m", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": "hi", "annotations": []}]}
    usage = {"input_tokens": input_tokens, "output_tokens": 2, "total_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0}}
    body = {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "completed", "output": [message], "usage": usage}
    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=_answering(body), max_retries=0, budget=budget)
    assert sdk.responses.create(model=MODEL, input="hi", max_output_tokens=4).output_text == "hi"
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 4 * 2e-6  # the reserved worst case (the prompt and 4 output tokens), not 2 output tokens alone


def test_an_answer_with_an_infinite_logprob_is_returned_though_the_cache_cant_hold_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    body = answer()
    body["choices"][0]["logprobs"] = {"content": [{"token": "hello", "logprob": float("-inf"), "bytes": None, "top_logprobs": []}]}
    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=_answering(body), max_retries=0, budget=budget, cache=str(tmp_path / "cache"))
    got = sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=50, logprobs=True)  # was ConfigError after it was paid
    assert got.choices[0].logprobs.content[0].logprob == float("-inf")
    assert held(budget) == (0, pytest.approx(10 * 1e-6 + 5 * 2e-6)) and "could not be cached" in caplog.text


@pytest.mark.parametrize("choices", [None, ["hello"], {"0": {"message": {"content": "hello"}}}], ids=["null", "a-string", "an-object"])
def test_choices_a_server_sent_malformed_come_back_as_openai_gives_them_and_the_call_is_charged(tmp_path: Path, choices: Any) -> None:
    body = {**answer(), "choices": choices}
    budget = Budget(total_usd=1.0, prices=PRICES)
    sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=_answering(body), max_retries=0, budget=budget, cache=str(tmp_path / "cache"))
    got = sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=50)  # len(None) or c.get on a string raised after the call was paid
    assert got.choices == choices and held(budget) == (0, pytest.approx(10 * 1e-6 + 5 * 2e-6))  # the server's object, as openai builds it


class _BodyThatFailsToClose(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """An answer's body whose connection fails as it is closed (a TLS close_notify refused, a reset)."""

    def __iter__(self) -> Any:
        yield json.dumps(answer()).encode()

    async def __aiter__(self) -> Any:
        yield json.dumps(answer()).encode()

    def close(self) -> None:
        raise httpx2.ReadError("connection reset while closing")

    async def aclose(self) -> None:
        raise httpx2.ReadError("connection reset while closing")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_streaming_response_whose_close_fails_is_still_settled_and_logged(kind: str, tmp_path: Path) -> None:
    """`with_streaming_response`: the error closing the response reaches the caller, as from openai's client,
    and the call is settled and logged with it all the same (the close went first and its error skipped the account)."""
    budget, log = Budget(total_usd=1.0, prices=PRICES), CallLog(tmp_path / "calls.db")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, stream=_BodyThatFailsToClose())

    async def handle(request: httpx2.Request) -> httpx2.Response:
        return handler(request)

    async def ask() -> None:
        if kind == "sync":
            http = httpx2.Client(transport=httpx2.MockTransport(handler))
            sdk = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, budget=budget, log=log)
            with sdk.chat.completions.with_streaming_response.create(model=MODEL, messages=HI, max_tokens=50) as response:
                response.read()
            return
        ahttp = httpx2.AsyncClient(transport=httpx2.MockTransport(handle))
        asdk = AsyncOpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=ahttp, max_retries=0, budget=budget, log=log)
        async with asdk.chat.completions.with_streaming_response.create(model=MODEL, messages=HI, max_tokens=50) as aresponse:
            await aresponse.read()

    with pytest.raises(httpx2.ReadError):  # what openai's client raises
        asyncio.run(ask())
    outstanding, spent = held(budget)
    assert outstanding == 0 and spent > 0
    assert errors(log) == ["ReadError: connection reset while closing"]  # what the caller got, as from a stream cut
