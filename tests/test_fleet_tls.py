"""The fleet's stores against servers that demand TLS and a password, as managed Redis and PostgreSQL do: a real
redis-server on a TLS-only port with `--requirepass`, and a real PostgreSQL with scram-sha-256 and `ssl = on`, each
with a certificate from a CA made for the test. The cache, ledger, rate limits and key store work over
`rediss://...?ssl_ca_certs=CA`; a certificate the URL does not trust is a ConfigError at open and, met after open,
fails closed (a budgeted call refused unsent, a cache miss with one warning). The PostgreSQL call log writes and reads
with sslmode=require and verify-full; a refused password or an untrusted certificate is a ConfigError at open. No
message holds a password."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from servers import CountingRelay, InstantUpstream, PostgresServer, RedisServer, make_certificates

from blackbox_sdk import Budget, ConfigError, OpenAI, RateLimitExceededError, RateLimits, StoreUnavailableError
from blackbox_sdk.budget import RedisLedger
from blackbox_sdk.cache import Cache
from blackbox_sdk.call_log import open_call_log
from blackbox_sdk.limits import RedisWindow
from blackbox_sdk.limits._window import Window
from blackbox_sdk.serve._key_stores import open_key_store

PASSWORD = "tls-Pa55word-r3dis"
PG_PASSWORD = "tls-Pa55word-pg"
PRICES = {"unit": {"input": 1.0, "output": 10.0}}  # USD per million tokens
ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "unit", "usage": {"prompt_tokens": 9, "completion_tokens": 2},
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}]}
UNTRUSTED = "the server's TLS certificate is not one the URL trusts (give the CA that signed it as ?ssl_ca_certs=PATH)"
STORES: dict[str, Callable[[str], Any]] = {
    "cache": Cache,
    "ledger": lambda url: Budget(prices=PRICES, total_usd=1.0, ledger=url),
    "rate-limit store": lambda url: RateLimits(rpm=10, store=url),
    "key store": open_key_store,
}
WINDOW = Window(100, None, 60.0)
# Each Redis store that retries a dropped connection (twice), and one use of it that asks the server.
RETRYING: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]] = {
    "ledger": (RedisLedger, lambda ledger: ledger.outstanding()),
    "rate-limit store": (RedisWindow, lambda window: window.try_admit("scope", "call-1", 1, WINDOW, None)),
    "rate-limit store, asyncio": (RedisWindow, lambda window: asyncio.run(window.atry_admit("scope", "call-2", 1, WINDOW, None))),
}


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    """A redis-server that takes only TLS (a test CA's certificate) and a password; `.url` is rediss://:PW@...?ssl_ca_certs=CA."""
    server = RedisServer(password=PASSWORD, tls=True).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL that asks TCP clients for a password (scram-sha-256) and takes TLS (a test CA's certificate)."""
    server = PostgresServer(password=PG_PASSWORD, tls=True).start()
    yield server
    server.close()


@pytest.fixture
def relayed_tls() -> Iterator[tuple[RedisServer, CountingRelay, str]]:
    """A TLS redis-server of its own (its certificate may be replaced), a relay counting the connections made to it, and
    a URL to the relay that trusts the server's first CA from a copy of its own, which a new CA does not replace."""
    server = RedisServer(password=PASSWORD, tls=True).start()
    relay = CountingRelay(server.port)
    trusted = server.folder / "trusted-ca.pem"
    shutil.copy(server.ca, trusted)
    yield server, relay, server.url.replace(f":{server.port}/", f":{relay.port}/").replace(str(server.ca), str(trusted))
    relay.close()
    server.close()


def _new_certificate(server: RedisServer) -> None:
    """Restart the server with a certificate from another CA, one the stores' URLs do not trust."""
    server.stop()
    make_certificates(server.folder)
    server.start()


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[None]]]:
    """An instant upstream's /v1 URL and the list of requests it was sent."""
    sent: list[None] = []
    served = InstantUpstream(ANSWER, before=lambda: sent.append(None))
    yield served.url, sent
    served.close()


def _ask(client: OpenAI, text: str) -> Any:
    """One chat call of at most 4 tokens."""
    return client.chat.completions.create(model="unit", messages=[{"role": "user", "content": text}], max_tokens=4)


