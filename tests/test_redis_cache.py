"""The cache on a real redis-server: buckets, TTL, namespaces, atomic appends from several processes,
planted values, the server killed and restarted; and single flight on both stores (disk and Redis)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import patch

import diskcache  # type: ignore[import-untyped]
import httpx2
import pytest
import redis
from payloads import RunsOnUnpickle
from servers import RedisServer

from blackbox_sdk import CacheError, ConfigError, OpenAI, StoreUnavailableError
from blackbox_sdk.cache import CACHE_FORMAT, Cache, CacheStore

ENDPOINT = "https://api.example.test/v1"
PARAMS: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
PREFIX = "blackbox:cache:"
PASSWORD = "s3cret-pa55word-xyz"


@pytest.fixture
def location(store_at: Callable[[str], str]) -> str:
    """Where the store lives: cache in the test's folder, then a real redis-server."""
    return store_at("cache")


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test's server, to look at and plant what is stored."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def _key(cache: Cache, **changes: Any) -> str:
    """The cache key of PARAMS with some arguments changed."""
    return cache.key(route="chat", endpoint=ENDPOINT, params={**PARAMS, **changes})


def _entry(text: str) -> dict[str, Any]:
    """A stored chat candidate the way a client might shape it."""
    return {"kind": "chat", "response": {"choices": [{"message": {"role": "assistant", "content": text}}]}}


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll until the condition holds or the time is up; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _reachable(cache: Cache) -> bool:
    """Whether the cache's store answers now (stats raise while it is down)."""
    try:
        return cache.stats.keys >= 0
    except CacheError:
        return False


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The SDK's warning messages captured so far."""
    return [r.getMessage() for r in caplog.records if r.name == "blackbox_sdk" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------- the same semantics on both stores


def test_buckets_round_trip_oldest_first_trimmed_and_replaced(location: str) -> None:
    with Cache(location, max_bucket=3) as cache:
        key, other = _key(cache), _key(cache, seed=1)
        assert cache.get(key) == []
        cache.extend(key, [_entry("a")])
        cache.extend(key, [_entry("b"), _entry("c")])
        assert cache.get(key) == [_entry("a"), _entry("b"), _entry("c")]
        cache.extend(key, [_entry("d")])
        assert cache.get(key) == [_entry("b"), _entry("c"), _entry("d")]
        big = _entry("ü✓ " * 40_000)
        cache.with_mode("refresh").extend(key, [big])
        assert cache.get(key) == [big] and cache.get(other) == []
        assert cache.with_mode("off").get(key) == []
        stats = cache.stats
        assert (stats.hits, stats.misses, stats.writes, stats.keys) == (3, 2, 4, 1) and stats.volume_bytes > 100_000


def test_an_answer_with_a_lone_surrogate_is_stored_and_read_back_as_it_came(location: str) -> None:
    """Issue: half an emoji ("\\ud83d" in the server's JSON) made both stores raise a raw UnicodeEncodeError,
    which failed the paid call and left its claim held."""
    with Cache(location) as cache, Cache(location) as other:
        key, cut = _key(cache), _entry("smile \ud83d")
        assert cache.claim(key, ttl_s=60)
        cache.extend(key, [cut])
        assert other.get(key) == [cut] and other.claim(key, ttl_s=60)  # stored, and the claim gone with it
        cache.extend(key, [_entry("\udc00 again")])  # the stored entry is encoded again beside the new one
        assert cache.get(key) == [cut, _entry("\udc00 again")]


def test_a_store_handed_text_it_cannot_encode_raises_cache_error(location: str) -> None:
    with Cache(location) as cache:
        store, key = cache._store, _key(cache)
        with pytest.raises(CacheError, match="not valid Unicode"):
            store.update(key, lambda current: '["\ud83d"]', expire=None, action="store a bucket")
        with pytest.raises(CacheError, match="not valid Unicode"):
            store.claim(key + ":claim", "\ud83d", expire=60, bucket=key)
        assert cache.get(key) == [] and cache.claim(key, ttl_s=60)


def test_a_client_call_whose_answer_holds_a_lone_surrogate_is_answered_and_cached(location: str) -> None:
    body = (b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant",'
            b'"content":"smile \\ud83d"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')
    sent: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    with Cache(location) as cache, OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, http_client=http, cache=cache) as client:
        answers = [client.chat.completions.create(model="m", messages=PARAMS["messages"]) for _ in range(2)]
    assert [a.choices[0].message.content for a in answers] == ["smile \ud83d"] * 2
    assert answers[1].blackbox.cache_hit and len(sent) == 1


