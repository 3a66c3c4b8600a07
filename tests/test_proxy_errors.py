"""The proxy's own refusals as OpenAI sends them, called by the openai client and by raw HTTP against the
proxy under uvicorn: each carries an `x-request-id`, a body that is not UTF-8 is refused before any work,
feedback of the wrong type is a 400 naming the field, a rate limit's wait is never sent as 0, and a call's
fault that is the deployment's (a reranker scoring wrongly, torch missing, a hold released) is a 500, not a 400."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import redis
from servers import InstantUpstream, Proxy, RedisServer, sse_upstream
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import blackbox_sdk
from blackbox_sdk import CallLog, CallLogError, RateLimitExceededError, ReservationNotHeldError
from blackbox_sdk.budget import Budget, Ledger
from blackbox_sdk.call_log import CallRecord
from blackbox_sdk.local import free_port
from blackbox_sdk.serve import ProxyConfig, Tenant, create_app
from blackbox_sdk.serve._errors import ProxyError, error_response
from blackbox_sdk.serve._state import Proxy as ProxyState

MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hello in three words."}]
TEAM_KEY = "sk-team-a"
LIMIT = 64 * 1024  # the proxy's body limit here
PRICED = {"total_usd": 10.0, "prices": {MODEL: {"input": 1.0, "output": 1.0}}}
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-errors")


@pytest.fixture(scope="module")
def proxy(folder: Path) -> Iterator[Proxy]:
    """The proxy with tenant keys and a call log, its upstream a closed port: nothing here may reach it."""
    team = Tenant("team-a")
    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", log=str(folder / "calls.db"), max_retries=0, max_body_bytes=LIMIT)
    with Proxy(config, authenticate=lambda key: team if key == TEAM_KEY else None) as running:
        yield running


def test_the_proxys_own_errors_carry_a_request_id_the_openai_client_reads(proxy: Proxy) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown_key:
        proxy.client(api_key="sk-wrong").chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.NotFoundError) as unknown_route:
        proxy.client(api_key=TEAM_KEY).files.list()  # a route the proxy does not serve: OpenAI's "Invalid URL"
    ids = [unknown_key.value.request_id, unknown_route.value.request_id]
    auth = {"authorization": f"Bearer {TEAM_KEY}"}
    for answer in (
        httpx2.get(f"{proxy.base_url}/chat/completions", headers=auth, timeout=30),  # 405
        proxy.post("/chat/completions", b'{"model": ', **auth),  # 400: malformed JSON
        proxy.post("/chat/completions", b" " * (LIMIT + 1), **auth),  # 413
    ):
        assert answer.status_code in (400, 405, 413) and "error" in answer.json()
        ids.append(answer.headers.get("x-request-id"))
    assert all(isinstance(found, str) and found.startswith("bb-") for found in ids), ids  # the call ids' form
    assert len(set(ids)) == len(ids)  # a fresh one each


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_body_that_is_not_utf8_is_refused_before_any_work(proxy: Proxy, encoding: str) -> None:
    body = json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode(encoding)
    answer = proxy.post("/chat/completions", body, authorization=f"Bearer {TEAM_KEY}")
    assert answer.status_code == 400, answer.text  # not a 502: nothing was sent to the (closed) upstream
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json" and "UTF-8" in error["message"]


def test_a_utf8_body_with_a_byte_order_mark_is_still_read(proxy: Proxy) -> None:
    body = json.dumps({"model": MODEL, "messages": HELLO}).encode("utf-8-sig")  # RFC 8259 lets a parser ignore it
    answer = proxy.post("/chat/completions", body, authorization=f"Bearer {TEAM_KEY}")
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_unreachable"  # parsed, then sent


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        pytest.param("label", 5, "label must be one of 'correct', 'incorrect', got 5", id="label-a-number"),
        pytest.param("label", "maybe", "label must be one of 'correct', 'incorrect', got 'maybe'", id="label-unknown"),
        pytest.param("preferred", True, "preferred must be an integer (the index of a candidate), got True", id="preferred-bool"),
        pytest.param("preferred", "1", "preferred must be an integer (the index of a candidate), got '1'", id="preferred-text"),
        pytest.param("reference", 4, "reference must be a string, got 4", id="reference-a-number"),
        pytest.param("reference", "  ", "reference must be the right answer's text, got '  '", id="reference-blank"),
        pytest.param("note", ["x"], "note must be a string, got ['x']", id="note-a-list"),
    ],
)
def test_feedback_of_the_wrong_type_is_a_400_naming_the_field(proxy: Proxy, folder: Path, field: str, value: object, said: str) -> None:
    log = CallLog(folder / "calls.db")
    record = CallRecord(endpoint_host="127.0.0.1", model=MODEL, route="chat", request={}, candidates=["hi"], chosen=[0], key="team-a")
    log.record(record)
    log.flush()
    answer = proxy.post("/feedback", json.dumps({"call_id": record.call_id, field: value}).encode(), authorization=f"Bearer {TEAM_KEY}")
    assert answer.status_code == 400
    assert answer.json()["error"] == {"message": said, "type": "invalid_request_error", "param": None, "code": None}
    assert log.feedback_for(record.call_id) == []


@pytest.mark.parametrize(("wait", "seconds", "milliseconds"), [(0.0, "1", "1"), (0.0004, "1", "1"), (0.0015, "1", "2"), (0.3, "1", "300"), (1.2, "2", "1200")])
def test_a_rate_limits_wait_is_rounded_up_and_never_sent_as_zero(wait: float, seconds: str, milliseconds: str) -> None:
    refused = error_response(RateLimitExceededError("over the limit", limit=1, scope="client", retry_after=wait))
    assert refused.status_code == 429
    assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == (seconds, milliseconds)


def test_feedback_on_a_proxy_without_a_call_log_is_a_501_not_to_retry() -> None:
    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)  # no log
    with Proxy(config) as bare:
        answer = bare.post("/feedback", json.dumps({"call_id": "bb-none", "label": "correct"}).encode())
    assert answer.status_code == 501
    assert answer.json()["error"]["code"] == "feedback_not_enabled" and "set log" in answer.json()["error"]["message"]
    assert answer.headers["x-should-retry"] == "false" and answer.headers["x-request-id"].startswith("bb-")


def test_a_failure_outside_the_routes_handling_is_openais_500_body() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug outside the guarded routes")

    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    with Proxy(config, routes=[Route("/broken", broken)]) as running:
        answer = httpx2.get(f"{running.url}/broken", timeout=30)
    assert answer.status_code == 500
    assert answer.json()["error"] == {"message": "the proxy failed to serve the request", "type": "server_error", "param": None, "code": None}
    assert answer.headers["x-request-id"].startswith("bb-")


def _deployment_fault(answer: httpx2.Response, code: str, said: str) -> None:
    """A 500 server_error with `code`, naming what failed, that openai's clients do not retry."""
    assert answer.status_code == 500, answer.text
    error = answer.json()["error"]
    assert error["type"] == "server_error" and error["code"] == code and said in error["message"], error
    assert answer.headers["x-should-retry"] == "false" and answer.headers["x-request-id"].startswith("bb-")