def _refusal(call: Callable[[], object], kind: type[Exception]) -> str:
    """The error of ``kind`` that ``call`` raises, as text."""
    with pytest.raises(kind) as refused:
        call()
    return str(refused.value)


def test_two_hosts_share_cache_ledger_and_rate_limit_over_tls_with_a_password(tls_redis: RedisServer, upstream: tuple[str, list[None]]) -> None:
    base_url, sent = upstream
    budgets = [Budget(prices=PRICES, total_usd=1.0, ledger=tls_redis.url) for _ in range(2)]
    hosts = [OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, cache=tls_redis.url, budget=budget,
                    rate_limit=RateLimits(rpm=2, store=tls_redis.url)) for budget in budgets]
    first, second = _ask(hosts[0], "Hi"), _ask(hosts[1], "Hi")
    assert not first.blackbox.cache_hit and second.blackbox.cache_hit and len(sent) == 1  # a hit across the two clients
    _ask(hosts[1], "Another")  # the window's second call
    with pytest.raises(RateLimitExceededError):  # the third in the minute, whichever host sends it
        _ask(hosts[0], "A third")
    reports = [budget.report() for budget in budgets]
    assert reports[0].spent_usd == reports[1].spent_usd == pytest.approx(2 * (9 * 1.0 + 2 * 10.0) / 1e6)
    assert reports[0].calls == 2 and reports[0].outstanding_reservations == 0 and len(sent) == 2
    for client in hosts:
        client.close()


def test_the_proxys_key_store_works_over_tls_with_a_password(tls_redis: RedisServer) -> None:
    with open_key_store(tls_redis.url) as store:
        secret, record = store.create("tls-tenant")
        assert store.lookup(str(secret)) == record and PASSWORD not in repr(store)


@pytest.mark.parametrize("what", sorted(STORES))
def test_a_certificate_the_url_does_not_trust_is_a_config_error_at_open(tls_redis: RedisServer, what: str) -> None:
    untrusted = tls_redis.url.partition("?")[0]  # no ssl_ca_certs: the system's CAs, which never signed the test CA's certificate
    with pytest.raises(ConfigError) as refused:
        STORES[what](untrusted)
    message = str(refused.value)
    assert message.startswith(f"the {what} URL rediss://:***@127.0.0.1:{tls_redis.port}/0 was refused by the client: {UNTRUSTED}"), message
    assert "CERTIFICATE_VERIFY_FAILED" in message and PASSWORD not in message and refused.value.__cause__ is None


def test_a_certificate_untrusted_after_open_fails_closed_and_says_why(upstream: tuple[str, list[None]], caplog: pytest.LogCaptureFixture) -> None:
    base_url, sent = upstream
    server = RedisServer(password=PASSWORD, tls=True)  # not started yet: each store opens on an outage, not an error
    untrusted = server.url.partition("?")[0]
    budgeted = OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, budget=Budget(prices=PRICES, total_usd=1.0, ledger=untrusted))
    limited = OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, rate_limit=RateLimits(rpm=10, store=untrusted))
    cached = OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, cache=untrusted)
    server.start()  # then the server answers with a certificate the URLs do not trust
    try:
        message = _refusal(lambda: _ask(budgeted, "Hi"), StoreUnavailableError)
        assert UNTRUSTED in message and "which no retry mends" in message and PASSWORD not in message, message
        message = _refusal(lambda: _ask(limited, "Hi"), ConfigError)  # the window opens (and checks its URL) at the first call
        assert f"was refused by the client: {UNTRUSTED}" in message and PASSWORD not in message, message
        assert sent == []  # nothing sent unbudgeted or unlimited
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            answers = [_ask(cached, "Hi") for _ in range(2)]
        warnings = [entry.getMessage() for entry in caplog.records if entry.levelno >= logging.WARNING]
        assert not any(answer.blackbox.cache_hit for answer in answers) and len(sent) == 2  # a miss each time, answered
        assert len(warnings) == 1 and UNTRUSTED in warnings[0] and PASSWORD not in warnings[0], warnings
    finally:
        for client in (budgeted, limited, cached):
            client.close()
        server.close()


