"""Retries for faults a real server can't be made to show on demand: 429, 500, dropped streams.

A test double of the HTTP transport (httpx2.MockTransport) stands in for the server; the
openai client above it and the SDK are the real ones. Waits are recorded, never slept.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable, Iterator

import httpx2
import openai
import pytest

from blackbox_sdk import AsyncOpenAI, ConfigError, OpenAI, RetryPolicy
from blackbox_sdk._retry import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, should_retry

HELLO = [{"role": "user", "content": "hi"}]


def completion_body(text: str = "hello") -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def chunk(text: str) -> dict[str, object]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


class Script:
    """Answers requests in turn from a list of handlers, counting them."""

    def __init__(self, *answers: Callable[[httpx2.Request], httpx2.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1](request)


def status(code: int, headers: dict[str, str] | None = None) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: httpx2.Response(code, headers=headers, json={"error": {"message": f"status {code}"}})


def ok(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json=completion_body())


def make_client(script: Script, waits: list[float], max_retries: int = 2) -> OpenAI:
    policy = RetryPolicy(max_retries=max_retries, sleep=waits.append, rand=lambda: 0.0)
    http = httpx2.Client(transport=httpx2.MockTransport(script))
    return OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, retry=policy)


@pytest.mark.parametrize(
    "code",
    [pytest.param(408, id="timeout"), pytest.param(409, id="conflict"), pytest.param(429, id="rate-limit"),
     pytest.param(500, id="server-error"), pytest.param(503, id="unavailable")],
)
def test_retryable_status_is_retried_with_exponential_backoff(code: int) -> None:
    waits: list[float] = []
    script = Script(status(code), status(code), ok)
    completion = make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert completion.choices[0].message.content == "hello"
    assert len(script.requests) == 3
    assert waits == [INITIAL_RETRY_DELAY, INITIAL_RETRY_DELAY * 2]
    assert completion.blackbox.retries == 2


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_client_errors_are_never_retried(code: int) -> None:
    waits: list[float] = []
    script = Script(status(code), ok)
    with pytest.raises(openai.APIStatusError) as caught:
        make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert caught.value.status_code == code
    assert len(script.requests) == 1 and waits == []


def test_retry_after_header_sets_the_wait() -> None:
    waits: list[float] = []
    script = Script(status(429, {"retry-after": "3"}), status(429, {"retry-after-ms": "1500"}), ok)
    make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert waits == [3.0, 1.5]


@pytest.mark.parametrize(
    "header",
    [{"retry-after": "3600"}, {"retry-after": "1e400"}, {"retry-after-ms": "1e400"}],
    ids=["an-hour", "seconds-past-a-float", "ms-past-a-float"],
)
def test_retry_after_beyond_the_cap_is_not_retried(header: dict[str, str]) -> None:
    """As openai: a delay too large for a float is a server asking for more than two minutes, not a missing hint."""
    waits: list[float] = []
    script = Script(status(429, header), ok)
    with pytest.raises(openai.RateLimitError):
        make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert waits == []


@pytest.mark.parametrize("date", ["Mon, 01 Jan 99999 00:00:00", "Mon, 01 Jan 99999 00:00:00 GMT"], ids=["local-time", "gmt"])
def test_a_retry_after_date_no_clock_holds_is_no_hint(date: str) -> None:
    waits: list[float] = []
    script = Script(status(429, {"retry-after": date}), ok)
    make_client(script, waits).chat.completions.create(model="m", messages=HELLO)  # was ValueError: year 99999 is out of range
    assert waits == [INITIAL_RETRY_DELAY] and len(script.requests) == 2


@pytest.mark.parametrize("fault", [OSError(75, "Value too large for defined data type"), TypeError("an integer is required")], ids=["os-error", "type-error"])
def test_a_retry_after_date_the_platform_clock_refuses_is_no_hint(fault: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    """As openai: a date whose conversion fails in the platform's C mktime (OSError or TypeError on some systems,
    never on Linux's, hence the double) is no hint, not an error out of the retry logic."""
    def refuse(parsed: object) -> float:
        raise fault

    monkeypatch.setattr(email.utils, "mktime_tz", refuse)
    waits: list[float] = []
    script = Script(status(429, {"retry-after": "Mon, 01 Jan 1900 00:00:00"}), ok)
    make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert waits == [INITIAL_RETRY_DELAY] and len(script.requests) == 2


@pytest.mark.parametrize("value", [-1, True, 2.5, None, "2"])
def test_a_bad_max_retries_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="max_retries"):
        RetryPolicy(max_retries=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_retries"):
        OpenAI(api_key="sk-test", base_url="http://api.test/v1", max_retries=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_retries"):
        make_client(Script(ok), []).copy(max_retries=value)  # type: ignore[arg-type]


def test_x_should_retry_header_is_obeyed() -> None:
    waits: list[float] = []
    script = Script(status(400, {"x-should-retry": "true"}), status(500, {"x-should-retry": "false"}), ok)
    with pytest.raises(openai.InternalServerError):
        make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert len(script.requests) == 2


def test_backoff_doubles_up_to_the_cap_with_jitter_below() -> None:
    waits: list[float] = []
    script = Script(status(500))
    with pytest.raises(openai.InternalServerError):
        make_client(script, waits, max_retries=6).chat.completions.create(model="m", messages=HELLO)
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, MAX_RETRY_DELAY]


def test_jitter_shortens_the_wait_by_at_most_a_quarter() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_retries=2, sleep=waits.append, rand=lambda: 1.0)
    http = httpx2.Client(transport=httpx2.MockTransport(Script(status(500), status(500), ok)))
    OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, retry=policy).chat.completions.create(
        model="m", messages=HELLO
    )
    assert waits == [0.375, 0.75]


