"""Redis URLs, one way for every store: the cache, the ledger, the rate-limit store and the key store refuse
the same bad URLs with a ConfigError that never holds the password, show a URL in one form, and scrub
its password from error texts. A URL the server refuses (its password, its database) is a ConfigError
when the store opens, against a real redis-server; the other tests need none (nothing listens at HOST:
each store's one PING at open finds no server, which is an outage for later, not an error now)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from servers import RedisServer

from blackbox_sdk import ConfigError, StoreUnavailableError
from blackbox_sdk._redis_url import REDIS_OR_UNIX, RedisURL, is_redis_url, redact_url
from blackbox_sdk.budget import Budget, RedisLedger
from blackbox_sdk.cache import Cache
from blackbox_sdk.limits import RateLimits, RedisWindow
from blackbox_sdk.limits import redact_url as limits_redact_url
from blackbox_sdk.limits._window import Window
from blackbox_sdk.local import free_port
from blackbox_sdk.serve._key_stores import RedisKeyStore, open_key_store

PASSWORD = "pw-s3cret"
HOST = f"127.0.0.1:{free_port()}"
BAD = {
    "unsplittable": f"redis://:{PASSWORD}@[::1/0",  # an unclosed IPv6 bracket
    "port": f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
    "port-range": f"redis://:{PASSWORD}@127.0.0.1:70000/0",
    "port-zero": f"redis://:{PASSWORD}@127.0.0.1:0/0",
    "host": f"redis://:{PASSWORD}@:6379/0",
    "no-host": "redis://",
    "database": f"redis://:{PASSWORD}@{HOST}/zero",
    "database-encoded-password": f"redis://user:pw%2Ds3cret@{HOST}/zero",  # the password decodes to PASSWORD
    "query-password": f"rediss://{HOST}/zero?password={PASSWORD}",
    "option": f"redis://:{PASSWORD}@{HOST}/0?no_such_option=1",
    "option-value": f"redis://:{PASSWORD}@{HOST}/0?socket_timeout=abc",
    "tls-option": f"rediss://:{PASSWORD}@{HOST}/0?ssl_cert_reqs=bogus",
    # a password pasted without percent-encoding: urllib ends the host part at its "#", "/" or "?"
    "raw-hash-password": f"redis://:{PASSWORD}#x@{HOST}/0",
    "raw-slash-password": f"redis://user:{PASSWORD}/x@{HOST}/0",
    "raw-question-password": f"redis://:{PASSWORD}?x=1@{HOST}/0",
}
# Each store's constructor, and the word its messages name it by (None: the store's own refusal).
STORES: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "Cache": (Cache, "cache"),
    "Budget": (lambda url: Budget(total_usd=1.0, ledger=url), "ledger"),
    "RedisLedger": (RedisLedger, "ledger"),
    "RateLimits": (lambda url: RateLimits(rpm=1, store=url), "rate-limit store"),
    "RedisWindow": (RedisWindow, "rate-limit store"),
    "RedisKeyStore": (RedisKeyStore, "key store"),
    "open_key_store": (open_key_store, "key store"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("store", sorted(STORES))
def test_each_bad_url_is_a_config_error_for_each_store_without_the_password(store: str, kind: str) -> None:
    make, what = STORES[store]
    with pytest.raises(ConfigError) as refused:
        make(BAD[kind])
    message = str(refused.value)
    assert PASSWORD not in message and "s3cret" not in message, message
    assert f"the {what} URL " in message and " is not valid: " in message, message
    assert refused.value.__cause__ is None  # the driver's error (which may hold the URL) is not chained


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_url_the_server_refuses_is_a_config_error_at_open_without_the_password(store: str, redis_with_password: RedisServer) -> None:
    make, what = STORES[store]
    at = f"127.0.0.1:{redis_with_password.port}"
    refusals = {
        f"redis://:not-{PASSWORD}@{at}/0": f"redis://:***@{at}/0 was refused by the Redis server: its user name or password is wrong",
        f"redis://user:{redis_with_password.password}@{at}/0": f"redis://user:***@{at}/0 was refused by the Redis server: its user name",
        f"redis://{at}/0": f"redis://{at}/0 was refused by the Redis server: the server asks for a password and the URL gives none",
        f"redis://:{redis_with_password.password}@{at}/99": f"redis://:***@{at}/99 was refused by the Redis server: the server has no such database",
    }
    for url, said in refusals.items():
        with pytest.raises(ConfigError) as refused:
            make(url)
        message = str(refused.value)
        assert message.startswith(f"the {what} URL {said}"), message
        assert PASSWORD not in message and "Pa55word" not in message and refused.value.__cause__ is None
    opened = make(redis_with_password.url.replace("/0", "/15"))  # the right password, a database it has: opens
    getattr(opened, "close", lambda: None)()


@pytest.mark.parametrize("database", ["99", "99999999999999999999"], ids=["past-the-last", "past-a-64-bit-integer"])
def test_a_database_the_server_lacks_is_refused_at_open(redis_server: RedisServer, database: str) -> None:
    """Issue: a database number past a 64-bit integer ("value is not an integer or out of range") opened, and every use failed."""
    url = redis_server.url.replace("/0", f"/{database}")  # redis-server has 16 databases: 0 to 15
    for make, what in STORES.values():
        with pytest.raises(ConfigError, match=f"^the {what} URL {url} was refused by the Redis server: the server has no such database"):
            make(url)


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_user_whose_acl_refuses_scripts_or_the_store_s_keys_is_refused_at_open(store: str, redis_server: RedisServer) -> None:
    """Issue: a user without EVALSHA, or without the store's keys, opened, and every call then failed (a budget's refused)."""
    make, what = STORES[store]
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser("noscript", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all", "-@scripting"])
    admin.acl_setuser("otherkeys", enabled=True, passwords=[f"+{PASSWORD}"], keys=["other:*"], commands=["+@all"])
    admin.acl_setuser("everything", enabled=True, passwords=[f"+{PASSWORD}"], keys=["blackbox:*"], commands=["+@all"])
    at = redis_server.url.replace("redis://", f"redis://{{}}:{PASSWORD}@")
    for user, lacks in (("noscript", "'evalsha' command"), ("otherkeys", "access one of the keys")):
        with pytest.raises(ConfigError) as refused:
            make(at.format(user))
        message = str(refused.value)
        assert message.startswith(f"the {what} URL redis://{user}:***@") and f"its user may not run what the {what} needs" in message
        assert lacks in message and "EVALSHA, SCRIPT LOAD" in message and PASSWORD not in message, message
    getattr(make(at.format("everything")), "close", lambda: None)()  # its own keys and scripts: opens
    assert not admin.keys("*")  # the probe left nothing behind
    admin.close()


def test_a_cache_opened_to_read_only_needs_no_scripts_nor_writes(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.acl_setuser("reader", enabled=True, passwords=[f"+{PASSWORD}"], keys=["blackbox:cache:*"], commands=["+ping", "+get", "+info"])
    writer = Cache(redis_server.url)
    key = writer.key(route="chat", endpoint="e", params={"q": 1})
    writer.extend(key, [{"text": "stored"}])
    reader = Cache(redis_server.url.replace("redis://", f"redis://reader:{PASSWORD}@"), mode="read")
    assert reader.get(key) == [{"text": "stored"}]
    replica = RedisServer(options=("--replicaof", "127.0.0.1", str(redis_server.port))).start()
    try:
        Cache(replica.url, mode="read").close()  # a replica serves a reading cache
    finally:
        replica.close()
    admin.close()


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[RedisServer]:
    """A redis-server in cluster mode (no slots assigned: a node a cluster would be made of)."""
    bus = ("--cluster-port", str(free_port()))  # else the port + 10000, past 65535 for a high free port
    server = RedisServer(options=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", *bus)).start()
    yield server
    server.close()


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_redis_cluster_node_or_a_read_only_replica_is_refused_at_open(store: str, cluster_node: RedisServer, redis_server: RedisServer) -> None:
    """Issue: a Cluster URL opened, and the first call failed on a key of another node (the ledger's with a script's traceback)."""
    make, what = STORES[store]
    with pytest.raises(ConfigError, match=f"^the {what} URL {cluster_node.url} was refused by the Redis server: it is a Redis Cluster node"):
        make(cluster_node.url)
    replica = RedisServer(options=("--replicaof", "127.0.0.1", str(redis_server.port))).start()
    try:
        with pytest.raises(ConfigError, match=f"^the {what} URL {replica.url} was refused by the Redis server: it is a read-only replica"):
            make(replica.url)
    finally:
        replica.close()


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_url_that_is_not_redis_is_refused_without_its_password(store: str) -> None:
    make, _ = STORES[store]
    with pytest.raises(ConfigError) as refused:
        make(f"postgresql://user:{PASSWORD}@{HOST}/db")
    assert PASSWORD not in str(refused.value) and "postgresql://" in str(refused.value)


@pytest.mark.parametrize("make", [RedisLedger, lambda url: RateLimits(rpm=1, store=url), RedisWindow, RedisKeyStore])
def test_a_socket_url_is_checked_by_the_stores_that_take_one(make: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigError) as refused:
        make(f"unix://:{PASSWORD}@")  # no socket path (the ledger takes no unix:// at all)
    assert PASSWORD not in str(refused.value)


def test_a_socket_url_with_a_path_is_taken_where_sockets_are() -> None:
    url = f"unix://:{PASSWORD}@/var/run/redis.sock?db=2"
    assert RedisWindow(url).url == RedisKeyStore(url).url == "unix://:***@/var/run/redis.sock?db=2"
    RateLimits(rpm=1, store=url)


def test_every_store_shows_a_url_in_the_same_form() -> None:
    url = f"redis://user:{PASSWORD}@{HOST}/0?password={PASSWORD}&socket_timeout=1"
    shown = f"redis://user:***@{HOST}/0?password=%2A%2A%2A&socket_timeout=1"
    cache, ledger, window, keys = Cache(url), RedisLedger(url), RedisWindow(url), RedisKeyStore(url)
    assert [cache.location, ledger.url, window.url, keys.url] == [shown] * 4
    texts = [repr(cache), repr(Budget(total_usd=1.0, ledger=url)), repr(RateLimits(rpm=1, store=url)), repr(keys)]
    assert all(shown in text and PASSWORD not in text for text in texts), texts
    for store in (cache, ledger, window, keys):
        store.close()


def test_messages_name_the_store_and_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"^the key store URL redis://:\*\*\*@:6379/0 is not valid: it names no host$"):
        RedisURL(f"redis://:{PASSWORD}@:6379/0", "key store")
    with pytest.raises(ConfigError, match=r"^the ledger URL unix:///s.sock is not valid: it must start with redis:// or rediss://$"):
        RedisURL("unix:///s.sock", "ledger")
    with pytest.raises(ConfigError, match="it must start with redis://, rediss:// or unix://$"):
        RedisURL("http://h/0", "rate-limit store", REDIS_OR_UNIX)
    with pytest.raises(ConfigError, match=r"^the cache URL redis://h/0x is not valid: the database after the host must be a number, got '0x'$"):
        RedisURL("redis://h/0x", "cache")
    with pytest.raises(ConfigError, match=r"^the cache URL redis://user@\[::1/0 is not valid: Invalid IPv6 URL$"):
        RedisURL(f"redis://user:{PASSWORD}@[::1/0", "cache")


def test_scrub_takes_out_the_password_raw_and_decoded_but_keeps_the_username() -> None:
    url = RedisURL("redis://default:p%40ss-w0rd@h:6379/0?password=q%20pw+x", "cache")
    text = "user default: p@ss-w0rd / p%40ss-w0rd / q pw x / q%20pw+x / q pw+x"
    assert url.scrub(text) == "user default: *** / *** / *** / *** / ***"
    assert RedisURL("redis://default@h:6379/0", "cache").scrub("default refused") == "default refused"
    assert RedisURL("redis://:secret@h/0", "cache").scrub("secret-longer secret") == "***-longer ***"


def test_scrub_replaces_a_whole_password_before_its_pieces() -> None:
    url = RedisURL("redis://:ab%2Bcd@h/0?password=ab", "cache")  # "ab" is a piece of the decoded "ab+cd"
    assert url.scrub("ab+cd and ab%2Bcd and ab") == "*** and *** and ***"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://user:{PASSWORD}@h:6379/0", "redis://user:***@h:6379/0"),
        (f"redis://:{PASSWORD}@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:@h", "redis://user:***@h"),
        ("redis://h:6379/0?password=top%20secret&db=1", "redis://h:6379/0?password=%2A%2A%2A&db=1"),
        (f"rediss://u:{PASSWORD}@h/0?password={PASSWORD}", "rediss://u:***@h/0?password=%2A%2A%2A"),
        ("redis://user@h:6379/0?socket_timeout=0.5&x=a%20b", "redis://user@h:6379/0?socket_timeout=0.5&x=a%20b"),
        ("unix:///var/run/redis.sock?password=pw&db=2", "unix:///var/run/redis.sock?password=%2A%2A%2A&db=2"),
        (f"redis://:{PASSWORD}@[::1/0?password={PASSWORD}", "redis://[::1/0"),  # urllib can't split it: never raises
        (f"redis://:{PASSWORD}#x@h:6379/0", "redis://:***@h:6379/0"),  # a password not percent-encoded
        (f"rediss://u:{PASSWORD}/x?y@h/0?password={PASSWORD}", "rediss://u:***@h/0?password=%2A%2A%2A"),
        ("redis://h:6379/0?client_name=me@corp", "redis://h:6379/0?client_name=me@corp"),  # an "@" in a query value
        ("unix:///r.sock?password=pw-s3#cret&db=2", "unix:///r.sock?password=%2A%2A%2A#***"),  # a raw "#" in a query password
    ],
)
def test_redact_url_masks_user_part_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert limits_redact_url is redact_url  # the public name is the shared one


def test_is_redis_url() -> None:
    assert is_redis_url("redis://h/0") and is_redis_url("REDISS://h/0")
    assert not any(map(is_redis_url, ["unix:///s.sock", "/tmp/redis://x", "./redis:/h", "redis", None, 5, "postgresql://h/db"]))
    with pytest.raises(ConfigError, match="needs //"):  # a mistyped URL, not a folder named "redis:"
        is_redis_url("redis:/h")


def test_clients_carry_the_stores_options_and_connect_on_first_use() -> None:
    url = RedisURL(f"redis://:{PASSWORD}@{HOST}/3", "cache")
    sync = url.client(retries=1, socket_timeout=0.5)
    assert isinstance(sync, redis.Redis)
    kwargs = sync.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"], kwargs["retry"].get_retries()) == (3, PASSWORD, 0.5, 1)
    for unretried in (url.client(), url.async_client()):  # without retries: none, whatever redis-py's version defaults to
        assert unretried.connection_pool.connection_kwargs["retry"].get_retries() == 0
    made = url.async_client(retries=2, backoff=(0.02, 0.25), decode_responses=True)
    assert isinstance(made, redis.asyncio.Redis)
    kwargs = made.connection_pool.connection_kwargs
    assert kwargs["retry"].get_retries() == 2 and redis.exceptions.ConnectionError in kwargs["retry_on_error"]
    sync.close()


@pytest.mark.parametrize("method", ["client", "async_client"])
def test_a_bad_option_fails_when_the_client_is_made_not_on_first_use(method: str) -> None:
    url = RedisURL(f"redis://:{PASSWORD}@{HOST}/0?socket_timeout=abc&password={PASSWORD}", "rate-limit store")
    with pytest.raises(ConfigError) as refused:
        getattr(url, method)()
    assert "the rate-limit store URL" in str(refused.value) and PASSWORD not in str(refused.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Cache(f"redis://{HOST}/0"),
        lambda: RedisLedger(f"redis://{HOST}/0"),
        lambda: RedisWindow(f"redis://{HOST}/0"),
        lambda: RedisKeyStore(f"redis://{HOST}/0"),
        lambda: RateLimits(rpm=1, store=f"redis://{HOST}/0"),  # refused when built, not at its first call
        lambda: RedisURL(f"redis://{HOST}/0", "rate-limit store").async_client(),
    ],
)
def test_without_redis_py_every_store_names_the_extra(monkeypatch: pytest.MonkeyPatch, make: Callable[[], Any]) -> None:
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what `import redis` meets when it is not installed
    with pytest.raises(ConfigError, match=r"^a Redis .* needs the redis package: pip install 'blackbox-sdk\[redis\]'$"):
        make()


def test_the_core_imports_and_checks_urls_without_redis_py() -> None:
    code = (
        "import sys\n"
        "import blackbox_sdk, blackbox_sdk.budget, blackbox_sdk.cache, blackbox_sdk.limits, blackbox_sdk._redis_url as u\n"
        "u.RedisURL('redis://:pw@h:6379/0', 'cache')\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


WINDOW = Window(100, None, 60.0)
# Each Redis store that fails closed, and one use of it that asks the server.
IN_USE: dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]] = {
    "ledger": (RedisLedger, lambda ledger: ledger.outstanding()),
    "rate-limit store": (RedisWindow, lambda window: window.try_admit("scope", "call-1", 1, WINDOW, None)),
    "rate-limit store, asyncio": (RedisWindow, lambda window: asyncio.run(window.atry_admit("scope", "call-2", 1, WINDOW, None))),
    "key store": (RedisKeyStore, lambda store: store.list()),
}


def _password_changed(admin: redis.Redis, password: str) -> int:
    """Set the server's password, drop every other connection (as a restart or an ACL change does), and give the
    count of connections the server has taken so far, to count the tries made after it."""
    admin.config_set("requirepass", password)  # this connection stays logged in
    admin.client_kill_filter(_type="normal", skipme=True)
    return int(admin.info("stats")["total_connections_received"])


@pytest.mark.parametrize("store", sorted(IN_USE))
def test_a_password_refused_after_open_fails_closed_at_the_first_try(store: str, redis_server: RedisServer) -> None:
    make, use = IN_USE[store]
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("requirepass", "old-pw-s3cret")
    opened = make(redis_server.url.replace("redis://", "redis://:old-pw-s3cret@"))
    use(opened)  # open and answering
    before = _password_changed(admin, "new-pw-s3cret")
    with pytest.raises(StoreUnavailableError) as refused:
        use(opened)
    assert int(admin.info("stats")["total_connections_received"]) - before == 1  # one try: no retry mends a password
    message = str(refused.value)
    assert "refused the URL's user name or password" in message and "s3cret" not in message, message
    admin.config_set("requirepass", "old-pw-s3cret")  # set back: the store answers again, nothing to reopen
    use(opened)
    opened.close()


def test_a_cache_whose_password_is_refused_misses_with_one_warning_after_one_try(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.config_set("requirepass", "old-pw-s3cret")
    with Cache(redis_server.url.replace("redis://", "redis://:old-pw-s3cret@")) as cache:
        key = cache.key(route="chat", endpoint="e", params={"n": 1})
        cache.extend(key, [{"text": "kept"}])
        before = _password_changed(admin, "new-pw-s3cret")
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            assert cache.get(key) == []
        assert int(admin.info("stats")["total_connections_received"]) - before == 1
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "refused the URL's user name or password" in warning and "s3cret" not in warning, warning


def test_the_rate_limit_store_sends_a_script_again_when_its_connection_drops(redis_server: RedisServer) -> None:
    window, admin = RedisWindow(redis_server.url), redis.Redis(port=redis_server.port)
    assert window.try_admit("scope", "call-1", 1, WINDOW, None).admitted
    admin.execute_command("CLIENT", "PAUSE", "500", "WRITE")  # the next script waits on the server...
    dropped = threading.Timer(0.2, lambda: admin.client_kill_filter(_type="normal", skipme=True))  # ...and its connection drops
    dropped.start()
    started = time.monotonic()
    verdict = window.try_admit("scope", "call-2", 1, WINDOW, None)  # sent again on a new connection (scripts are idempotent)
    dropped.join()
    assert verdict.admitted and 0.2 < time.monotonic() - started < 5
    window.close()


@pytest.mark.parametrize("target", ["redis:/127.0.0.1:6379/0", "redis:127.0.0.1:6379", "REDISS:/user:s3cret@host:6380"])
@pytest.mark.parametrize("opens", [
    pytest.param(lambda target: Cache(target), id="cache"),
    pytest.param(lambda target: Budget(total_usd=1.0, ledger=target), id="budget-ledger"),
    pytest.param(lambda target: RateLimits(rpm=5, store=target), id="rate-limit-store"),
])
def test_a_redis_url_missing_its_slashes_is_refused_not_opened_as_a_folder(target: str, opens: Callable[[str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis:/host (one slash) made a folder named "redis:" in the working folder and a cache or ledger in it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="//") as refused:
        opens(target)
    assert "s3cret" not in str(refused.value) and list(tmp_path.iterdir()) == []


def test_a_folder_named_redis_is_still_a_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for target in ("redis", "./redis:0", "rediska"):
        Cache(target).close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["redis", "redis:0", "rediska"]
