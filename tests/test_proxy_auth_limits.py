"""Failed authentication attempts are bounded per client address (/login, /admin, the admin gate, and apart from
those, unknown tenant keys on /v1), and a body sent as anything but JSON is refused with 415 before it is read, with or without tenant keys: the
proxy under uvicorn on loopback, called over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from servers import InstantUpstream, Proxy, RedisServer
from starlette.requests import Request

from blackbox_sdk import RateLimitExceededError
from blackbox_sdk.serve import ProxyConfig, Tenant, admin_routes, create_app, open_key_store
from blackbox_sdk.serve._attempts import MAX_FAILURES, WINDOW_S, FailedAttempts
from blackbox_sdk.serve._key_tenants import TenantDefaults, TenantOptions, key_authenticator
from blackbox_sdk.serve._keys import KEY_LENGTH, KeyRecord, KeyStore, KeyStoreBase

ADMIN = "admin-key-for-the-attempts-tests-0123456789"
TEAM_KEY = "sk-team-a"
MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hello."}]
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON = {"content-type": "application/json"}
ELSEWHERE = "198.51.100.9"  # another client, as a reverse proxy on this host forwards it (X-Forwarded-For)


@pytest.fixture(scope="module")
def upstream() -> Iterator[InstantUpstream]:
    served = InstantUpstream(ANSWER)
    yield served
    served.close()


@pytest.fixture
def keyed(upstream: InstantUpstream, tmp_path: Path) -> Iterator[Proxy]:
    """The proxy with a key store (its admin key and /admin routes) and a tenant key for team-a."""
    store = open_key_store(tmp_path / "keys.db", admin_key=ADMIN)
    team = Tenant("team-a")
    app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=lambda key: team if key == TEAM_KEY else None,
                     routes=admin_routes(store), keys=store)
    with Proxy(built=app) as running:
        yield running
    store.close()


def _admin(proxy: Proxy, key: str) -> httpx2.Response:
    return httpx2.get(f"{proxy.url}/admin/keys", headers={"authorization": f"Bearer {key}"}, timeout=30)


def _refused_429(answer: httpx2.Response, secret: str = ADMIN) -> None:
    """OpenAI's 429 body with a Retry-After of whole seconds (the key presented never echoed)."""
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
    assert ADMIN not in answer.text and secret not in answer.text


