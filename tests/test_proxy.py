"""`blackbox-sdk serve`: the proxy in front of the real llama.cpp server (and the real `hf:` backend
for embeddings), called by the openai client with only `base_url` changed, and by raw HTTP."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from starlette.testclient import TestClient

from blackbox_sdk import Budget, CallLog, ConfigError, RateLimits
from blackbox_sdk import OpenAI as BlackboxOpenAI
from blackbox_sdk.local import free_port
from blackbox_sdk.serve import ProxyConfig, ProxyError, Tenant, create_app, load_config
from blackbox_sdk.serve._body import MAX_JSON_DEPTH, parse_object
from blackbox_sdk.serve._routes import CHAT, Generating, generating
from payloads import BROKEN_ADAPTERS, broken_adapter
from servers import Proxy, proxy_ready, sse_upstream

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # $1000 per million tokens: a call costs cents
HELLO = [{"role": "user", "content": "Say hello in three words."}]
START_TIMEOUT_S = 120.0
RATE_HEADERS = [f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def proxy(llama_server: str, folder: Path) -> Iterator[Proxy]:
    """The proxy with a cache, a call log and a budget (priced, so costs show) in front of llama.cpp."""
    budget = {"total_usd": 100.0, "prices": PRICES, "ledger": str(folder / "ledger.db")}
    config = ProxyConfig(upstream=llama_server, cache=str(folder / "cache"), log=str(folder / "calls.db"), budget=budget, body_timeout_s=1.0)
    with Proxy(config) as running:
        yield running


def _log(folder: Path) -> CallLog:
    return CallLog(folder / "calls.db")


def _spent(folder: Path) -> float:
    return Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().spent_usd


def test_sync_chat_and_legacy_completions_through_the_openai_client(proxy: Proxy) -> None:
    client = proxy.client()
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert isinstance(completion, ChatCompletion) and completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert isinstance(text, Completion) and text.choices[0].text


async def test_async_create_and_stream_through_the_openai_client(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-unused")
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert isinstance(whole, ChatCompletion)
    stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == whole.choices[0].message.content
    await client.close()


def test_a_stream_is_openai_chunks_with_usage_when_asked(proxy: Proxy) -> None:
    stream = proxy.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to three."}], max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert stream.response.headers["x-blackbox-call-id"].startswith("bb-")
    assert stream.response.headers["x-request-id"] == stream.response.headers["x-blackbox-call-id"]


def test_raw_response_headers_and_a_repeat_is_a_free_cache_hit(proxy: Proxy, folder: Path) -> None:
    client = proxy.client()
    ask: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name a river."}], "max_tokens": 6, "temperature": 0}
    first = client.chat.completions.with_raw_response.create(**ask)
    second = client.chat.completions.with_raw_response.create(**ask)
    assert first.headers["x-blackbox-cache-hit"] == "false" and float(first.headers["x-blackbox-cost-usd"]) > 0
    assert second.headers["x-blackbox-cache-hit"] == "true" and float(second.headers["x-blackbox-cost-usd"]) == 0
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert first.parse()._request_id == first.headers["x-blackbox-call-id"]  # openai's request id: the call log's id
    assert second.parse()._request_id == second.headers["x-blackbox-call-id"] != first.headers["x-blackbox-call-id"]
    assert "blackbox" not in json.loads(first.text)  # the body is pure OpenAI JSON
    log = _log(folder)
    log.flush()
    assert log.get(first.headers["x-blackbox-call-id"]).cost_usd == pytest.approx(float(first.headers["x-blackbox-cost-usd"]), abs=1e-9)
    assert log.get(second.headers["x-blackbox-call-id"]).cache_hit is True


def test_feedback_lands_in_the_same_call_log(proxy: Proxy, folder: Path) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=4)
    call_id = raw.headers["x-blackbox-call-id"]
    answer = proxy.post("/feedback", json.dumps({"call_id": call_id, "label": "correct", "reference": "hello there friend"}).encode())
    assert answer.status_code == 200 and answer.json()["recorded"] is True
    [given] = _log(folder).feedback_for(call_id)
    assert given.label == "correct" and given.reference == "hello there friend"
    unknown = proxy.post("/feedback", json.dumps({"call_id": "bb-nope", "label": "correct"}).encode())
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "call_not_found"
    huge = proxy.post("/feedback", ('{"call_id": "%s", "reward": 1%s}' % (call_id, "0" * 400)).encode())  # an int past a float
    assert huge.status_code == 400 and "reward must be a finite number" in huge.json()["error"]["message"]


def test_models_lists_the_upstreams(proxy: Proxy) -> None:
    assert MODEL in [model.id for model in proxy.client().models.list().data]


def test_a_model_is_retrieved_by_name_and_one_not_served_is_openais_404(proxy: Proxy, llama_server: str) -> None:
    model = proxy.client().models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as unknown:
        proxy.client().models.retrieve("no-such-model")  # one the upstream does not serve
    team = Tenant("team-a", models=(MODEL,))
    with Proxy(ProxyConfig(upstream=llama_server), authenticate=lambda key: team if key == "sk-team-a" else None) as running:
        with pytest.raises(openai.NotFoundError) as refused:
            running.client(api_key="sk-team-a").models.retrieve("gpt-4o")  # one the key may not use
    for raised in (unknown, refused):
        assert raised.value.code == "model_not_found" and raised.value.body["param"] == "model"  # type: ignore[index]


def test_a_raw_sse_stream_is_openais_event_format(proxy: Proxy) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "stream": True}
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"content-type": "application/json"})
    response = connection.getresponse()
    raw = response.read().decode()
    connection.close()
    assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: {") for event in events[:-2]) and len(events) > 3
    assert json.loads(events[0][len("data: "):])["object"] == "chat.completion.chunk"


def _nested(depth: int) -> list[Any]:
    """Lists nested `depth` deep."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        pytest.param(b'{"model": "smollm2", "messages": [', 400, None, id="malformed-json"),
        pytest.param(b"[1, 2]", 400, None, id="not-an-object"),
        pytest.param(json.dumps({"model": MODEL, "messages": HELLO, "n": 0}).encode(), 400, "n", id="n=0"),
        pytest.param(json.dumps({"model": MODEL}).encode(), 400, "messages", id="no-messages"),
        pytest.param(json.dumps({"model": MODEL, "messages": HELLO, "budget": None}).encode(), 400, "budget", id="an-sdk-option"),
        pytest.param(b'{"model": "smollm2", "messages": "' + b"x" * (10 * 1024 * 1024) + b'"}', 413, None, id="10MB"),
        pytest.param(json.dumps({"model": MODEL, "messages": HELLO, "x": _nested(MAX_JSON_DEPTH)}).encode(), 400, None, id="nested-65-deep"),
        pytest.param(b'{"model": "smollm2", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None, id="nested-5000-deep"),
    ],
)
def test_bad_requests_get_openai_errors_and_reach_nothing(proxy: Proxy, folder: Path, body: bytes, status: int, param: str | None) -> None:
    log = _log(folder)
    log.flush()
    calls, spent = len(list(log.calls())), _spent(folder)
    answer = proxy.post("/chat/completions", body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    log.flush()
    assert len(list(log.calls())) == calls and _spent(folder) == spent  # nothing sent, nothing charged
    assert httpx2.get(f"{proxy.url}/healthz").status_code == 200  # and the proxy keeps serving


def test_nesting_is_limited_without_recursion() -> None:
    assert parse_object(json.dumps({"x": _nested(MAX_JSON_DEPTH - 1)}).encode())["x"]  # exactly the limit: accepted
    for body in (json.dumps({"x": _nested(MAX_JSON_DEPTH)}).encode(), b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with pytest.raises(ProxyError) as refused:
            parse_object(body)
        assert refused.value.status == 400 and refused.value.code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "\\ud800", "messages": []}',  # a lone surrogate escape in a value
        b'{"model": "m", "messages": [{"role": "user", "content": "hi \\udc80"}]}',
        b'{"model": "m", "metadata": {"\\ud83d": "x"}}',  # in a key
        '{"model": "m\udfff"}'.encode("utf-8", "surrogatepass"),  # raw bytes json.loads decodes with surrogatepass
    ],
    ids=["value", "nested-value", "key", "raw-bytes"],
)
def test_a_lone_surrogate_in_the_body_is_a_400_before_it_can_break_the_log_or_the_metrics(body: bytes) -> None:
    with pytest.raises(ProxyError) as refused:
        parse_object(body)
    assert refused.value.status == 400 and refused.value.code == "invalid_json" and "lone surrogate" in str(refused.value)
    assert parse_object(b'{"model": "m", "content": "h\\u00e9 \\ud83d\\ude00"}')["content"] == "h\u00e9 \U0001f600"  # a pair is text


