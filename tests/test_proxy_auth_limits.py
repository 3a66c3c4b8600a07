"""Failed authentication attempts are bounded per client address (/login, /admin, the admin gate), and a
body sent as anything but JSON is refused with 415 before it is read, with or without tenant keys: the
proxy under uvicorn on loopback, called over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from servers import InstantUpstream, Proxy
from starlette.requests import Request

from blackbox_sdk import RateLimitExceededError
from blackbox_sdk.serve import ProxyConfig, Tenant, admin_routes, create_app, open_key_store
from blackbox_sdk.serve._attempts import MAX_FAILURES, FailedAttempts

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


def _refused_429(answer: httpx2.Response) -> None:
    """OpenAI's 429 body with a Retry-After of whole seconds."""
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
    assert ADMIN not in answer.text


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
    attempts.failed(_request("203.0.113.1"))
    now[0] += 30
    attempts.failed(_request("203.0.113.1"))
    with pytest.raises(RateLimitExceededError) as refused:
        attempts.check(_request("203.0.113.1"))
    assert refused.value.retry_after == pytest.approx(30.0)  # until the first failure leaves the window
    attempts.check(_request("203.0.113.2"))  # another address is not refused
    now[0] += 30.5
    attempts.check(_request("203.0.113.1"))  # one failure left in the window: below the limit


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
