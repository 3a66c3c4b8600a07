"""The proxy's /metrics: scraped after real calls through the proxy in front of the real llama.cpp
server, parsed with prometheus_client's own parser; behind the admin key, with no key material."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import Proxy, sse_upstream
from starlette.testclient import TestClient

from blackbox_sdk import Budget, CallLog, ConfigError
from blackbox_sdk.local import free_port
from blackbox_sdk.serve import (
    ProxyConfig,
    TenantDefaults,
    TenantOptions,
    admin_routes,
    create_app,
    key_authenticator,
    open_key_store,
)

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}
ADMIN = "admin-key-for-metrics-tests-0123456789"
HELLO = [{"role": "user", "content": "Say hello in three words."}]


def _ready(http: TestClient) -> None:
    """Poll /readyz until the upstream client is built."""
    deadline = time.monotonic() + 120
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the proxy did not become ready"
        time.sleep(0.05)


def scrape(http: TestClient, **headers: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """/metrics' text and its samples by (name, sorted labels), parsed by prometheus_client."""
    answer = http.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return answer.text, samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


@pytest.fixture
def keyed(llama_server: str, tmp_path: Path) -> Iterator[tuple[TestClient, str, Path]]:
    """The proxy with a key store (admin key), a cache, a log and priced tenant budgets; team-a's key."""
    store = open_key_store(tmp_path / "keys.db", admin_key=ADMIN)
    tenants = TenantOptions(TenantDefaults(ledger=tmp_path / "tenants", cache=tmp_path / "cache", budget_options={"prices": PRICES}))
    config = ProxyConfig(upstream=llama_server, log=str(tmp_path / "calls.db"))
    app = create_app(config, authenticate=key_authenticator(store, tenants), routes=admin_routes(store), keys=store, tenants=tenants)
    secret, _ = store.create("team-a", budget_usd=5.0, models=[MODEL])
    with TestClient(app) as http:
        _ready(http)
        yield http, str(secret), tmp_path
    tenants.close()
    store.close()


def test_counters_move_with_real_calls_and_show_no_key(keyed: tuple[TestClient, str, Path]) -> None:
    http, secret, folder = keyed
    as_a = {"authorization": f"Bearer {secret}"}
    chat = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0}
    first = http.post("/v1/chat/completions", json=chat, headers=as_a)
    again = http.post("/v1/chat/completions", json=chat, headers=as_a)
    assert first.status_code == again.status_code == 200
    assert (first.headers["x-blackbox-cache-hit"], again.headers["x-blackbox-cache-hit"]) == ("false", "true")
    streamed = {**chat, "messages": [{"role": "user", "content": "Count to three."}], "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=streamed, headers=as_a) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    stream_usage = json.loads(events[-2][6:])["usage"]
    assert http.post("/v1/chat/completions", json={**chat, "model": "gpt-4o"}, headers=as_a).status_code == 404  # not team-a's model
    assert http.post("/v1/chat/completions", json=chat, headers={"authorization": "Bearer bb-wrong"}).status_code == 401

    for refused in ({}, as_a, {"authorization": "Bearer " + "x" * 40}):  # nobody but the admin
        refusal = http.get("/metrics", headers=refused)
        assert refusal.status_code == 401 and "in the Authorization header as a bearer token" in refusal.json()["error"]["message"]  # not redacted
    text, samples = scrape(http, authorization=f"Bearer {ADMIN}")
    mine = {"key": "team-a", "model": MODEL}
    assert value(samples, "blackbox_proxy_requests_total", route="chat", status="200", **mine) == 3
    assert value(samples, "blackbox_proxy_requests_total", route="chat", status="404", key="team-a", model="refused") == 1
    assert value(samples, "blackbox_proxy_requests_total", route="chat", status="401", key="") == 1
    assert value(samples, "blackbox_proxy_cache_lookups_total", result="hit", **mine) == 1  # the hit, counted once
    assert value(samples, "blackbox_proxy_cache_lookups_total", result="miss", **mine) == 2
    usage = first.json()["usage"]
    assert value(samples, "blackbox_proxy_tokens_total", direction="in", **mine) == usage["prompt_tokens"] + stream_usage["prompt_tokens"]
    assert value(samples, "blackbox_proxy_tokens_total", direction="out", **mine) == usage["completion_tokens"] + stream_usage["completion_tokens"]
    spend = value(samples, "blackbox_proxy_spend_usd_total", **mine)
    ledger = Budget(prices=PRICES, ledger=folder / "tenants" / "team-a.sqlite3").spent()
    assert spend > 0 and spend == pytest.approx(ledger, abs=1e-9)  # the metric is what the tenant's ledger settled
    assert value(samples, "blackbox_proxy_request_duration_seconds_count", route="chat", **mine) == 3
    assert value(samples, "blackbox_proxy_stream_first_byte_seconds_count", route="chat", **mine) == 1
    assert value(samples, "blackbox_proxy_requests_in_flight") == 0
    assert value(samples, "blackbox_proxy_upstream_errors_total") == 0
    assert secret not in text and ADMIN not in text and "bb-wrong" not in text


def test_a_browser_session_reads_metrics_too_and_logs_out(keyed: tuple[TestClient, str, Path]) -> None:
    http, secret, _ = keyed
    assert http.post("/login", content=f"key={secret}", headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False).status_code == 401
    assert "blackbox_admin" not in http.cookies
    answer = http.post("/login", content=f"key={ADMIN}", headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert ADMIN not in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert http.get("/metrics").status_code == 200 and http.get("/").status_code == 200
    http.post("/logout", follow_redirects=False)
    http.cookies.clear()
    assert http.get("/metrics").status_code == 401


def test_upstream_errors_are_counted_and_metrics_stay_on_loopback_without_keys(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: a real connection failure
    app = create_app(ProxyConfig(upstream=dead, max_retries=0))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000)) as http:
        _ready(http)
        failed = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 4})
        assert failed.status_code == 502
        _, samples = scrape(http)  # no keys: this machine may read it without a key
        assert value(samples, "blackbox_proxy_upstream_errors_total", kind="connection", model=MODEL, key="") == 1
        assert value(samples, "blackbox_proxy_requests_total", status="502") == 1
    with TestClient(app, base_url="http://localhost", client=("203.0.113.7", 50000)) as remote:
        assert remote.get("/metrics").status_code == 403 and remote.get("/").status_code == 403