def test_a_number_json_cannot_hold_is_a_400_at_the_boundary_not_a_500(llama_server: str) -> None:
    # json.loads takes NaN, Infinity and 1e400 (as inf); no JSON holds them, and OpenAI can't parse such a body
    with Proxy(ProxyConfig(upstream=llama_server, max_retries=0)) as running:  # no cache or log: nothing else looks at top_k
        for number in (b"NaN", b"-Infinity", b"1e400"):
            body = json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2})[:-1].encode() + b', "top_k": ' + number + b"}"
            answer = running.post("/chat/completions", body)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "invalid_json" and number.decode() in answer.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_body_a_browser_may_send_cross_site_is_refused_with_415(proxy: Proxy, folder: Path, content_type: str) -> None:
    log = _log(folder)
    log.flush()
    calls = len(list(log.calls()))
    answer = proxy.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode(), **{"content-type": content_type})
    assert answer.status_code == 415
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Content-Type: application/json" in error["message"]
    log.flush()
    assert len(list(log.calls())) == calls  # nothing sent


def test_json_bodies_are_taken_with_a_charset_or_no_content_type(proxy: Proxy) -> None:
    body = json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode()
    assert proxy.post("/chat/completions", body, **{"content-type": "application/json; charset=utf-8"}).status_code == 200
    assert httpx2.post(f"{proxy.base_url}/chat/completions", content=body, timeout=60).status_code == 200  # no Content-Type at all


