"""The proxy's `x-ratelimit-*` headers where a rate limit decided a request: a 429 for a call larger than the whole
tpm, a key's window that admitted a call the proxy's window then refused, and a proxy window of another length
than a key's (whose tpm still caps the call's output): the proxy under uvicorn, over real HTTP, each shared window
in a file and in a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from servers import InstantUpstream, Proxy

from blackbox_sdk.serve import ProxyConfig, open_key_store
from blackbox_sdk.serve._key_tenants import TenantDefaults, TenantOptions, key_authenticator

MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hi"}]
ANSWER = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[InstantUpstream]:
    served = InstantUpstream(ANSWER)
    yield served
    served.close()


def _ask(proxy: Proxy, key: str | None = None, **fields: Any) -> httpx2.Response:
    """A chat request over HTTP (with the key's bearer, when given)."""
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return proxy.post("/chat/completions", json.dumps({"model": MODEL, "messages": HELLO, **fields}).encode(), **headers)


def test_a_call_larger_than_the_whole_tpm_is_refused_with_the_windows_headers(upstream: InstantUpstream, store_at: Callable[[str], str]) -> None:
    config = ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit={"rpm": 5, "tpm": 300, "store": store_at("rate.db")})
    with Proxy(config) as running:
        admitted = _ask(running, max_tokens=4)
        too_large = _ask(running, max_tokens=1000)
    assert admitted.status_code == 200 and too_large.status_code == 429 and too_large.headers["x-should-retry"] == "false"
    used = 300 - int(admitted.headers["x-ratelimit-remaining-tokens"])
    assert (too_large.headers["x-ratelimit-limit-tokens"], too_large.headers["x-ratelimit-limit-requests"]) == ("300", "5")
    assert too_large.headers["x-ratelimit-remaining-requests"] == "4"  # the window holds the first call only: the refusal took nothing
    assert int(too_large.headers["x-ratelimit-remaining-tokens"]) >= 300 - used  # the first call's worst case, or what it used


def test_a_keys_slot_given_back_when_the_proxys_window_refuses_is_not_counted_in_the_headers(
    upstream: InstantUpstream, store_at: Callable[[str], str]
) -> None:
    """team-b's call fills the proxy-wide window (rpm=1); team-a's own window (its tpm) then admits a call that the proxy's
    refuses, and team-a's slot is given back: the tokens headers (team-a's window, the only one counting tokens) say
    what that window holds after the refusal, nothing, rather than counting the slot given back."""
    rate_limit = {"rpm": 1, "per": "client", "store": store_at("rate.db")}
    tenants = TenantOptions(TenantDefaults.from_proxy(rate_limit=rate_limit))
    try:
        with open_key_store(store_at("keys.db")) as keys:
            secrets = {name: str(keys.create(name, tpm=10_000)[0]) for name in ("team-a", "team-b")}
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit), authenticate=key_authenticator(keys, tenants)) as running:
                first = _ask(running, secrets["team-b"], max_tokens=4)
                refused = _ask(running, secrets["team-a"], max_tokens=4)
    finally:
        tenants.close()
    assert first.status_code == 200 and refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
    assert (refused.headers["x-ratelimit-limit-requests"], refused.headers["x-ratelimit-remaining-requests"]) == ("1", "0")  # the proxy's
    shown = {name: refused.headers[name] for name in ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")}
    assert shown == {"x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "10000", "x-ratelimit-reset-tokens": "0s"}


def test_a_proxy_window_of_another_length_than_a_keys_still_caps_the_calls_output(upstream: InstantUpstream, store_at: Callable[[str], str]) -> None:
    """A key with an rpm of its own (a one-minute window) under a proxy's tpm over 10 s: a call with no max_tokens is
    admitted at the proxy's default output cap, as it would be without the key, so it never fits tpm=300."""
    rate_limit = {"tpm": 300, "window_s": 10.0, "store": store_at("rate.db")}
    tenants = TenantOptions(TenantDefaults.from_proxy(rate_limit=rate_limit))
    try:
        with open_key_store(store_at("keys.db")) as keys:
            secret = str(keys.create("team-a", rpm=5)[0])
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit), authenticate=key_authenticator(keys, tenants)) as running:
                uncapped = _ask(running, secret)
                capped = _ask(running, secret, max_tokens=4)
    finally:
        tenants.close()
    assert uncapped.status_code == 429, uncapped.text  # 4096 output tokens can never fit 300
    assert uncapped.json()["error"]["type"] == "tokens" and uncapped.headers["x-ratelimit-limit-tokens"] == "300"
    assert capped.status_code == 200 and capped.headers["x-ratelimit-reset-tokens"] == "10s"
    assert (capped.headers["x-ratelimit-limit-requests"], capped.headers["x-ratelimit-remaining-requests"]) == ("5", "4")