def test_a_keys_reranker_that_misscores_is_the_proxys_500_not_the_clients_400(caplog: pytest.LogCaptureFixture) -> None:
    upstream = InstantUpstream(ANSWER)
    team = Tenant("team-a", options={"reranker": lambda question, answers: [1.0], "rerank_n": 3})
    config = ProxyConfig(upstream=upstream.url, max_retries=0)
    try:
        with Proxy(config, authenticate=lambda key: team if key == TEAM_KEY else None) as running:
            body = json.dumps({"model": MODEL, "messages": HELLO}).encode()
            answer = running.post("/chat/completions", body, authorization=f"Bearer {TEAM_KEY}")
            with pytest.raises(openai.InternalServerError) as raised:  # raised at once: x-should-retry is false
                running.client(api_key=TEAM_KEY, max_retries=5).chat.completions.create(model=MODEL, messages=HELLO)
    finally:
        upstream.close()
    _deployment_fault(answer, "reranker_failed", "the reranker returned 1 scores for 3 answers")
    assert raised.value.status_code == 500 and raised.value.code == "reranker_failed"
    assert "RerankerError while serving a request" in caplog.text


def test_prompt_embeds_on_a_proxy_without_torch_is_its_500_not_the_clients_400(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", budget=PRICED, max_retries=0)
    with Proxy(config) as running:
        monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed where the proxy runs
        body = {"model": MODEL, "prompt": [], "max_tokens": 1, "prompt_embeds": ["AAAA"]}
        answer = running.post("/completions", json.dumps(body).encode())
    _deployment_fault(answer, "missing_dependency", "prompt_embeds need torch")


def test_a_paid_answer_whose_hold_was_released_mid_call_is_served_and_charged(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"

    def release_every_hold() -> None:
        """Another process releases this call's hold while the upstream answers (as a stale-hold sweep would)."""
        with sqlite3.connect(ledger) as connection:
            held = [row[0] for row in connection.execute("SELECT id FROM reservations")]
        released = Ledger(ledger)
        for reservation_id in held:
            released.release(reservation_id)
        released.close()

    upstream = InstantUpstream(ANSWER, before=release_every_hold)
    config = ProxyConfig(upstream=upstream.url, budget={**PRICED, "ledger": str(ledger)}, max_retries=0)
    try:
        with Proxy(config) as running:
            answer = running.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 8}).encode())
    finally:
        upstream.close()
    assert answer.status_code == 200, answer.text  # the answer was paid: it is served, and charged
    report = Budget(**PRICED, ledger=ledger).report()
    assert report.calls == 1 and report.spent_usd > 0 and report.outstanding_reservations == 0