def test_without_keys_only_requests_addressed_to_this_machine_are_answered(proxy: Proxy) -> None:
    rebound = {"host": "rebind.attacker.example", "origin": "http://rebind.attacker.example"}  # DNS rebinding: the page's own name
    for method, path in (("GET", "/metrics"), ("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        answer = httpx2.request(method, f"{proxy.url}{path}", headers=rebound, json={"model": MODEL, "messages": HELLO}, timeout=60)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{proxy.port}", f"127.0.0.1:{proxy.port}", f"[::1]:{proxy.port}", "LOCALHOST"):
        assert httpx2.get(f"{proxy.url}/v1/models", headers={"host": host}, timeout=60).status_code == 200
    with TestClient(create_app(ProxyConfig(upstream=proxy.base_url, open_without_keys=True)), base_url="http://proxy.internal") as opened:
        assert opened.get("/healthz").status_code == 200  # served beyond loopback on purpose: any name
    with TestClient(create_app(ProxyConfig(upstream=proxy.base_url), authenticate=lambda key: None), base_url="http://proxy.internal") as keyed:
        assert keyed.get("/healthz").status_code == 200  # with keys, a request is judged by its key


def test_the_openai_client_raises_its_own_errors_and_unknown_routes_are_404(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        proxy.client().chat.completions.create(model=MODEL, messages=HELLO, n=0)
    assert refused.value.body["param"] == "n"  # type: ignore[index]
    unknown = httpx2.post(f"{proxy.base_url}/nothing/here", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Invalid URL (POST /v1/nothing/here)"


def test_a_wrong_method_is_405_with_the_allow_header_http_requires(proxy: Proxy) -> None:
    for method, path, allowed in (("GET", "/chat/completions", {"POST"}), ("DELETE", "/models", {"GET", "HEAD"})):
        answer = httpx2.request(method, f"{proxy.base_url}{path}", timeout=60)
        assert answer.status_code == 405 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert set(answer.headers["allow"].replace(" ", "").split(",")) == allowed


def test_a_budget_that_runs_out_answers_429_insufficient_quota_without_retries(llama_server: str, tmp_path: Path) -> None:
    budget = {"total_usd": 0.2, "prices": PRICES, "ledger": str(tmp_path / "ledger.db")}
    config = ProxyConfig(upstream=llama_server, budget=budget, log=str(tmp_path / "calls.db"))
    with Proxy(config) as running:
        client = running.client(max_retries=3)
        with pytest.raises(openai.RateLimitError) as refused:
            for _ in range(20):
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16)
        assert refused.value.status_code == 429 and refused.value.code == "insufficient_quota"
        assert refused.value.response.headers["x-should-retry"] == "false"
        calls = len(list(CallLog(tmp_path / "calls.db").calls()))
    report = Budget(prices=PRICES, ledger=str(tmp_path / "ledger.db")).report()
    assert 0 < report.spent_usd <= 0.2 and report.outstanding_reservations == 0
    assert calls >= 2  # the calls made, and the refusal, each logged once: openai's client did not retry it


def test_a_rate_limit_answers_429_with_retry_after(llama_server: str) -> None:
    with Proxy(ProxyConfig(upstream=llama_server, rate_limit={"rpm": 1, "tpm": 500})) as running:
        running.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        answer = running.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode())
        with pytest.raises(openai.RateLimitError) as too_large:  # more tokens than tpm: OpenAI's "Request too large"
            running.client(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1000)
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.json()["error"]["type"] == "requests"  # as OpenAI names the limit that binds: requests or tokens
    assert (too_large.value.type, too_large.value.code) == ("tokens", "rate_limit_exceeded")


def test_answers_carry_openais_rate_limit_headers_from_the_window_that_decided(llama_server: str, store_at: Callable[[str], str]) -> None:
    """As OpenAI does: the limit, what is left and when the window is empty again, for requests and tokens, on a
    200 (whole or streamed, read through openai's `with_raw_response`) and on the 429 beside its retry-after."""
    config = ProxyConfig(upstream=llama_server, rate_limit={"rpm": 2, "tpm": 5000, "store": store_at("rate.db")})
    with Proxy(config) as running:
        chat = running.client(max_retries=0).chat.completions.with_raw_response
        first = chat.create(model=MODEL, messages=HELLO, max_tokens=4)
        streamed = chat.create(model=MODEL, messages=HELLO, max_tokens=4, stream=True)
        for _ in streamed.parse():
            pass
        with pytest.raises(openai.RateLimitError) as refused:
            chat.create(model=MODEL, messages=HELLO, max_tokens=4)
    shown = {name: first.headers[name] for name in RATE_HEADERS}
    admitted = 5000 - int(shown.pop("x-ratelimit-remaining-tokens"))  # its worst case: the prompt and the 4 tokens it may answer
    assert shown == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "5000", "x-ratelimit-reset-tokens": "1m0s",  # admitted now: the window is empty a minute on
    }
    assert 4 < admitted < 200
    assert streamed.headers["x-ratelimit-remaining-requests"] == "0" and int(streamed.headers["x-ratelimit-remaining-tokens"]) < 5000
    headers = refused.value.response.headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("2", "0") and int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-reset-requests"].endswith("s") and "m" not in headers["x-ratelimit-reset-requests"]  # under a minute: "59.9s"