def test_entries_expire_after_the_ttl(location: str) -> None:
    with Cache(location, ttl=0.4) as cache:
        key = _key(cache)
        cache.extend(key, [_entry("short-lived")])
        assert cache.get(key) == [_entry("short-lived")]
        time.sleep(0.5)
        assert cache.get(key) == []


def test_a_disk_and_a_redis_cache_make_the_same_keys(tmp_path: Path, redis_server: RedisServer) -> None:
    with Cache(tmp_path / "c", namespace="team") as disk, Cache(redis_server.url, namespace="team") as shared:
        assert _key(disk) == _key(shared) and _key(disk, seed=3) == _key(shared, seed=3)


def test_single_flight_32_threads_one_leader_the_others_get_its_answer(location: str) -> None:
    with Cache(location) as cache:
        key = _key(cache)
        start, waiting = threading.Barrier(32), threading.Semaphore(0)

        def call(_: int) -> tuple[bool, list[dict[str, Any]]]:
            start.wait()
            if cache.claim(key, ttl_s=30):
                _hold_until_the_others_wait(waiting, 31)  # the one upstream request
                cache.extend(key, [_entry("the leader's answer")])
                cache.release_claim(key)
                return True, cache.get(key)
            waiting.release()
            return False, cache.wait_for(key, timeout_s=30)

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(32)))
    assert sum(leader for leader, _ in results) == 1
    assert all(entries == [_entry("the leader's answer")] for _, entries in results)


def _hold_until_the_others_wait(waiting: Any, others: int, seconds: float = 20.0) -> None:
    """The leader's request: it lasts until every other caller is waiting (or the time is up), so no
    caller can come late and find the key free; with a broken claim every "leader" waits it out."""
    deadline = time.monotonic() + seconds
    for _ in range(others):
        if not waiting.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return


def _claim_in_threads(location: str, key: str, start: Any, waiting: Any, results: Any) -> None:
    """Child process: 8 threads claim one key at once; the leader stores, the others wait for it."""
    with Cache(location) as cache:

        def call(_: int) -> None:
            start.wait()
            if cache.claim(key, ttl_s=60):
                _hold_until_the_others_wait(waiting, 31)
                cache.extend(key, [{"answer": os.getpid()}])
                cache.release_claim(key)
                results.put(("leader", cache.get(key)))
            else:
                waiting.release()
                results.put(("follower", cache.wait_for(key, timeout_s=60)))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, range(8)))


def test_single_flight_across_processes_sends_once(location: str) -> None:
    with Cache(location) as cache:
        key = _key(cache)
    context = multiprocessing.get_context("spawn")
    start, waiting, results = context.Barrier(32), context.Semaphore(0), context.Queue()
    workers = [context.Process(target=_claim_in_threads, args=(location, key, start, waiting, results)) for _ in range(4)]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=180) for _ in range(32)]
    for process in workers:
        process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    assert [role for role, _ in outcomes].count("leader") == 1
    answers = {json.dumps(entries) for _, entries in outcomes}
    assert len(answers) == 1 and json.loads(answers.pop())[0]["answer"] in {p.pid for p in workers}


def test_a_leader_that_fails_releases_the_waiters_at_once(location: str) -> None:
    with Cache(location) as leader, Cache(location) as follower:
        key = _key(leader)
        assert leader.claim(key, ttl_s=30) and not follower.claim(key, ttl_s=30)
        threading.Timer(0.2, leader.release_claim, args=(key,)).start()  # no answer stored
        started = time.monotonic()
        assert follower.wait_for(key, timeout_s=20) == []
        assert time.monotonic() - started < 5
        assert follower.claim(key, ttl_s=30)  # the key is free: the next caller leads


def test_the_wait_is_bounded_and_then_the_caller_sends(location: str) -> None:
    with Cache(location) as cache:
        key = _key(cache)
        assert cache.claim(key, ttl_s=30)
        started = time.monotonic()
        assert cache.wait_for(key, timeout_s=0.3) == []
        assert 0.3 <= time.monotonic() - started < 3