def test_a_settle_the_ledger_refuses_is_the_proxys_500_not_the_clients_400() -> None:
    refused = error_response(ReservationNotHeldError("reservation r is not outstanding: it was already settled (charged once)"))
    assert refused.status_code == 500 and refused.headers["x-should-retry"] == "false"
    error = json.loads(bytes(refused.body))["error"]
    assert error["type"] == "server_error" and error["code"] == "reservation_not_held" and "already settled" in error["message"]


def test_a_bad_value_in_the_request_is_still_the_clients_400() -> None:
    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", budget=PRICED, max_retries=0)
    with Proxy(config) as running:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 2**53}  # beyond what a ledger counts exactly
        answer = running.post("/chat/completions", json.dumps(body).encode())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error" and "x-should-retry" not in answer.headers


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        pytest.param("/chat/completions", {"messages": HELLO, "user": 123}, "user", id="chat-user-a-number"),
        pytest.param("/completions", {"prompt": "Hi", "user": ["a"]}, "user", id="completions-user-a-list"),
        pytest.param("/embeddings", {"input": "Hi", "user": 1.5}, "user", id="embeddings-user-a-float"),
        pytest.param("/responses", {"input": "Hi", "user": 7}, "user", id="responses-user-a-number"),
        pytest.param("/chat/completions", {"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options", id="stream-options-without-stream"),
        pytest.param("/completions", {"prompt": "Hi", "stream": False, "stream_options": {}}, "stream_options", id="stream-options-not-streamed"),
        pytest.param("/chat/completions", {"messages": HELLO, "seed": "abc"}, "seed", id="chat-seed-not-a-number"),
        pytest.param("/completions", {"prompt": "Hi", "best_of": "x"}, "best_of", id="completions-best-of-a-string"),
        pytest.param("/embeddings", {"input": ["Hi", 5]}, "input", id="embeddings-input-mixed"),
        pytest.param("/responses", {"input": "Hi", "tools": ["web_search"]}, "tools[0]", id="responses-tool-a-string"),
    ],
)
def test_a_wrongly_typed_parameter_is_openais_400_naming_it_before_anything_is_sent(
    proxy: Proxy, route: str, body: dict[str, object], param: str,
) -> None:
    """OpenAI answers 400 naming the parameter; sent on, llama-cpp-python answers 500 with its pydantic error text."""
    answer = proxy.post(route, json.dumps({"model": MODEL, **body}).encode(), authorization=f"Bearer {TEAM_KEY}")
    assert answer.status_code == 400, answer.text  # not a 502: nothing was sent to the (closed) upstream
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and "x-should-retry" not in answer.headers