def test_a_request_the_sdk_refuses_before_sending_is_no_upstream_error(tmp_path: Path) -> None:
    """The SDK's own 400 (an `InvalidRequestError`, an `openai.BadRequestError` as the server's would be) is a bad
    request: counted in requests_total under 400, not as an upstream failure (the upstream here is not even up)."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    app = create_app(ProxyConfig(upstream=dead, max_retries=0))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000)) as http:
        _ready(http)
        refused = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "max_tokens": 4})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
        _, samples = scrape(http)
        assert value(samples, "blackbox_proxy_requests_total", route="chat", status="400", model=MODEL, key="") == 1
        assert value(samples, "blackbox_proxy_upstream_errors_total") == 0


def test_two_apps_in_one_process_keep_their_own_metrics(llama_server: str) -> None:
    one, two = create_app(ProxyConfig(upstream=llama_server)), create_app(ProxyConfig(upstream=llama_server))
    loopback = ("127.0.0.1", 50000)
    with TestClient(one, base_url="http://localhost", client=loopback) as first, TestClient(two, base_url="http://localhost", client=loopback) as second:
        _ready(first)
        assert first.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2}).status_code == 200
        assert value(scrape(first)[1], "blackbox_proxy_requests_total", route="chat") == 1
        assert value(scrape(second)[1], "blackbox_proxy_requests_total", route="chat") == 0


def test_the_model_label_is_bounded() -> None:
    from blackbox_sdk.serve._metrics import MAX_MODELS, ModelNames

    names = ModelNames()
    assert [names.label(f"m{i}") for i in range(MAX_MODELS)] == [f"m{i}" for i in range(MAX_MODELS)]
    assert names.label("one-too-many") == "other" and names.label("m3") == "m3" and names.label(7) == ""


def test_a_secret_pasted_as_the_model_name_never_becomes_a_label() -> None:
    """Issue: the model label was the name the client sent, as it was: a key or a URL with its password pasted into the
    model field (a misconfigured client) was served on /metrics to every scraper."""
    from blackbox_sdk.serve._metrics import ModelNames

    names, key = ModelNames(), "sk-proj-" + "Zx9Yw8Vu" * 6
    assert names.label("postgresql://app:hunter2-pass@db/calls") == "postgresql://app:***@db/calls"
    assert key not in names.label(key) and names.label("gpt-4o-mini") == "gpt-4o-mini"
    assert names.label("x" * 89 + " " + key) == "x" * 89 + " [REDACTED]"  # redacted before it is cut: no key's head is left


def test_refused_model_names_take_no_model_label(keyed: tuple[TestClient, str, Path]) -> None:
    from blackbox_sdk.serve._metrics import MAX_MODELS

    http, secret, _ = keyed
    as_a = {"authorization": f"Bearer {secret}"}
    for number in range(MAX_MODELS):  # names team-a may not use: each refused with 404, nothing sent
        assert http.post("/v1/chat/completions", json={"model": f"not-mine-{number}", "messages": HELLO}, headers=as_a).status_code == 404
    assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 2}, headers=as_a).status_code == 200
    _, samples = scrape(http, authorization=f"Bearer {ADMIN}")
    assert value(samples, "blackbox_proxy_requests_total", route="chat", status="404", key="team-a", model="refused") == MAX_MODELS
    assert value(samples, "blackbox_proxy_requests_total", route="chat", status="200", key="team-a", model=MODEL) == 1


def test_a_stream_without_a_usage_chunk_counts_the_tokens_the_sdk_settled(keyed: tuple[TestClient, str, Path]) -> None:
    http, secret, folder = keyed
    streamed = {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=streamed, headers={"authorization": f"Bearer {secret}"}) as stream:
        call_id = stream.headers["x-blackbox-call-id"]
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and all('"usage"' not in e or '"usage":null' in e.replace(" ", "") for e in events[:-1])
    _, samples = scrape(http, authorization=f"Bearer {ADMIN}")
    logged = _logged(folder / "calls.db", call_id).usage
    mine = {"key": "team-a", "model": MODEL}
    assert value(samples, "blackbox_proxy_tokens_total", direction="in", **mine) == logged["prompt_tokens"] > 0
    assert value(samples, "blackbox_proxy_tokens_total", direction="out", **mine) == logged["completion_tokens"] > 0


def _logged(path: Path, call_id: str) -> Any:
    """A call's log record, once the log's background writer has written it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return CallLog(path).get(call_id)
        except ConfigError:
            assert time.monotonic() < deadline, f"{call_id} never reached the log"
            time.sleep(0.05)