@pytest.mark.parametrize(("seconds", "written"), [(0.0, "0s"), (0.0121, "13ms"), (1.0, "1s"), (1.5, "1.5s"), (360.0, "6m0s"), (3600.0, "1h0m0s")])
def test_a_rate_limit_reset_is_written_as_openai_writes_it(seconds: float, written: str) -> None:
    from blackbox_sdk.serve._errors import go_duration

    assert go_duration(seconds) == written


def test_a_client_that_left_while_its_call_waited_for_the_rate_window_is_sent_and_charged_nothing(llama_server: str, tmp_path: Path) -> None:
    window = {"rpm": 1, "window_s": 600.0, "store": str(tmp_path / "window.db")}  # room again only in ten minutes
    budget = {"total_usd": 100.0, "prices": PRICES, "ledger": str(tmp_path / "ledger.db")}
    config = ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"), budget=budget, rate_limit={**window, "policy": "wait", "max_wait_s": 600})
    with Proxy(config) as running:
        held = RateLimits(**window).admit(key=None, model=MODEL, tokens=1)  # the window's one request, taken in its shared store
        answered, closed = _answered(running, "200"), _answered(running, "499")
        with pytest.raises(openai.APITimeoutError):  # gives up while the proxy waits for the window
            running.client(max_retries=0, timeout=1.5).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        deadline = time.monotonic() + 60
        while (_answered(running, "200"), _answered(running, "499")) == (answered, closed) and time.monotonic() < deadline:
            time.sleep(0.1)  # the wait ends as the client leaves, not when the window has room for nobody
        assert (_answered(running, "200"), _answered(running, "499")) == (answered, closed + 1)
    log = CallLog(tmp_path / "calls.db")
    abandoned = list(log.calls())
    assert len(abandoned) == 1 and "disconnected" in (abandoned[0].error or "") and abandoned[0].cost_usd == 0
    report = Budget(prices=PRICES, ledger=str(tmp_path / "ledger.db")).report()
    assert report.spent_usd == 0 and report.outstanding_reservations == 0  # nothing sent upstream, nothing charged
    RateLimits(**window).release(held)
    RateLimits(**window).admit(key=None, model=MODEL, tokens=1)  # it took no slot: the window is empty again


def test_tenant_keys_through_the_authenticate_seam(llama_server: str, tmp_path: Path) -> None:
    team = Tenant("team-a", models=(MODEL,))
    config = ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"))
    with Proxy(config, authenticate=lambda key: team if key == "sk-team-a" else None) as running:
        missing = running.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO}).encode())
        with pytest.raises(openai.AuthenticationError):
            running.client(api_key="sk-wrong").chat.completions.create(model=MODEL, messages=HELLO)
        with pytest.raises(openai.NotFoundError):
            running.client(api_key="sk-team-a").chat.completions.create(model="gpt-4o", messages=HELLO)
        raw = running.client(api_key="sk-team-a").chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    [record] = CallLog(tmp_path / "calls.db").calls()
    assert record.call_id == raw.headers["x-blackbox-call-id"] and record.key == "team-a"