def test_when_retries_run_out_the_last_openai_error_is_raised_unchanged() -> None:
    waits: list[float] = []
    script = Script(status(500), status(502), status(503))
    with pytest.raises(openai.InternalServerError) as caught:
        make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert caught.value.status_code == 503
    assert type(caught.value) is openai.InternalServerError


def test_dropped_connection_is_retried() -> None:
    waits: list[float] = []

    def drop(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection reset", request=request)

    script = Script(drop, ok)
    completion = make_client(script, waits).chat.completions.create(model="m", messages=HELLO)
    assert completion.choices[0].message.content == "hello"
    assert len(script.requests) == 2


class DroppingStream(httpx2.SyncByteStream):
    """A body that sends some chunks, then the connection drops."""

    def __init__(self, events: bytes) -> None:
        self.events = events

    def __iter__(self) -> Iterator[bytes]:
        if self.events:
            yield self.events
        raise httpx2.ReadError("connection dropped")


def test_stream_dropped_before_its_first_chunk_is_retried() -> None:
    waits: list[float] = []
    script = Script(
        lambda r: httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=DroppingStream(b"")),
        lambda r: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse(chunk("a"), chunk("b"))),
    )
    stream = make_client(script, waits).chat.completions.create(model="m", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content for c in stream) == "ab"
    assert len(script.requests) == 2 and stream.blackbox.retries == 1


def test_stream_dropped_after_its_first_chunk_is_not_retried() -> None:
    waits: list[float] = []
    body = f"data: {json.dumps(chunk('a'))}\n\n".encode()
    script = Script(lambda r: httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=DroppingStream(body)), ok)
    stream = make_client(script, waits).chat.completions.create(model="m", messages=HELLO, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for c in stream:
            received.append(c.choices[0].delta.content)
    assert received == ["a"] and len(script.requests) == 1


def test_should_retry_classifies_errors() -> None:
    request = httpx2.Request("POST", "http://api.test/v1/chat/completions")
    assert should_retry(openai.APIConnectionError(request=request))
    assert should_retry(openai.APITimeoutError(request=request))
    assert not should_retry(ValueError("not an API error"))


async def test_async_retries_use_the_injected_async_sleep() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    script = Script(status(429), ok)
    policy = RetryPolicy(max_retries=2, async_sleep=record, rand=lambda: 0.0)
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(script))
    client = AsyncOpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, retry=policy)
    completion = await client.chat.completions.create(model="m", messages=HELLO)
    assert completion.choices[0].message.content == "hello" and waits == [0.5]


def _retry_counts(script: Script) -> list[str]:
    return [request.headers["x-stainless-retry-count"] for request in script.requests]


@pytest.mark.parametrize("given", [pytest.param(None, id="counted"), pytest.param("7", id="caller's-own-kept")])
@pytest.mark.parametrize("stream", [False, True])
def test_each_retry_sends_its_number_in_x_stainless_retry_count_as_openai(given: str | None, stream: bool) -> None:
    extra = {} if given is None else {"X-Stainless-Retry-Count": given}
    fast = status(500, {"retry-after-ms": "1"})  # openai's own client then waits a millisecond
    theirs, ours = Script(fast, fast, ok), Script(fast, fast, ok)
    plain = openai.OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(theirs)))
    plain.chat.completions.create(model="m", messages=HELLO, extra_headers=extra)
    if stream:
        ours.answers[-1] = lambda r: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse(chunk("a")))
        list(make_client(ours, []).chat.completions.create(model="m", messages=HELLO, extra_headers=extra, stream=True))
    else:
        make_client(ours, []).chat.completions.create(model="m", messages=HELLO, extra_headers=extra)
    assert _retry_counts(ours) == _retry_counts(theirs) == (["0", "1", "2"] if given is None else [given] * 3)


async def test_async_retries_send_their_number_in_x_stainless_retry_count_as_openai() -> None:
    fast = status(500, {"retry-after-ms": "1"})
    theirs, ours = Script(fast, fast, ok), Script(fast, fast, ok)
    plain = openai.AsyncOpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(theirs)))
    await plain.chat.completions.create(model="m", messages=HELLO)
    policy = RetryPolicy(max_retries=2, async_sleep=lambda s: asyncio.sleep(0), rand=lambda: 0.0)
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(ours))
    await AsyncOpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, retry=policy).chat.completions.create(model="m", messages=HELLO)
    assert _retry_counts(ours) == _retry_counts(theirs) == ["0", "1", "2"]