@pytest.mark.parametrize("prompt_tokens", [-1, float("nan"), 2**70], ids=["negative", "nan", "past-2**53"])
def test_usage_a_server_reports_that_cant_be_real_still_answers_the_paid_call(tmp_path: Path, prompt_tokens: float) -> None:
    from servers import InstantUpstream

    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": 3}
    upstream = InstantUpstream({"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "choices": [], "usage": usage})
    budget = {"total_usd": 1.0, "prices": PRICES, "ledger": str(tmp_path / "ledger.db")}
    app = create_app(ProxyConfig(upstream=upstream.url, budget=budget, max_retries=0))
    try:
        with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000)) as http:
            _ready(http)
            answer = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 4})
            assert answer.status_code == 200, answer.text  # was a 500: Counter.inc(-1) raised after the call was paid
            assert float(answer.headers["x-blackbox-cost-usd"]) > 0
            _, samples = scrape(http)
            assert value(samples, "blackbox_proxy_tokens_total", direction="in") == 0  # not counted: it can't be real
            assert value(samples, "blackbox_proxy_tokens_total", direction="out") == 2
    finally:
        upstream.close()


def _answered(proxy: Proxy, route: str) -> dict[tuple[str, str], float]:
    """(metric, status or kind) -> value of `route`'s answered requests and the upstream errors, once none is in
    flight (a stream whose client left is counted when the proxy notices it, between two chunks)."""
    deadline = time.monotonic() + 120
    while True:
        samples = {}
        for family in text_string_to_metric_families(httpx2.get(f"{proxy.url}/metrics", timeout=60).text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        if value(samples, "blackbox_proxy_requests_in_flight") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    found = {("requests", dict(ls)["status"]): v for (n, ls), v in samples.items() if n == "blackbox_proxy_requests_total" and dict(ls)["route"] == route}
    found |= {("upstream_errors", dict(ls)["kind"]): v for (n, ls), v in samples.items() if n == "blackbox_proxy_upstream_errors_total"}
    return found


def test_a_chat_stream_the_upstream_cut_short_is_counted_as_an_upstream_failure(tmp_path: Path) -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    cut = sse_upstream(lambda headers: f"data: {json.dumps(chunk)}\n\n".encode())  # one chunk, no finish_reason, then closed
    with cut as upstream, Proxy(ProxyConfig(upstream=upstream, max_retries=0)) as proxy:
        body = {"model": MODEL, "messages": HELLO, "stream": True}
        sent = httpx2.post(f"{proxy.base_url}/chat/completions", json=body, timeout=60)
        assert sent.status_code == 200 and "upstream_stream_incomplete" in sent.text
        assert _answered(proxy, "chat") == {("requests", "502"): 1.0, ("upstream_errors", "incomplete"): 1.0}


def test_a_stream_whose_client_left_mid_stream_is_counted_as_client_closed(llama_server: str) -> None:
    with Proxy(ProxyConfig(upstream=llama_server, max_retries=0)) as proxy:
        count = [{"role": "user", "content": "Count from one to one thousand, one number per line."}]
        body = {"model": MODEL, "messages": count, "max_tokens": 1500, "ignore_eos": True, "stream": True}  # long: the client leaves first
        with httpx2.stream("POST", f"{proxy.base_url}/chat/completions", json=body, timeout=60) as answer:
            assert answer.status_code == 200
            next(answer.iter_lines())  # the first event; then the connection is closed with the stream unread
        assert _answered(proxy, "chat") == {("requests", "499"): 1.0}  # neither a 200 nor an upstream failure