def test_wrong_admin_keys_past_the_limit_are_refused_429_before_any_key_is_compared(keyed: Proxy) -> None:
    for _ in range(40):  # no key at all guesses nothing: not counted
        assert httpx2.get(f"{keyed.url}/admin/keys", timeout=30).status_code == 401
    assert _admin(keyed, ADMIN).status_code == 200
    for guess in range(MAX_FAILURES // 2):
        assert _admin(keyed, f"wrong-{guess}").status_code == 401
    for guess in range(MAX_FAILURES - MAX_FAILURES // 2):  # /login's wrong keys count against the same address
        assert httpx2.post(f"{keyed.url}/login", content=f"key=wrong-{guess}", headers=FORM, timeout=30).status_code == 401
    _refused_429(_admin(keyed, ADMIN))  # even the right key: the guess is not compared
    _refused_429(httpx2.post(f"{keyed.url}/login", content=f"key={ADMIN}", headers=FORM, timeout=30))
    _refused_429(httpx2.get(f"{keyed.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30))
    served = keyed.client(api_key=TEAM_KEY, max_retries=0).chat.completions.create(model=MODEL, messages=HELLO)
    assert served.choices[0].message.content == "Hello."  # the tenants' /v1 routes are not the admin's


def test_wrong_keys_at_the_metrics_gate_count_too(keyed: Proxy) -> None:
    for guess in range(MAX_FAILURES):
        assert httpx2.get(f"{keyed.url}/metrics", headers={"authorization": f"Bearer wrong-{guess}"}, timeout=30).status_code == 401
    _refused_429(httpx2.get(f"{keyed.url}/", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30))


def _request(address: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": (address, 5000)})


def test_behind_a_reverse_proxy_on_this_host_each_forwarded_client_is_counted_apart(keyed: Proxy) -> None:
    """uvicorn takes `X-Forwarded-For` from a trusted reverse proxy (this host by default, `FORWARDED_ALLOW_IPS` for
    others) as the client's address: a guesser behind nginx locks out only itself, never the admin's scraper."""

    def admin(key: str, client: str) -> httpx2.Response:
        return httpx2.get(f"{keyed.url}/admin/keys", headers={"authorization": f"Bearer {key}", "x-forwarded-for": client}, timeout=30)

    for guess in range(MAX_FAILURES):
        assert admin(f"wrong-{guess}", "203.0.113.7").status_code == 401
    _refused_429(admin(ADMIN, "203.0.113.7"))
    assert admin(ADMIN, "198.51.100.9").status_code == 200


def test_failures_leave_the_window_and_each_address_has_its_own() -> None:
    now = [1000.0]
    attempts = FailedAttempts(limit=2, window_s=60.0, clock=lambda: now[0])
    attempts.take(_request("203.0.113.1"))
    now[0] += 30
    attempts.take(_request("203.0.113.1"))
    with pytest.raises(RateLimitExceededError) as refused:
        attempts.take(_request("203.0.113.1"))
    assert refused.value.retry_after == pytest.approx(30.0)  # until the first failure leaves the window
    attempts.give_back(attempts.take(_request("203.0.113.2")))  # another address is not refused
    now[0] += 30.5
    attempts.give_back(attempts.take(_request("203.0.113.1")))  # one failure left in the window: below the limit
    attempts.take(_request("203.0.113.1"))  # the one given back is not counted
    with pytest.raises(RateLimitExceededError):
        attempts.take(_request("203.0.113.1"))


def _post(proxy: Proxy, path: str, content_type: str, key: str | None = None) -> httpx2.Response:
    headers = {"content-type": content_type, **({"authorization": f"Bearer {key}"} if key else {})}
    body = json.dumps({"name": "team-b"} if path == "/admin/keys" else {"model": MODEL, "messages": HELLO}).encode()
    return httpx2.post(f"{proxy.url}{path}", content=body, headers=headers, timeout=30)


def _unsupported(answer: httpx2.Response) -> None:
    assert answer.status_code == 415, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unsupported_media_type"


@pytest.mark.parametrize("content_type", ["application/xml", "text/xml; charset=utf-8", "application/octet-stream"])
def test_a_body_that_is_not_sent_as_json_is_refused_415_in_every_mode(keyed: Proxy, upstream: InstantUpstream, content_type: str) -> None:
    _unsupported(_post(keyed, "/v1/chat/completions", content_type, TEAM_KEY))
    _unsupported(_post(keyed, "/admin/keys", content_type, ADMIN))
    assert _admin(keyed, ADMIN).json()["data"] == []  # nothing created
    with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0)) as local:  # no tenant keys
        _unsupported(_post(local, "/v1/chat/completions", content_type))
        assert _post(local, "/v1/chat/completions", "application/json; charset=utf-8").status_code == 200
        assert _post(local, "/v1/chat/completions", "Application/JSON").status_code == 200
    assert _post(keyed, "/admin/keys", "application/json", ADMIN).status_code == 201


@dataclass
class TenantKeyed:
    """The proxy with a real key store (SQLite or Redis) behind its tenant keys, its clock of wrong keys, and the
    keys the store was asked to look up."""

    proxy: Proxy
    secret: str  # team-a's live key
    now: list[float]  # the clock of the proxy's count of wrong tenant keys
    lookups: list[int]  # one entry per key-store lookup


@pytest.fixture
def tenant_keyed(upstream: InstantUpstream, store_at: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TenantKeyed]:
    """`TenantKeyed`, once with the key store on an SQLite file and once on a real redis-server."""
    with open_key_store(store_at("keys.db"), admin_key=ADMIN) as store:
        secret, _ = store.create("team-a")
        lookups: list[int] = []
        monkeypatch.setattr(store, "match", _counted(store, lookups))  # what the authenticator asks (a revoked key's record too)
        tenants = TenantOptions(TenantDefaults())
        app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, tenants), keys=store)
        now = [1000.0]
        app.state.proxy.key_attempts = FailedAttempts(clock=lambda: now[0])
        with Proxy(built=app) as running:
            yield TenantKeyed(running, secret, now, lookups)
        tenants.close()


def _counted(store: KeyStore, lookups: list[int]) -> Callable[[str | None], KeyRecord | None]:
    """The store's own look-up of a presented key (`match`), counted."""
    assert isinstance(store, KeyStoreBase)
    looked_up = store.match

    def lookup(presented: str | None) -> KeyRecord | None:
        """Count the lookup, then ask the store."""
        lookups.append(1)
        return looked_up(presented)

    return lookup


def _v1(proxy: Proxy, path: str, key: str | None, client: str | None = None) -> httpx2.Response:
    """A /v1 request presenting `key` (None: none), from `client` when given (X-Forwarded-For)."""
    headers = {**({"authorization": f"Bearer {key}"} if key else {}), **({"x-forwarded-for": client} if client else {})}
    if path == "/models":
        return httpx2.get(f"{proxy.base_url}{path}", headers=headers, timeout=30)
    return proxy.post(path, json.dumps({"model": MODEL, "messages": HELLO, "input": "hi", "call_id": "c"}).encode(), **headers)


V1_PATHS = ("/chat/completions", "/completions", "/embeddings", "/responses", "/models", "/feedback")


def test_unknown_tenant_keys_past_the_limit_are_refused_429_before_the_key_store_is_asked(tenant_keyed: TenantKeyed) -> None:
    proxy, secret = tenant_keyed.proxy, tenant_keyed.secret
    for _ in range(40):  # no key at all guesses nothing: not counted
        assert _v1(proxy, "/chat/completions", None).status_code == 401
    for guess in range(MAX_FAILURES):  # keys the store could hold: each one hashed and looked up
        wrong = f"bb-{guess:0{KEY_LENGTH - 3}d}"
        assert _v1(proxy, V1_PATHS[guess % len(V1_PATHS)], wrong).status_code == 401
    asked = len(tenant_keyed.lookups)
    for path in V1_PATHS:
        _refused_429(_v1(proxy, path, "bb-" + "x" * (KEY_LENGTH - 3)), secret)
        _refused_429(_v1(proxy, path, secret), secret)  # even the right key: it is not looked up
    assert len(tenant_keyed.lookups) == asked  # the key store was not asked (no hash, no Redis round trip)
    assert _v1(proxy, "/chat/completions", secret, ELSEWHERE).status_code == 200  # another address is let in
    admin = httpx2.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert admin.status_code == 200  # the admin's own count is apart from the tenants'
    counted = [line for line in admin.text.splitlines() if line.startswith("blackbox_proxy_requests_total{") and 'status="429"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2 * len(V1_PATHS)
    assert secret not in admin.text


def test_an_address_past_the_limit_is_let_in_again_once_its_failures_leave_the_window(tenant_keyed: TenantKeyed) -> None:
    proxy, secret = tenant_keyed.proxy, tenant_keyed.secret
    for guess in range(MAX_FAILURES):
        assert _v1(proxy, "/models", f"wrong-{guess}").status_code == 401  # not even the shape of a key: counted too
    refused = _v1(proxy, "/models", secret)
    _refused_429(refused, secret)
    assert refused.headers["retry-after"] == str(int(WINDOW_S))
    tenant_keyed.now[0] += WINDOW_S - 1
    _refused_429(_v1(proxy, "/models", secret), secret)
    tenant_keyed.now[0] += 1
    assert _v1(proxy, "/chat/completions", secret).status_code == 200


@dataclass
class Workers:
    """Two proxy apps (two workers) over one real key store (SQLite or Redis), each with its own store object."""

    first: Proxy
    second: Proxy
    secret: str  # team-a's live key


@pytest.fixture
def workers(upstream: InstantUpstream, store_at: Callable[[str], str]) -> Iterator[Workers]:
    """`Workers`, once with the key store on an SQLite file and once on a real redis-server."""
    where = store_at("keys.db")
    with open_key_store(where, admin_key=ADMIN) as one, open_key_store(where, admin_key=ADMIN) as other:
        secret, _ = one.create("team-a")
        apps, tenants = [], []
        for store in (one, other):
            options = TenantOptions(TenantDefaults())
            tenants.append(options)
            apps.append(create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, options),
                                   routes=admin_routes(store), keys=store, tenants=options))
        with Proxy(built=apps[0]) as first, Proxy(built=apps[1]) as second:
            yield Workers(first, second, secret)
        for options in tenants:
            options.close()