def test_embeddings_through_the_proxy_on_a_local_model(gguf_path: Path) -> None:
    with Proxy(ProxyConfig(upstream=f"hf:{gguf_path}")) as running:
        raw = running.client().embeddings.with_raw_response.create(model=MODEL, input=["a cat", "a dog"])
    embedded = raw.parse()
    assert isinstance(embedded, CreateEmbeddingResponse) and len(embedded.data) == 2 and len(embedded.data[0].embedding) > 8
    assert raw.headers["x-blackbox-call-id"].startswith("bb-")


def _raw_exchange(port: int, head: bytes, pieces: list[bytes]) -> bytes:
    """Send a request's head and some body pieces on a socket, never finishing the body; the reply's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for piece in pieces:
            sock.sendall(piece)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            received = sock.recv(65536)
            if not received:
                break
            reply += received
        return reply


def _length(reply: bytes) -> int:
    """The content-length a reply's head declares."""
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(proxy: Proxy) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    megabyte = b" " * (1024 * 1024)
    pieces = [b"%x\r\n%s\r\n" % (len(megabyte), megabyte)] * 4 + [b"10\r\n" + b" " * 16 + b"\r\n"]
    reply = _raw_exchange(proxy.port, head, pieces)  # the body never ends: the answer comes at the limit
    assert reply.startswith(b"HTTP/1.1 413") and b"request_too_large" in reply


def test_a_client_that_stalls_mid_body_gets_408(proxy: Proxy) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    reply = _raw_exchange(proxy.port, head, [b'{"model": "smollm2", '])
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply


def _answered(proxy: Proxy, status: str) -> float:
    """How many chat requests the proxy counted as answered with `status` (its /metrics, read from this machine)."""
    text = httpx2.get(f"{proxy.url}/metrics", timeout=30).text
    samples = (sample for family in text_string_to_metric_families(text) for sample in family.samples)
    return sum(s.value for s in samples if s.name == "blackbox_proxy_requests_total" and (s.labels["route"], s.labels["status"]) == ("chat", status))


def test_a_client_that_leaves_mid_body_is_counted_as_closed_not_as_a_failure(proxy: Proxy) -> None:
    closed, failed = _answered(proxy, "499"), _answered(proxy, "500")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(head + b'{"model": "smollm2", ')
    deadline = time.monotonic() + 30
    while _answered(proxy, "499") == closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _answered(proxy, "499") == closed + 1 and _answered(proxy, "500") == failed


def test_a_client_that_leaves_mid_stream_is_settled_and_logged(proxy: Proxy, folder: Path) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story about a fox."}], "max_tokens": 400, "stream": True}
    with httpx2.stream("POST", f"{proxy.base_url}/chat/completions", json=body, timeout=60) as response:
        call_id = response.headers["x-blackbox-call-id"]
        assert "x-blackbox-cost-usd" not in response.headers  # a live stream's cost is not known yet
        next(response.iter_bytes())
    log = _log(folder)
    deadline = time.monotonic() + 60
    record = None
    while record is None and time.monotonic() < deadline:
        log.flush()
        record = next((r for r in log.calls() if r.call_id == call_id), None)
        time.sleep(0.05)
    assert record is not None and "closed before its end" in (record.error or "")
    assert 0 < record.cost_usd < 400 * PRICES[MODEL]["output"] / 1e6  # settled at what was sent, not the worst case
    assert Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().outstanding_reservations == 0


def test_an_upstream_that_is_down_is_502_and_one_that_hangs_is_504() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        for upstream, status in ((f"http://127.0.0.1:{free_port()}/v1", 502), (hanging, 504)):
            with Proxy(ProxyConfig(upstream=upstream, max_retries=0, timeout_s=0.5)) as running:
                with pytest.raises(openai.APIStatusError) as failed:
                    running.client(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
            assert failed.value.status_code == status and failed.value.body["type"] == "upstream_error"  # type: ignore[index]


def test_an_upstream_refusal_passes_with_its_status(proxy: Proxy) -> None:
    answer = proxy.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2, "top_k": "many"}).encode())
    assert answer.status_code == 500  # llama.cpp's own answer to a field the proxy passed on (in extra_body)
    error = answer.json()["error"]
    assert "top_k" in error["message"]  # the upstream's own error, not the proxy's 500