@pytest.mark.parametrize("mode", ["no-keys", "tenant-keys", "per-key-log"])
def test_feedback_on_an_unknown_call_is_openais_404_in_every_mode(folder: Path, mode: str) -> None:
    where = folder / f"unknown-{mode}.db"
    logged = CallRecord(endpoint_host="127.0.0.1", model=MODEL, route="chat", request={}, candidates=["hi"], chosen=[0], key="team-b")
    CallLog(where).record(logged)
    CallLog(where).flush()
    team = Tenant("team-a", options={"log": str(where)} if mode == "per-key-log" else {})  # a key whose calls have a log of their own
    config = ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", log=None if mode == "per-key-log" else str(where), max_retries=0)
    keyed = mode != "no-keys"
    auth = {"authorization": f"Bearer {TEAM_KEY}"} if keyed else {}
    with Proxy(config, authenticate=(lambda key: team if key == TEAM_KEY else None) if keyed else None) as running:
        unknown = running.post("/feedback", json.dumps({"call_id": "bb-nope", "label": "correct"}).encode(), **auth)
        others = running.post("/feedback", json.dumps({"call_id": logged.call_id, "label": "correct"}).encode(), **auth)
    expected = {"message": "no call 'bb-nope' in the log", "type": "invalid_request_error", "param": "call_id", "code": "call_not_found"}
    assert (unknown.status_code, unknown.json()["error"]) == (404, expected), unknown.text
    assert unknown.headers["x-request-id"].startswith("bb-")
    assert others.status_code == (404 if keyed else 200), others.text  # another key's call is unknown to a tenant; without keys any is rated


def test_a_key_sent_as_a_field_name_is_redacted_in_the_call_log(proxy: Proxy, folder: Path) -> None:
    secret = "sk-proj-" + "a1B2c3D4" * 5  # a client that pasted its key where a parameter's name goes
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, secret: 1, "extra": {f"Bearer {secret}": "x"}}
    answer = proxy.post("/chat/completions", json.dumps(body).encode(), authorization=f"Bearer {TEAM_KEY}")
    assert answer.status_code == 502  # sent on (to the closed upstream), so the call is logged
    CallLog(folder / "calls.db").flush()
    with sqlite3.connect(folder / "calls.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert '"extra_body":{"[REDACTED]":1,"extra":{"[REDACTED]":"x"}}' in dump


def test_a_stream_the_upstream_cut_short_ends_with_an_error_event_not_done(folder: Path) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    cut = sse_upstream(lambda headers: f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())  # one chunk, no finish_reason, yet [DONE]
    with cut as upstream, Proxy(ProxyConfig(upstream=upstream, max_retries=0, log=str(folder / "cut.db"))) as running:
        raw = running.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, "stream": True}).encode())
        received = []
        with pytest.raises(openai.APIError) as failed:
            for part in running.client(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, stream=True):
                received.append(part.choices[0].delta.content)
    assert raw.status_code == 200 and "[DONE]" not in raw.text, raw.text  # a client that waits for [DONE] is not told it came whole
    assert received == ["Hel"] and failed.value.body is not None
    assert failed.value.body["code"] == "upstream_stream_incomplete" and "finish_reason" in failed.value.body["message"]
    records = list(CallLog(folder / "cut.db").calls())
    assert len(records) == 2 and all("finish_reason" in (record.error or "") for record in records)