def test_a_waiter_wants_as_many_entries_as_it_needs(location: str) -> None:
    with Cache(location) as leader, Cache(location) as writer, Cache(location) as waiter:
        key = _key(leader)
        assert leader.claim(key, ttl_s=30)
        writer.extend(key, [_entry("1")])  # a caller that holds no claim: the leader's stays
        threading.Timer(0.2, writer.extend, args=(key, [_entry("2")])).start()
        assert waiter.wait_for(key, timeout_s=20, want=2) == [_entry("1"), _entry("2")]
        assert waiter.wait_for(key, timeout_s=0.2, want=5) == [_entry("1"), _entry("2")]  # fewer after the wait


def test_a_lapsed_claim_frees_the_key_and_its_old_leader_cannot_release_the_new_one(location: str) -> None:
    with Cache(location) as first, Cache(location) as second, Cache(location) as third:
        key = _key(first)
        assert first.claim(key, ttl_s=0.2)
        assert not second.claim(key, ttl_s=30)
        time.sleep(0.3)
        assert second.claim(key, ttl_s=30)
        first.release_claim(key)  # too late: the claim it held lapsed, and is someone else's now
        assert not third.claim(key, ttl_s=30)
        second.release_claim(key)
        assert third.claim(key, ttl_s=30)


def _plant(location: str, name: str, value: str) -> None:
    """Store ``value`` at ``name`` without an expiry, as a foreign writer (or an older bug) might, beside the cache's keys."""
    if location.startswith("redis://"):
        client = redis.Redis.from_url(location)
        client.set(f"{PREFIX}default:{name}", value)
        client.close()
    else:
        plain = diskcache.Cache(location)
        plain.set(name, value)
        plain.close()


def test_a_value_without_an_expiry_at_a_claims_key_is_taken_over(location: str) -> None:
    """Every claim lapses; a value that never would held each identical request back for the whole
    single-flight wait, on every call. It is taken over, and the claim then taken is a real one."""
    with Cache(location) as first, Cache(location) as second:
        key = _key(first)
        _plant(location, key + ":claim", "stuck")
        assert first.claim(key, ttl_s=30)
        assert not second.claim(key, ttl_s=30)  # the claim that replaced it holds, with its lease
        first.release_claim(key)
        assert second.claim(key, ttl_s=30)


def _claim_and_read(location: str, key: str) -> tuple[bool, list[dict[str, Any]]]:
    """Child process: whether it can claim the key now, and what the bucket holds."""
    with Cache(location) as cache:
        return cache.claim(key, ttl_s=30), cache.get(key)


def test_the_leaders_store_ends_its_claim_in_the_same_write(location: str) -> None:
    with Cache(location) as leader, Cache(location) as third:
        key = _key(leader)
        assert leader.claim(key, ttl_s=30)
        leader.extend(key, [_entry("answer")])  # no release_claim yet: the store itself ended the claim
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:  # another process (or host) looks at once
            won, seen = pool.submit(_claim_and_read, location, key).result(timeout=120)
        assert won and seen == [_entry("answer")]
        leader.release_claim(key)  # a no-op now: the claim the child took stays the child's
        assert not third.claim(key, ttl_s=30)


def test_a_claim_reads_what_a_leader_stored_since_the_lookup_in_the_same_step(location: str) -> None:
    """A caller that missed, then claims after the leader stored and ended its claim, gets the answer with the claim
    (one transaction on disk, one round trip on Redis) instead of sending the request again; expired entries are not."""
    with Cache(location) as leader, Cache(location) as late, Cache(location, ttl=60) as aged:
        key = _key(leader)
        assert late.get(key) == [] and leader.claim(key, ttl_s=30)
        leader.extend(key, [_entry("answer")])
        assert late.claim_reading(key, ttl_s=30) == (True, [_entry("answer")])
        late.release_claim(key)
        assert late.with_mode("read").claim_reading(key, ttl_s=30) == (True, [_entry("answer")])
        assert late.with_mode("write").claim_reading(key, ttl_s=30) == (True, [])
        with patch("blackbox_sdk.cache._cache.time.time", return_value=time.time() + 120):
            assert aged.claim_reading(key, ttl_s=30) == (True, [])