def _metrics(proxy: Proxy, key: str) -> httpx2.Response:
    return httpx2.get(f"{proxy.url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_wrong_tenant_keys_are_counted_in_each_worker_and_never_in_the_admins_window(workers: Workers) -> None:
    first, second, secret = workers.first, workers.second, workers.secret
    for guess in range(MAX_FAILURES):
        assert _v1(first, "/models", f"bb-{guess:0{KEY_LENGTH - 3}d}").status_code == 401
    _refused_429(_v1(first, "/models", secret), secret)  # this worker's own count is full
    assert _v1(second, "/chat/completions", secret).status_code == 200  # a tenant key is 256 random bits: no read per request to share it
    for worker in (first, second):  # the admin's shared count holds none of them
        assert _metrics(worker, ADMIN).status_code == 200
        assert _admin(worker, ADMIN).status_code == 200


def test_workers_sharing_a_key_store_share_one_limit_of_wrong_admin_keys(workers: Workers) -> None:
    first, second, secret = workers.first, workers.second, workers.secret
    for guess in range(6):
        assert _admin(first, f"wrong-{guess}").status_code == 401
    for guess in range(6, MAX_FAILURES - 1):
        assert _metrics(second, f"wrong-{guess}").status_code == 401
    assert httpx2.post(f"{second.url}/login", content="key=wrong", headers=FORM, timeout=30).status_code == 401
    _refused_429(_admin(second, "wrong-again"))  # the 11th, at the other worker
    for worker in (first, second):  # at both, even the right key
        _refused_429(_admin(worker, ADMIN))
        _refused_429(_metrics(worker, ADMIN))
        _refused_429(httpx2.post(f"{worker.url}/login", content=f"key={ADMIN}", headers=FORM, timeout=30))
    for worker in (first, second):  # the tenants' count is apart from the admin's
        assert _v1(worker, "/chat/completions", secret).status_code == 200


def test_while_the_shared_store_is_down_each_worker_counts_in_its_own_memory(upstream: InstantUpstream, redis_server: RedisServer) -> None:
    """Neither fail closed (everyone locked out) nor open (no bound): the process's own count, as without a shared
    store; a tenant key gets the 503 of its lookup, and the admin key, compared without the store, still opens /metrics."""
    with open_key_store(redis_server.url, admin_key=ADMIN) as store:
        secret, _ = store.create("team-a")
        options = TenantOptions(TenantDefaults())
        app = create_app(ProxyConfig(upstream=upstream.url, max_retries=0), authenticate=key_authenticator(store, options), keys=store, tenants=options)
        with Proxy(built=app) as proxy:
            redis_server.stop()
            assert _v1(proxy, "/models", secret).status_code == 503
            assert _metrics(proxy, ADMIN).status_code == 200
            for guess in range(MAX_FAILURES):
                assert _metrics(proxy, f"wrong-{guess}").status_code == 401
            _refused_429(_metrics(proxy, ADMIN))
            _refused_429(httpx2.get(f"{proxy.url}/", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30))
            redis_server.start()
            assert _metrics(proxy, ADMIN).status_code == 200  # the store answers again: its count, which holds none
        options.close()



BURST = 4 * MAX_FAILURES  # wrong keys sent at once from one address


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _burst(url: str, headers: Callable[[int], dict[str, str]], content: bytes | None = None) -> list[int]:
    """The statuses of BURST requests sent at once from one address (a POST of `content` when given), each with its own headers."""

    async def send() -> list[int]:
        async with httpx2.AsyncClient(timeout=60, limits=httpx2.Limits(max_connections=BURST)) as client:
            sent = (client.request("GET" if content is None else "POST", url, headers=headers(n), content=content) for n in range(BURST))
            return [answer.status_code for answer in await asyncio.gather(*sent)]

    return asyncio.run(send())


def _at_most_the_limit_compared(statuses: list[int]) -> None:
    """Each attempt is taken before its key is compared: MAX_FAILURES compared (401), every other one refused (429)."""
    assert sorted(statuses) == [401] * MAX_FAILURES + [429] * (BURST - MAX_FAILURES), statuses


def test_a_burst_of_wrong_admin_keys_at_once_compares_no_more_than_the_limit(workers: Workers) -> None:
    _at_most_the_limit_compared(_burst(f"{workers.first.url}/admin/keys", lambda n: _bearer(f"wrong-{n}")))
    _refused_429(_metrics(workers.second, ADMIN))  # the shared count holds them all


def test_a_burst_of_wrong_keys_at_login_compares_no_more_than_the_limit(keyed: Proxy) -> None:
    _at_most_the_limit_compared(_burst(f"{keyed.url}/login", lambda n: FORM, b"key=wrong"))


def test_a_burst_of_unknown_tenant_keys_at_once_looks_up_no_more_than_the_limit(tenant_keyed: TenantKeyed) -> None:
    _at_most_the_limit_compared(_burst(f"{tenant_keyed.proxy.base_url}/models", lambda n: _bearer(f"bb-{n:0{KEY_LENGTH - 3}d}")))
    assert len(tenant_keyed.lookups) == MAX_FAILURES


def test_a_burst_of_right_tenant_keys_at_once_is_all_served_not_refused_as_failed_attempts(
    tenant_keyed: TenantKeyed, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service sends many requests at once from one address: each right key's attempt, taken before its lookup,
    holds the address's place only until the lookup finds it right; the requests past the limit wait for those
    places rather than being refused. (The lookups are held until MAX_FAILURES are in flight together.)"""
    together = threading.Barrier(MAX_FAILURES, timeout=60)
    proxy = tenant_keyed.proxy.server.config.app.state.proxy
    looked_up = proxy.authenticate

    def held(presented: str | None) -> Any:
        together.wait()
        return looked_up(presented)

    monkeypatch.setattr(proxy, "authenticate", held)
    body = json.dumps({"model": MODEL, "messages": HELLO}).encode()
    statuses = _burst(f"{tenant_keyed.proxy.base_url}/chat/completions", lambda n: {**_bearer(tenant_keyed.secret), **JSON}, body)
    assert statuses == [200] * BURST


@pytest.mark.parametrize("route", ["/admin/keys", "/metrics"])
def test_a_burst_of_right_admin_keys_at_once_is_all_served_not_refused_as_failed_attempts(workers: Workers, route: str) -> None:
    """An admin script or scraper sends many requests at once from one address: with the count in the shared store,
    a right admin key never takes one of the address's places, so none of them is answered 429."""
    assert _burst(f"{workers.first.url}{route}", lambda n: _bearer(ADMIN)) == [200] * BURST
    assert _admin(workers.second, "wrong").status_code == 401  # and a wrong key is still counted


def test_a_right_admin_key_gives_its_attempt_back(workers: Workers) -> None:
    first, second = workers.first, workers.second
    for guess in range(MAX_FAILURES - 1):
        assert _admin(first, f"wrong-{guess}").status_code == 401
    for _ in range(2 * MAX_FAILURES):  # right keys, here and at the other worker: none of them uses up an attempt
        assert _admin(first, ADMIN).status_code == 200
        assert _metrics(second, ADMIN).status_code == 200
    assert httpx2.post(f"{second.url}/login", content=f"key={ADMIN}", headers=FORM, timeout=30).status_code == 303  # logged in
    assert _admin(second, "wrong-last").status_code == 401  # the tenth
    _refused_429(_admin(first, ADMIN))


def test_a_right_tenant_key_gives_its_attempt_back(tenant_keyed: TenantKeyed) -> None:
    proxy, secret = tenant_keyed.proxy, tenant_keyed.secret
    for guess in range(MAX_FAILURES - 1):
        assert _v1(proxy, "/models", f"wrong-{guess}").status_code == 401
    for _ in range(2 * MAX_FAILURES):
        assert _v1(proxy, "/chat/completions", secret).status_code == 200
    assert _v1(proxy, "/models", "wrong-last").status_code == 401  # the tenth
    _refused_429(_v1(proxy, "/models", secret), secret)