def test_a_store_out_of_reach_is_a_503_that_keeps_its_address_from_the_client(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    upstream = InstantUpstream(ANSWER)
    config = ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit={"rpm": 100, "store": redis_server.url})
    try:
        with Proxy(config) as running:
            redis_server.stop()  # the rate window's Redis goes away under a running proxy
            with pytest.raises(openai.InternalServerError) as down:
                running.client(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    finally:
        upstream.close()
    error = down.value.response.json()["error"]
    assert (down.value.status_code, error["code"]) == (503, "store_unavailable")
    assert (down.value.response.headers.get("retry-after"), down.value.response.headers.get("x-should-retry")) == ("1", None)  # an outage passes: wait, then retry
    assert str(redis_server.port) not in down.value.response.text and "127.0.0.1" not in down.value.response.text
    assert "unavailable" in error["message"]
    assert f"127.0.0.1:{redis_server.port}" in caplog.text  # the operator's log says which store


def test_a_proxy_whose_client_could_not_be_built_keeps_the_stores_address_from_clients(redis_with_password: RedisServer) -> None:
    wrong = redis_with_password.url.replace(redis_with_password.password or "", "wrong-pw")  # the cache's Redis refuses it
    with TestClient(create_app(ProxyConfig(upstream=f"http://127.0.0.1:{free_port()}/v1", cache=wrong)), base_url="http://127.0.0.1") as http:
        deadline = time.monotonic() + 60
        while (ready := http.get("/readyz")).json()["status"] == "starting":
            assert time.monotonic() < deadline, "the client was never built nor failed"
            time.sleep(0.05)
        answer = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert (ready.status_code, ready.json()["status"], answer.status_code, answer.json()["error"]["code"]) == (503, "failed", 503, "not_ready")
    assert (answer.headers.get("x-should-retry"), answer.headers.get("retry-after")) == ("false", None)  # only a restart mends it
    assert "was refused by the Redis server" in ready.json()["error"] and "was refused by the Redis server" in answer.text  # what failed
    for shown in (ready.text, answer.text):
        assert f":{redis_with_password.port}" not in shown and "wrong-pw" not in shown  # where: only in the proxy's log


def test_stopping_the_proxy_closes_the_budget_rate_limits_cache_and_log_it_built(redis_server: RedisServer, tmp_path: Path) -> None:
    upstream, admin = InstantUpstream(ANSWER), redis.Redis(port=redis_server.port)
    budget = {**PRICED, "ledger": redis_server.url}
    config = ProxyConfig(
        upstream=upstream.url, max_retries=0, cache=redis_server.url, log=str(tmp_path / "calls.db"), budget=budget,
        rate_limit={"rpm": 100, "store": redis_server.url},
    )
    alone = len(admin.client_list())  # the test's own connection
    try:
        with Proxy(config) as running:
            running.client(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
            assert len(admin.client_list()) > alone  # the ledger, the rate window and the cache hold connections
    finally:
        upstream.close()
    assert len(admin.client_list()) == alone  # none left open once the app's lifespan ended
    fds = Path("/proc/self/fd")
    assert not [name for name in os.listdir(fds) if os.path.realpath(fds / name).startswith(str(tmp_path))]  # the log's file closed
    assert len(list(CallLog(tmp_path / "calls.db").calls())) == 1  # written before it closed


def test_a_client_that_fails_to_close_at_stop_still_lets_the_ledger_and_rate_window_go(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream, admin = InstantUpstream(ANSWER), redis.Redis(port=redis_server.port)
    config = ProxyConfig(upstream=upstream.url, max_retries=0, budget={**PRICED, "ledger": redis_server.url}, rate_limit={"rpm": 100, "store": redis_server.url})
    alone = len(admin.client_list())  # the test's own connection

    async def fails(self: object) -> None:  # a fault at stop: the call log can't write its last records
        raise CallLogError("the call log could not write its last records")

    monkeypatch.setattr(blackbox_sdk.AsyncOpenAI, "close", fails)
    try:
        with pytest.raises(CallLogError, match="its last records"), TestClient(create_app(config), base_url="http://127.0.0.1") as http:
            deadline = time.monotonic() + 60
            while http.get("/readyz").json()["status"] == "starting":
                assert time.monotonic() < deadline, "the client was never built"
                time.sleep(0.05)
            assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2}).status_code == 200
            assert len(admin.client_list()) > alone  # the ledger and the rate window hold connections
    finally:
        upstream.close()
    assert len(admin.client_list()) == alone  # closed all the same, and the client's error still raised


def test_a_proxy_still_building_its_client_asks_for_a_retry_after_a_second() -> None:
    starting = ProxyState(ProxyConfig(upstream="http://127.0.0.1:9/v1"), {}, None)  # its client not built yet
    with pytest.raises(ProxyError) as refused:
        starting.client_for(None)
    answer = error_response(refused.value)
    assert (answer.status_code, json.loads(answer.body)["error"]["code"]) == (503, "not_ready")
    assert (answer.headers.get("retry-after"), answer.headers.get("retry-after-ms"), answer.headers.get("x-should-retry")) == ("1", "1000", None)