def test_a_store_that_stores_nothing_leaves_the_claim_to_release_claim(location: str) -> None:
    with Cache(location) as leader, Cache(location) as other:
        key = _key(leader)
        assert leader.claim(key, ttl_s=30)
        leader.extend(key, [])
        leader.with_mode("read").extend(key, [_entry("not stored")])
        leader.with_mode("off").extend(key, [_entry("not stored")])
        assert not other.claim(key, ttl_s=30) and other.get(key) == []
        leader.release_claim(key)
        assert other.claim(key, ttl_s=30)


def test_a_writer_without_the_claim_leaves_the_leaders_claim_alone(location: str) -> None:
    with Cache(location) as leader, Cache(location) as writer, Cache(location) as other:
        key = _key(leader)
        assert leader.claim(key, ttl_s=30)
        writer.extend(key, [_entry("from elsewhere")])
        assert not other.claim(key, ttl_s=30)
        leader.extend(key, [_entry("the leader's")])
        assert other.claim(key, ttl_s=30) and other.get(key) == [_entry("from elsewhere"), _entry("the leader's")]


def test_only_mode_on_claims_and_only_reading_modes_wait(location: str) -> None:
    with Cache(location) as cache:
        key = _key(cache)
        assert cache.claim(key, ttl_s=30)
        for mode in ("read", "write", "refresh", "off"):
            assert cache.with_mode(mode).claim(key, ttl_s=30)  # type: ignore[arg-type]
        started = time.monotonic()
        assert cache.with_mode("off").wait_for(key, timeout_s=10) == []
        assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c, k: c.claim(k, ttl_s=0), id="zero-ttl"),
        pytest.param(lambda c, k: c.claim(k, ttl_s=float("inf")), id="infinite-ttl"),
        pytest.param(lambda c, k: c.wait_for(k, timeout_s=-1), id="negative-wait"),
        pytest.param(lambda c, k: c.wait_for(k, timeout_s=1, want=0), id="want-none"),
        pytest.param(lambda c, k: c.claim("not-a-key", ttl_s=1), id="bad-key"),
    ],
)
def test_bad_single_flight_arguments_raise_config_error(location: str, call: Callable[[Cache, str], Any]) -> None:
    with Cache(location) as cache, pytest.raises(ConfigError):
        call(cache, _key(cache))


async def test_waiting_on_an_event_loop(location: str) -> None:
    with Cache(location) as cache:
        key = _key(cache)
        assert cache.claim(key, ttl_s=30)
        threading.Timer(0.2, cache.extend, args=(key, [_entry("async")])).start()
        assert await cache.wait_for_async(key, timeout_s=20) == [_entry("async")]


# ------------------------------------------------------------------------------------- Redis only


def test_values_are_json_text_under_the_prefix_and_namespace_with_redis_expiry(redis_server: RedisServer, raw: redis.Redis) -> None:
    with Cache(redis_server.url, namespace="tenant-a", ttl=60) as cache:
        key = _key(cache)
        cache.extend(key, [_entry("4")])
        stored = json.loads(raw.get(f"{PREFIX}tenant-a:{key}").decode("utf-8"))
        assert [w["bb"] for w in stored] == [CACHE_FORMAT] and stored[0]["entry"] == _entry("4")
        assert 59_000 < raw.pttl(f"{PREFIX}tenant-a:{key}") <= 60_000
        assert isinstance(cache._store, CacheStore) and cache.directory is None


def test_two_caches_on_one_url_share_buckets_like_two_hosts(redis_server: RedisServer) -> None:
    with Cache(redis_server.url) as host_a, Cache(redis_server.url) as host_b:
        host_a.extend(_key(host_a), [_entry("from a")])
        host_b.extend(_key(host_b), [_entry("from b")])
        assert host_a.get(_key(host_a)) == [_entry("from a"), _entry("from b")]