def test_a_repeated_stream_is_replayed_from_the_cache_for_free(proxy: Proxy) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a mountain."}], "max_tokens": 6, "temperature": 0, "stream": True}
    replies = []
    for _ in range(2):
        with httpx2.stream("POST", f"{proxy.base_url}/chat/completions", json=body, timeout=60) as response:
            replies.append((dict(response.headers), response.read().decode()))
    (live, first), (replay, second) = replies
    assert live["x-blackbox-cache-hit"] == "false" and "x-blackbox-cost-usd" not in live
    assert replay["x-blackbox-cache-hit"] == "true" and float(replay["x-blackbox-cost-usd"]) == 0
    assert second.endswith("data: [DONE]\n\n")

    def text(events: str) -> str:
        chunks = [json.loads(line[len("data: "):]) for line in events.split("\n\n") if line.startswith("data: {")]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    assert text(first) == text(second) != ""


def test_a_graceful_shutdown_lets_a_stream_in_flight_finish(llama_server: str, tmp_path: Path) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 48, "stream": True}
    running = Proxy(ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"))).__enter__()
    with httpx2.stream("POST", f"{running.base_url}/chat/completions", json=body, timeout=60) as response:
        events = response.iter_bytes()
        received = next(events)
        running.server.should_exit = True  # as SIGTERM does
        received += b"".join(events)
    running.thread.join(timeout=60)
    assert received.endswith(b"data: [DONE]\n\n") and not running.thread.is_alive()
    [record] = CallLog(tmp_path / "calls.db").calls()
    assert record.error is None and record.call_id == response.headers["x-blackbox-call-id"]


def test_an_upstream_refusing_the_proxys_key_is_502_and_the_key_stays_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []
    refusal = json.dumps({"error": {"message": "Incorrect API key provided: sk-upstream-...cret", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}).encode()

    class Refusing(BaseHTTPRequestHandler):  # a fault double: an upstream that rejects the proxy's key
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(refusal)))
            self.end_headers()
            self.wfile.write(refusal)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret")
    config = ProxyConfig(upstream=f"http://127.0.0.1:{upstream.server_address[1]}/v1", upstream_api_key_env="UPSTREAM_KEY", max_retries=0)
    try:
        with Proxy(config) as running:
            answer = running.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO}).encode(), authorization="Bearer sk-client")
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert seen == ["Bearer sk-upstream-secret"]  # the upstream got the proxy's key from the environment, not the client's
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_auth_failed"
    assert "cret" not in answer.text and "sk-upstream" not in answer.text


def test_an_upstream_error_passes_as_openais_four_fields_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echoing(BaseHTTPRequestHandler):  # a fault double: an upstream whose error object echoes the request's key
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            sent = self.headers.get("Authorization", "")
            error = {"message": f"no; you sent {sent}", "type": "invalid_request_error", "param": f"auth={sent}", "code": 4001, "debug": {"header": sent}}
            refusal = json.dumps({"error": error}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(refusal)))
            self.end_headers()
            self.wfile.write(refusal)

        def log_message(self, *args: object) -> None:
            """Quiet."""

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echoing)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    monkeypatch.setenv("UPSTREAM_KEY", "upstream-Secret-0123456789")  # a shape no pattern knows
    config = ProxyConfig(upstream=f"http://127.0.0.1:{upstream.server_address[1]}/v1", upstream_api_key_env="UPSTREAM_KEY", max_retries=0)
    body = {"model": MODEL, "messages": HELLO}
    try:
        with Proxy(config) as running:
            answers = [running.post("/chat/completions", json.dumps({**body, "stream": stream}).encode()) for stream in (False, True)]
    finally:
        upstream.shutdown()
        upstream.server_close()
    for answer in answers:
        assert answer.status_code == 400 and "Secret" not in answer.text
        assert answer.json()["error"] == {"message": "no; you sent Bearer [REDACTED]", "type": "invalid_request_error", "param": "auth=Bearer [REDACTED]", "code": "4001"}


def test_an_upstream_error_event_mid_stream_passes_as_an_error_event_redacted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}

    def failing_mid_stream(headers: Any) -> bytes:
        """A 200 stream, one chunk, then an error event echoing the key."""
        error = {"message": f"overloaded; you sent {headers.get('Authorization', '')}", "type": "server_error", "code": "overloaded", "debug": "x"}
        return f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'error': error})}\n\n".encode()

    monkeypatch.setenv("UPSTREAM_KEY", "upstream-Secret-0123456789")
    with sse_upstream(failing_mid_stream) as upstream:
        config = ProxyConfig(upstream=upstream, upstream_api_key_env="UPSTREAM_KEY", max_retries=0, log=str(tmp_path / "calls.db"))
        with Proxy(config) as running:
            client = running.client(max_retries=0)
            received = []
            with pytest.raises(openai.APIError) as failed:
                for part in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
                    received.append(part.choices[0].delta.content)
    assert received == ["Hel"]
    assert failed.value.body == {"message": "overloaded; you sent Bearer [REDACTED]", "type": "server_error", "param": None, "code": "overloaded"}
    [record] = CallLog(tmp_path / "calls.db").calls()
    assert record.error is not None and "Secret" not in record.error