@pytest.mark.parametrize("store", sorted(RETRYING))
def test_a_certificate_untrusted_after_open_is_tried_once_while_a_drop_is_retried(
    relayed_tls: tuple[RedisServer, CountingRelay, str], store: str,
) -> None:
    server, relay, url = relayed_tls
    make, use = RETRYING[store]
    opened = make(url)
    use(opened)  # open and answering
    opened.close()  # its connections closed: each try below is a new connection, which the relay counts
    server.stop()  # a connection dropped as it opens (the relay takes it, the server does not): tried again twice
    before = relay.connections
    with pytest.raises(StoreUnavailableError):
        use(opened)
    assert relay.connections - before == 3
    _new_certificate(server)
    before = relay.connections
    message = _refusal(lambda: use(opened), StoreUnavailableError)
    assert relay.connections - before == 1  # one try: no retry mends a certificate the URL does not trust
    assert UNTRUSTED in message and "which no retry mends" in message and PASSWORD not in message, message
    opened.close()


def test_a_cache_whose_certificate_is_untrusted_after_open_misses_after_one_try(
    relayed_tls: tuple[RedisServer, CountingRelay, str], caplog: pytest.LogCaptureFixture,
) -> None:
    server, relay, url = relayed_tls
    with Cache(url) as cache:
        key = cache.key(route="chat", endpoint="e", params={"n": 1})
        cache.extend(key, [{"text": "kept"}])
        _new_certificate(server)
        before = relay.connections
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            assert cache.get(key) == []
        assert relay.connections - before == 1  # the cache's one retry of a drop is not spent on it
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert UNTRUSTED in warning and "which no retry mends" in warning and PASSWORD not in warning, warning


@pytest.mark.parametrize("query", ["?sslmode=require", "?sslmode=verify-full&sslrootcert={ca}"], ids=["require", "verify-full"])
def test_the_call_log_writes_and_reads_over_tls_with_a_password(tls_postgres: PostgresServer, upstream: tuple[str, list[None]], query: str) -> None:
    url = tls_postgres.url + query.format(ca=tls_postgres.ca)
    with open_call_log(url) as log:
        before = log.stats()["calls"]
    with OpenAI(base_url=upstream[0], api_key="sk-test", max_retries=0, log=url) as client:
        call_id = _ask(client, "Hi").blackbox.call_id
    with open_call_log(url) as log:
        assert log.get(call_id).model == "unit" and PG_PASSWORD not in repr(log)
        assert log.stats()["calls"] == before + 1
    shown = subprocess.run([sys.executable, "-m", "blackbox_sdk", "stats", "--log", url, "--json"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["calls"] == before + 1


@pytest.mark.parametrize(("change", "said"), [
    (lambda url: url.replace(PG_PASSWORD, "not-" + PG_PASSWORD), "the server refused the URL's user name or password"),
    (lambda url: url.replace(f":{PG_PASSWORD}@", "@"), "the server refused the URL's user name or password"),
    (lambda url: url + "?sslmode=verify-full", "its TLS settings do not fit the server"),
    (lambda url: url.replace("@127.0.0.1:", "@db.invalid:") + "?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}", "its TLS settings do not fit"),
], ids=["wrong-password", "no-password", "verify-full-without-the-ca", "another-hosts-certificate"])
def test_a_url_the_database_refuses_is_a_config_error_at_open_without_the_password(
    tls_postgres: PostgresServer, change: Callable[[str], str], said: str,
) -> None:
    url = change(tls_postgres.url).format(ca=tls_postgres.ca)
    with pytest.raises(ConfigError) as refused:
        open_call_log(url)
    message = str(refused.value)
    assert f"can't open the call log postgresql://postgres@{url.split('@')[1].split('/')[0]}/postgres: {said}" in message, message
    assert PG_PASSWORD not in message and refused.value.__cause__ is None
    shown = subprocess.run([sys.executable, "-m", "blackbox_sdk", "stats", "--log", url], capture_output=True, text=True, timeout=120)
    assert shown.returncode != 0 and said in shown.stderr and PG_PASSWORD not in shown.stderr + shown.stdout


def test_sslmode_require_on_a_server_without_tls_is_a_config_error_at_open(postgres_server: PostgresServer) -> None:
    with pytest.raises(ConfigError, match="its TLS settings do not fit the server.*server does not support SSL") as refused:
        open_call_log(postgres_server.url + "?sslmode=require")
    assert "the server takes no TLS connections" in str(refused.value) and "sslrootcert" not in str(refused.value)  # no CA would mend it