def test_namespaces_are_isolated_even_when_one_prefixes_another(redis_server: RedisServer, raw: redis.Redis) -> None:
    names = ["a", "a:b", "a*", "other"]
    caches = [Cache(redis_server.url, namespace=n) for n in names]
    for cache in caches:
        cache.extend(_key(cache), [_entry(cache.namespace)])
    assert [c.get(_key(c)) for c in caches] == [[_entry(n)] for n in names]
    assert caches[0].get(_key(caches[1])) == []  # a key of another namespace misses here
    caches[0].clear()
    assert [c.stats.keys for c in caches] == [0, 1, 1, 1]
    assert sorted(name.decode().split(":")[2] for name in raw.scan_iter(f"{PREFIX}*")) == ["a", "a*", "other"]
    for cache in caches:
        cache.close()


def test_stats_count_a_value_of_another_type_in_the_namespace_without_failing(
    redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue: a planted hash among the buckets made `stats` raise CacheUnavailableError, with a warning that the
    server refused writes, where `get` drops the same value as foreign."""
    with Cache(redis_server.url, namespace="a") as cache:
        cache.extend(_key(cache), [_entry("x")])
        raw.hset(f"{PREFIX}a:{'f' * 64}", "field", "value")
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            stats = cache.stats
        assert (stats.keys, stats.volume_bytes) == (2, raw.strlen(f"{PREFIX}a:{_key(cache)}")) and _warnings(caplog) == []


def test_a_namespace_redis_cannot_store_is_a_config_error_when_the_cache_is_made(redis_server: RedisServer) -> None:
    """A namespace from argv's undecodable bytes holds a lone surrogate: every lookup raised CacheError, failing every call."""
    with pytest.raises(ConfigError, match="namespace must be valid Unicode"):
        Cache(redis_server.url, namespace="team-\udcff")


def _extend_many(url: str, key: str, worker: int, count: int, start: Any) -> None:
    """Child process: once every worker is ready, append entries one at a time to a shared bucket on Redis."""
    with Cache(url, max_bucket=1000) as shared:
        shared.get(key)  # connected before the race starts
        start.wait()
        for i in range(count):
            shared.extend(key, [{"worker": worker, "i": i}])


def test_concurrent_appends_from_several_processes_all_land(redis_server: RedisServer) -> None:
    with Cache(redis_server.url, max_bucket=1000) as cache:
        key = _key(cache)
        context = multiprocessing.get_context("spawn")
        start = context.Barrier(4)
        workers = [context.Process(target=_extend_many, args=(redis_server.url, key, w, 100, start)) for w in range(4)]
        for process in workers:
            process.start()
        for process in workers:
            process.join(timeout=180)
        assert [p.exitcode for p in workers] == [0, 0, 0, 0]
        assert sorted((e["worker"], e["i"]) for e in cache.get(key)) == [(w, i) for w in range(4) for i in range(100)]


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda raw, name, marker: raw.set(name, pickle.dumps(RunsOnUnpickle(marker))), id="pickle"),
        pytest.param(lambda raw, name, marker: raw.set(name, b"\xff\xfe[not utf-8"), id="invalid-utf8"),
        pytest.param(lambda raw, name, marker: raw.set(name, b"[{not json"), id="not-json"),
        pytest.param(lambda raw, name, marker: raw.rpush(name, b"a list"), id="another-type"),
    ],
)
def test_planted_values_are_a_miss_with_a_warning_and_are_dropped(
    redis_server: RedisServer, raw: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture, plant: Callable[..., Any]
) -> None:
    marker = tmp_path / "pwned"
    with Cache(redis_server.url) as cache:
        key = _key(cache)
        plant(raw, f"{PREFIX}default:{key}", marker)
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            assert cache.get(key) == []
        assert len(_warnings(caplog)) == 1 and not marker.exists()
        assert raw.exists(f"{PREFIX}default:{key}") == 0
        cache.extend(key, [_entry("after")])
        assert cache.get(key) == [_entry("after")]


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda raw, name: raw.set(name, b"\xff\xfe[not utf-8"), id="invalid-utf8"),
        pytest.param(lambda raw, name: raw.set(name, b"[{not json"), id="not-json"),
        pytest.param(lambda raw, name: raw.rpush(name, b"a list"), id="another-type"),
        pytest.param(lambda raw, name: raw.set(name, json.dumps([{"bb": CACHE_FORMAT, "created": time.time(), "entry": _entry("older")}])), id="a-bucket"),
    ],
)
def test_the_leaders_store_writes_over_whatever_the_bucket_holds_and_drops_its_claim(
    redis_server: RedisServer, raw: redis.Redis, plant: Callable[..., Any]
) -> None:
    with Cache(redis_server.url) as leader, Cache(redis_server.url) as other:
        key = _key(leader)
        assert leader.claim(key, ttl_s=60)
        plant(raw, f"{PREFIX}default:{key}")  # written after the leader's look, by anyone
        leader.extend(key, [_entry("answer")])
        assert other.get(key)[-1] == _entry("answer") and raw.exists(f"{PREFIX}default:{key}:claim") == 0
        raw.rpush(f"{PREFIX}default:{key}:claim", b"not a claim")  # a foreign claim is never ours to drop
        raw.pexpire(f"{PREFIX}default:{key}:claim", 60_000)  # (one that never lapsed would be taken over)
        assert other.claim(key, ttl_s=60) is False
        leader.extend(key, [_entry("again")])
        assert raw.type(f"{PREFIX}default:{key}:claim") == b"list" and other.get(key)[-1] == _entry("again")