def test_a_stream_the_body_did_not_ask_for_is_still_sent_and_closed(llama_server: str, tmp_path: Path) -> None:
    # the SDK's answer, not the body's `stream`, decides how it is sent: a stream is never left open
    streaming = Generating("chat", ("model", "messages"), CHAT.signature, lambda client, a: client.chat.completions.create(**a, stream=True))
    budget = {"total_usd": 100.0, "prices": PRICES, "ledger": str(tmp_path / "ledger.db")}
    config = ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"), budget=budget)
    with Proxy(config, routes=[Route("/v1/always/streamed", generating(streaming), methods=["POST"])]) as running:
        answer = running.post("/always/streamed", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 4}).encode())
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
    [record] = CallLog(tmp_path / "calls.db").calls()
    assert record.error is None and record.call_id == answer.headers["x-blackbox-call-id"]
    assert Budget(prices=PRICES, ledger=str(tmp_path / "ledger.db")).report().outstanding_reservations == 0


def test_the_config_file_maps_onto_the_clients_options_and_refuses_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('upstream = "http://127.0.0.1:9/v1"\nport = 9001\n[budget]\ntotal_usd = 5.0\n[budget.prices.smollm2]\ninput = 1.0\noutput = 2.0\n')
    config = load_config(path, port=9002, host=None)
    assert config.port == 9002 and config.host == "127.0.0.1" and config.budget == {"total_usd": 5.0, "prices": {MODEL: {"input": 1.0, "output": 2.0}}}
    path.write_text('upstream = "http://127.0.0.1:9/v1"\nbudgt = 1\n')
    with pytest.raises(ConfigError, match="budgt"):
        load_config(path)
    with pytest.raises(ConfigError, match="total_usd"):
        create_app(ProxyConfig(budget={"total_usd": -1}))  # a bad budget fails when the app is made, not on the first call


def test_the_serve_command_runs_until_sigterm_and_refuses_to_listen_openly_without_keys(llama_server: str) -> None:
    command = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", llama_server]
    exposed = subprocess.run([*command, "--host", "0.0.0.0"], check=False, capture_output=True, text=True, timeout=60)
    assert exposed.returncode == 1 and "open_without_keys" in exposed.stderr
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proxy_ready(port, process, START_TIMEOUT_S)
        models = httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert MODEL in [model["id"] for model in models["data"]]
    assert "Finished server process" in stderr and process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


@pytest.mark.parametrize("flag", ["--log", "--cache", "--keys"])
def test_the_serve_command_fails_at_startup_on_a_corrupt_store(flag: str, tmp_path: Path) -> None:
    (tmp_path / "cache.db").write_text("not an SQLite file\n" * 300)  # the --cache folder's database
    target = tmp_path if flag == "--cache" else tmp_path / "cache.db"
    command = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(free_port()), flag, str(target)]
    failed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "Uvicorn running" not in failed.stderr
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("blackbox-sdk: ") and str(target) in failed.stderr


@pytest.mark.parametrize("table", ["[rate_limit]\nrpm = 5\nstore", "[budget]\ntotal_usd = 5.0\nledger"], ids=["rate-limit-store", "ledger"])
def test_the_serve_command_fails_at_startup_on_a_corrupt_sqlite_store_in_its_config(table: str, tmp_path: Path) -> None:
    corrupt = tmp_path / "store.db"
    corrupt.write_text("not an SQLite file\n" * 300)
    (tmp_path / "proxy.toml").write_text(f"{table} = {json.dumps(str(corrupt))}\n")
    command = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(free_port()), "--config", str(tmp_path / "proxy.toml")]
    failed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)  # one that listens times out
    assert failed.returncode == 1 and "Uvicorn running" not in failed.stderr
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("blackbox-sdk: ") and str(corrupt) in failed.stderr


def test_the_serve_command_on_a_port_in_use_is_one_error_line_and_status_1() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        command = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(port)]
        failed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "Uvicorn running" not in failed.stderr  # uvicorn's own exit status is 3
    assert failed.stderr == f"blackbox-sdk: can't listen on 127.0.0.1:{port}: Address already in use\n"