def test_a_call_the_budget_refuses_after_its_rate_admission_is_not_counted_in_the_headers(
    upstream: InstantUpstream, store_at: Callable[[str], str], tmp_path: Path
) -> None:
    """Admitted by the rate window, then refused by the budget (429 insufficient_quota): its slot is given back, and the
    headers show the window without it."""
    budget = {"total_usd": 0.000001, "prices": {MODEL: {"input": 1000.0, "output": 1000.0}}, "ledger": str(tmp_path / "ledger.db")}
    config = ProxyConfig(upstream=upstream.url, max_retries=0, budget=budget, rate_limit={"rpm": 5, "tpm": 300, "store": store_at("rate.db")})
    with Proxy(config) as running:
        refused = _ask(running, max_tokens=4)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    shown = {name: refused.headers[name] for name in refused.headers if name.startswith("x-ratelimit-")}
    assert shown == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "0s",
        "x-ratelimit-limit-tokens": "300", "x-ratelimit-remaining-tokens": "300", "x-ratelimit-reset-tokens": "0s",
    }


def test_a_keys_own_window_in_this_process_shows_beside_the_proxys_of_the_same_name(upstream: InstantUpstream, tmp_path: Path) -> None:
    """The proxy's window per key in this process (no store) and a key's own, inside it, both name the bucket
    `key:team-a`: the key's tpm, which only its own window counts, still gets its headers."""
    rate_limit = {"rpm": 3, "per": "key"}
    tenants = TenantOptions(TenantDefaults.from_proxy(rate_limit=rate_limit))
    try:
        with open_key_store(tmp_path / "keys.db") as keys:
            secret = str(keys.create("team-a", tpm=1000)[0])
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit), authenticate=key_authenticator(keys, tenants)) as running:
                answered = _ask(running, secret, max_tokens=4)
    finally:
        tenants.close()
    assert answered.status_code == 200
    assert (answered.headers["x-ratelimit-limit-requests"], answered.headers["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert answered.headers["x-ratelimit-limit-tokens"] == "1000" and 900 < int(answered.headers["x-ratelimit-remaining-tokens"]) < 1000


def test_a_slot_given_back_leaves_the_reset_of_the_calls_still_in_the_window(upstream: InstantUpstream, store_at: Callable[[str], str]) -> None:
    """team-b's call enters the proxy-wide window at t=1000; at t=1030 team-a's call is admitted there, then refused by
    team-a's budget and its slot given back: the window holds team-b's call alone, empty again in 30 s, not a minute."""
    now = [1000.0]
    rate_limit = {"rpm": 5, "per": "client", "store": store_at("rate.db"), "clock": lambda: now[0]}
    budget = {"prices": {MODEL: {"input": 1000.0, "output": 1000.0}}}
    tenants = TenantOptions(TenantDefaults.from_proxy(budget=budget, rate_limit=rate_limit))
    try:
        with open_key_store(store_at("keys.db")) as keys:
            secrets = {"team-a": str(keys.create("team-a", budget_usd=0.000001)[0]), "team-b": str(keys.create("team-b")[0])}
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit), authenticate=key_authenticator(keys, tenants)) as running:
                first = _ask(running, secrets["team-b"], max_tokens=4)
                now[0] = 1030.0
                refused = _ask(running, secrets["team-a"], max_tokens=4)
    finally:
        tenants.close()
    assert first.status_code == 200 and first.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    shown = {name: refused.headers[name] for name in ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")}
    assert shown == {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "30s"}


def test_a_keys_window_and_the_proxys_of_the_same_name_and_limits_in_two_stores_stay_apart(upstream: InstantUpstream, tmp_path: Path) -> None:
    """The proxy's window per key in this process and a key's own (rpm=3 both, the bucket `key:team-a` both): the key's
    second call, admitted in both and refused by its budget, gives each window its own slot back, so the headers show
    the first call still counted, not both slots taken from one window's numbers (the clock stands still: a minute left)."""
    rate_limit = {"rpm": 3, "per": "key", "clock": lambda: 1000.0}
    budget = {"prices": {MODEL: {"input": 1000.0, "output": 1000.0}}}
    tenants = TenantOptions(TenantDefaults.from_proxy(budget=budget, rate_limit=rate_limit))
    try:
        with open_key_store(tmp_path / "keys.db") as keys:
            secret = str(keys.create("team-a", rpm=3, budget_usd=0.1)[0])
            with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, rate_limit=rate_limit), authenticate=key_authenticator(keys, tenants)) as running:
                first = _ask(running, secret, max_tokens=4)
                refused = _ask(running, secret, max_tokens=100)  # its worst case, 100 output tokens, is past the budget left
    finally:
        tenants.close()
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "2"
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert (refused.headers["x-ratelimit-remaining-requests"], refused.headers["x-ratelimit-reset-requests"]) == ("2", "1m0s")