def test_a_killed_server_is_a_miss_with_one_warning_and_a_restart_heals(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with Cache(redis_server.url) as cache:
        key = _key(cache)
        cache.extend(key, [_entry("before")])
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            started = time.monotonic()
            assert cache.get(key) == []
            cache.extend(key, [_entry("lost")])  # skipped, never raised
            assert cache.claim(key, ttl_s=30)  # nothing waits on a cache that is down
            assert cache.wait_for(key, timeout_s=10) == []
            time.sleep(0.6)  # past the rest: the next calls try the server again, and fail again
            assert cache.get(key) == [] and cache.get(key) == []
            assert time.monotonic() - started < 5
        (warning,) = _warnings(caplog)
        assert "unreachable" in warning and redis_server.url.rsplit("/", 1)[0].split("//")[1] in warning
        with pytest.raises(CacheError) as raised:
            cache.clear()  # an explicit admin action says so
        assert isinstance(raised.value, StoreUnavailableError)
        redis_server.start()  # back, empty

        def round_trip() -> bool:
            cache.extend(key, [_entry("after")])
            return cache.get(key) == [_entry("after")]

        assert _until(round_trip)
        assert cache.stats.keys == 1


def test_a_store_skipped_while_the_server_stalls_keeps_the_claim_for_release_claim(redis_server: RedisServer) -> None:
    with Cache(redis_server.url, timeout=0.3) as leader, Cache(redis_server.url) as other:
        key = _key(leader)
        assert leader.claim(key, ttl_s=60)
        with redis_server.paused():
            leader.extend(key, [_entry("lost")])  # times out: skipped, never raised
        assert _until(lambda: _reachable(leader))
        assert not other.claim(key, ttl_s=60) and other.get(key) == []
        leader.release_claim(key)
        assert other.claim(key, ttl_s=60)


def test_a_claim_whose_release_failed_is_released_by_the_leaders_next_claim(redis_server: RedisServer) -> None:
    """A stall that made the store and the release fail must not leave the claim to hold identical requests
    back for its whole lease (each waiting out the single-flight wait) once the server answers again."""
    with Cache(redis_server.url, timeout=0.3) as leader, Cache(redis_server.url) as other:
        key, next_key = _key(leader), _key(leader, temperature=1)
        assert leader.claim(key, ttl_s=60)
        with redis_server.paused():
            leader.extend(key, [_entry("lost")])  # times out: skipped
            leader.release_claim(key)  # the store rests after the failure: skipped too
        assert _until(lambda: _reachable(leader))
        assert leader.claim(next_key, ttl_s=60)  # the leader's next call
        assert other.claim(key, ttl_s=60)  # the claim it could not release is gone


def test_release_claim_after_the_leaders_store_sends_nothing(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with Cache(redis_server.url) as leader:
        key = _key(leader)
        assert leader.claim(key, ttl_s=60)
        leader.extend(key, [_entry("answer")])
        redis_server.stop()
        with caplog.at_level(logging.DEBUG, logger="blackbox_sdk"):
            leader.release_claim(key)  # would find the server gone, had it anything left to send
        assert not [r for r in caplog.records if r.name == "blackbox_sdk" and r.levelno >= logging.DEBUG]


def test_a_call_through_the_client_is_unaffected_by_a_dead_cache_and_streams_replay_after(
    llama_server: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    cache = Cache(redis_server.url, namespace="client")
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=cache)
    ask = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0, "seed": 1}
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        first = client.chat.completions.create(**ask)
    assert first.choices[0].message.content and not first.blackbox.cache_hit
    assert any("unreachable" in w for w in _warnings(caplog))
    redis_server.start()
    assert _until(lambda: _reachable(cache))
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True) if c.choices)
    replay = client.chat.completions.create(**ask, stream=True)
    assert replay.blackbox.cache_hit
    assert "".join(c.choices[0].delta.content or "" for c in replay if c.choices) == streamed
    again = client.chat.completions.create(**ask)
    assert again.blackbox.cache_hit and again.choices[0].message.content == streamed
    client.close()
    cache.close()