@pytest.mark.parametrize("how", [*BROKEN_ADAPTERS, "in-the-config-file"])
def test_the_serve_command_fails_at_startup_on_a_reranker_that_cant_load(how: str, tmp_path: Path) -> None:
    folder, named = broken_adapter(tmp_path, "weights-cut" if how == "in-the-config-file" else how)
    command = [sys.executable, "-m", "blackbox_sdk", "serve", "--upstream", "http://127.0.0.1:9/v1", "--port", str(free_port())]
    if how == "in-the-config-file":
        (tmp_path / "proxy.toml").write_text(f"reranker = {json.dumps(str(folder))}\n")
        command += ["--config", str(tmp_path / "proxy.toml")]
    else:
        command += ["--reranker", str(folder)]
    failed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)  # one that listens times out
    assert failed.returncode == 1 and "Uvicorn running" not in failed.stderr
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("blackbox-sdk: reranker: ") and named in failed.stderr, failed.stderr


def test_a_keys_client_is_built_off_the_event_loop_and_a_broken_one_is_a_clear_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blackbox_sdk.serve._tenants import TenantClients
    from servers import InstantUpstream

    building, release = threading.Event(), threading.Event()
    build = TenantClients.client

    def slow_build(self: TenantClients, tenant: Tenant | None) -> Any:  # as long as an adapter takes to load
        if tenant is not None and tenant.name == "slow":
            building.set()
            release.wait(60)
        return build(self, tenant)

    monkeypatch.setattr(TenantClients, "client", slow_build)
    tenants = {"k-slow": Tenant("slow", options={}), "k-missing": Tenant("missing", options={"reranker": str(tmp_path / "no-adapter")})}
    upstream = InstantUpstream({"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]})
    body = json.dumps({"model": MODEL, "messages": HELLO}).encode()
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=tenants.get) as running:
            answers: list[httpx2.Response] = []
            first = threading.Thread(target=lambda: answers.append(running.post("/chat/completions", body, authorization="Bearer k-slow")))
            first.start()
            assert building.wait(60)
            assert httpx2.get(f"{running.url}/healthz", timeout=10).status_code == 200  # the loop answers while the key's client builds
            release.set()
            first.join(60)
            broken = running.post("/chat/completions", body, authorization="Bearer k-missing")
    finally:
        release.set()
        upstream.close()
    assert answers[0].status_code == 200
    assert broken.status_code == 500 and broken.json()["error"]["code"] == "key_misconfigured"
    assert broken.headers["x-should-retry"] == "false"  # only the operator can mend it: openai's clients raise at once
    assert "no-adapter" in broken.json()["error"]["message"]


def test_a_keys_first_requests_at_once_build_its_client_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four first requests of one key at the same moment: one build (a reranker loaded once), one client for all."""
    from blackbox_sdk.serve._tenants import TenantClients

    base = BlackboxOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-unused")
    builds: list[dict[str, Any]] = []
    build = base.with_options

    def slow_build(**options: Any) -> Any:  # as long as an adapter takes to load
        builds.append(options)
        time.sleep(0.3)
        return build(**options)

    monkeypatch.setattr(base, "with_options", slow_build)
    clients, team = TenantClients(base), Tenant("team-a", options={"rerank_n": 2})
    start = threading.Barrier(4)
    got: list[Any] = []

    def first_request() -> None:
        start.wait(10)
        got.append(clients.client(team))

    threads = [threading.Thread(target=first_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(builds) == 1 and len(got) == 4 and all(client is got[0] for client in got)
    assert got[0].options.rerank_n == 2 and got[0].options.budget_key == "team-a"


@pytest.mark.parametrize(
    ("status", "headers", "answered"),
    [
        pytest.param(429, {"x-should-retry": "false"}, 429, id="upstream-says-no-retry"),
        pytest.param(401, {}, 502, id="upstream-refuses-the-proxys-key"),
    ],
)
def test_the_openai_client_does_not_retry_what_retrying_cannot_fix(status: int, headers: dict[str, str], answered: int) -> None:
    from servers import InstantUpstream

    hits: list[int] = []
    refusal = {"error": {"message": "no", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    upstream = InstantUpstream(refusal, before=lambda: hits.append(1), status=status, headers=headers)
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0)) as running:
            with pytest.raises(openai.APIStatusError) as failed:
                running.client(max_retries=2).chat.completions.create(model=MODEL, messages=HELLO)
    finally:
        upstream.close()
    assert failed.value.status_code == answered and failed.value.response.headers["x-should-retry"] == "false"
    assert len(hits) == 1  # as from OpenAI itself: the client did not send it again (nor did each retry reach the upstream)