def test_the_password_never_appears_in_messages(redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    raw.config_set("requirepass", PASSWORD)
    host = redis_server.url.split("//")[1]
    good, wrong = f"redis://:{PASSWORD}@{host}", f"redis://user:{PASSWORD}-wrong@{host}"
    with Cache(good) as cache:
        cache.extend(_key(cache), [_entry("secret-free")])
        assert cache.get(_key(cache)) == [_entry("secret-free")]
        texts = [repr(cache), cache.location]
    with pytest.raises(ConfigError) as refused:
        Cache(wrong)  # refused when it opens: a configuration error, not an outage that misses forever
    assert str(refused.value).startswith(f"the cache URL redis://user:***@{host} was refused by the Redis server: its user name or password is wrong")
    texts.append(str(refused.value))
    with Cache(good) as denied, caplog.at_level(logging.DEBUG, logger="blackbox_sdk"):
        raw.config_set("requirepass", "another-" + PASSWORD)  # after it opened: the server no longer takes its password
        assert denied.get(_key(denied)) == []  # reads as a miss, with a warning
        with pytest.raises(CacheError) as raised:
            denied.clear()
        texts += [repr(denied), str(raised.value), repr(raised.value.__cause__), caplog.text]
    with pytest.raises(ConfigError) as bad:
        Cache(f"redis://:{PASSWORD}@127.0.0.1:notaport/0")
    texts.append(str(bad.value))
    assert _warnings(caplog) and all(PASSWORD not in text for text in texts), texts


def test_a_url_urllib_cannot_split_is_a_config_error_without_its_password() -> None:
    with pytest.raises(ConfigError) as bad:
        Cache(f"redis://:{PASSWORD}@[::1/0")  # an unclosed IPv6 bracket
    assert str(bad.value) == "the cache URL redis://[::1/0 is not valid: Invalid IPv6 URL"


def test_url_options_win_and_rediss_is_accepted(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    host = redis_server.url.split("//")[1].split("/")[0]
    with Cache(f"rediss://{host}/0?socket_timeout=0.3&socket_connect_timeout=0.3") as tls:  # TLS to a plain server
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            assert tls.get(_key(tls)) == []
        assert time.monotonic() - started < 3 and len(_warnings(caplog)) == 1


def test_a_closed_cache_reconnects_on_next_use(redis_server: RedisServer) -> None:
    cache = Cache(redis_server.url)
    cache.extend(_key(cache), [_entry("x")])
    cache.close()
    assert cache.get(_key(cache)) == [_entry("x")]
    cache.close()


def test_without_the_redis_package_a_config_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` meets when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'blackbox-sdk\[redis\]'"):
        Cache("redis://127.0.0.1:6379/0")


def test_a_full_redis_keeps_serving_what_it_holds_and_warns_once(redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    with Cache(redis_server.url) as cache:
        held = _key(cache)
        cache.extend(held, [_entry("stored before it filled")])
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", max(1, raw.info("memory")["used_memory"] - 1))  # full: writes refused, reads fine
        try:
            with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
                for text in ("one", "two", "three"):
                    cache.extend(_key(cache, temperature=len(text)), [_entry(text)])  # refused: skipped, never raised
                    assert cache.get(held) == [_entry("stored before it filled")]  # not taken for an outage: still a hit
        finally:
            raw.config_set("maxmemory", 0)
        (warning,) = _warnings(caplog)
        assert "refused" in warning and "OutOfMemoryError" in warning and "unreachable" not in warning
