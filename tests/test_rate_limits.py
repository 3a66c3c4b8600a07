"""Rate limits (blackbox_sdk.limits): a sliding window of requests and tokens per key, model or
client, in memory, SQLite and a real redis-server; refusing or waiting by policy; failing closed."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import gc
import logging
import math
import multiprocessing
import os
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from servers import InstantUpstream, RedisServer

from blackbox_sdk import AsyncOpenAI, CallLog, ConfigError, OpenAI, RateLimitExceededError, StoreUnavailableError
from blackbox_sdk.limits import Admission, RateLimits, RedisWindow, redact_url

STORES = ["memory", "sqlite", "redis"]


class FakeTime:
    """An injected clock whose sleeps advance it, recording each sleep; ``during_sleep`` runs inside one."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.during_sleep: Any = None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during_sleep is not None:
            self.during_sleep()

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path | None:
    """Each store kind in turn: this process's memory, an SQLite file, a real redis-server."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return tmp_path / "rate.sqlite3"
    return request.getfixturevalue("redis_server").url


def limits_on(store: str | Path | None, clock: FakeTime, **options: Any) -> RateLimits:
    """RateLimits on ``store`` with the fake clock and its sleeps injected."""
    return RateLimits(store=store, clock=clock, sleep=clock.sleep, asleep=clock.asleep, **options)


def admit(limits: RateLimits, tokens: int = 1, *, key: str | None = None, model: str = "gpt-4o") -> Admission:
    return limits.admit(key=key, model=model, tokens=tokens)


def refusal(limits: RateLimits, tokens: int = 1, *, key: str | None = None, model: str = "gpt-4o") -> RateLimitExceededError:
    with pytest.raises(RateLimitExceededError) as caught:
        admit(limits, tokens, key=key, model=model)
    return caught.value


# --- the window ---------------------------------------------------------------------------------------


def test_rpm_refuses_with_the_time_until_the_oldest_call_leaves(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=3)
    for offset in (0.0, 10.0, 20.0):
        clock.now = 1_000.0 + offset
        assert admit(limits).at == pytest.approx(clock.now, abs=1e-5)
    clock.now = 1_030.0
    error = refusal(limits)
    assert error.retry_after == pytest.approx(30.0, abs=1e-4)  # the call at 1000 leaves at 1060
    assert (error.limit, error.scope) == (3, "client")
    assert "rpm=3" in str(error) and "retry after 30.00s" in str(error)


def test_tpm_refuses_until_enough_tokens_have_left(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, tpm=1_000)
    for offset, tokens in ((0.0, 300), (5.0, 300), (10.0, 300)):
        clock.now = 1_000.0 + offset
        admit(limits, tokens)
    clock.now = 1_020.0
    admit(limits, 100)  # exactly 1000
    error = refusal(limits, 500)  # 500 must leave: the calls at 1000 and 1005, the second leaves at 1065
    assert error.retry_after == pytest.approx(45.0, abs=1e-4)
    assert (error.limit, error.scope) == (1_000, "client")
    assert "tpm=1000" in str(error) and "500 tokens" in str(error)
    assert refusal(limits, 1).retry_after == pytest.approx(40.0, abs=1e-4)  # one token: the first call's leaving is enough


def test_the_binding_limit_is_the_one_that_waits_longest(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=2, tpm=100)
    admit(limits, 90)
    clock.now += 30
    admit(limits, 5)
    clock.now += 1
    error = refusal(limits, 50)  # rpm needs the first to leave (29s), tpm too (29s): rpm wins ties
    assert error.retry_after == pytest.approx(29.0, abs=1e-4) and "rpm=2" in str(error) and error.unit == "requests"
    limits = limits_on(store, clock, rpm=5, tpm=100, per="model")
    admit(limits, 50, model="m")
    clock.now += 10
    admit(limits, 50, model="m")
    clock.now += 1
    error = refusal(limits, 60, model="m")  # only tpm binds, and both calls must leave: 10 + 60 - 11
    assert error.retry_after == pytest.approx(59.0, abs=1e-4) and error.limit == 100 and "tpm=100" in str(error)
    assert error.unit == "tokens"  # what the binding limit counts: OpenAI's 429 names it as the error's type


def test_the_window_slides(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=2, window_s=10.0)
    admit(limits)
    clock.now = 6.0
    admit(limits)
    clock.now = 9.999
    assert refusal(limits).retry_after == pytest.approx(0.001, abs=1e-4)
    clock.now = 10.0  # the call at 0 has left; the one at 6 has not
    admit(limits)
    assert refusal(limits).retry_after == pytest.approx(6.0, abs=1e-4)
    clock.now = 16.0
    admit(limits)
    clock.now = 40.0  # both left long ago: the window is empty again
    admit(limits)
    admit(limits)
    refusal(limits)


def test_a_clock_that_goes_back_holds_the_window_for_one_window_not_the_jump(store: str | Path | None) -> None:
    """A wall clock stepped back an hour (NTP, a VM resumed): the calls recorded 'in the future' count as
    admitted now, so the scope is full for one window at most, not for the hour plus the window."""
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=1, tpm=100)
    admit(limits, 10)
    clock.now -= 3_600
    assert refusal(limits).retry_after == pytest.approx(60)
    clock.now += 60
    assert admit(limits).at == pytest.approx(clock.now)


def test_zero_token_calls_leave_correct_and_release_like_any_other(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=2, tpm=100, window_s=10.0)
    admit(limits, tokens=0)  # a call with nothing to count (an rpm-only caller, a server reporting zero usage)
    limits.correct(admit(limits, tokens=5), 0)  # corrected to zero: the total changes by -5, then nothing
    clock.now = 11.0  # both leave the window with zero tokens between them
    assert limits.release(admit(limits, tokens=0)) is True
    admit(limits, tokens=100)  # the whole tpm is free again: nothing is left counted
    admit(limits, tokens=0)
    refusal(limits, tokens=0)  # rpm still binds


def test_correct_counts_what_the_call_really_used(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, tpm=1_000)
    first = admit(limits, 800)  # the estimate
    refusal(limits, 300)
    assert limits.correct(first, 200) is True  # the response used 200
    admit(limits, 800)
    refusal(limits, 1)
    assert limits.correct(first, 900) is True  # a response larger than its estimate counts in full
    clock.now += 61  # both left, and the next admission drops them
    admit(limits, 1_000)
    assert limits.correct(first, 5) is False


def test_release_takes_back_a_call_never_sent(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=1, tpm=10)
    admission = admit(limits, 10)
    refusal(limits)
    assert limits.release(admission) is True
    admit(limits, 10)
    assert limits.release(admission) is False


def test_a_call_larger_than_tpm_never_fits_and_never_waits(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, tpm=100, policy="wait", max_wait_s=1e6)
    error = refusal(limits, 101)
    assert error.retry_after == math.inf and "can never fit" in str(error) and error.unit == "tokens"
    assert clock.sleeps == []
    admit(limits, 100)


# --- policies -----------------------------------------------------------------------------------------


def test_wait_sleeps_until_the_window_has_room(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=1, tpm=50, policy="wait", max_wait_s=60.0)
    admit(limits, 40)
    clock.now = 15.0
    admission = admit(limits, 20)
    assert clock.sleeps == [pytest.approx(45.0, abs=1e-4)]
    assert admission.waited_s == pytest.approx(45.0, abs=1e-4)
    assert admission.at == pytest.approx(60.0, abs=1e-4)


def test_wait_gives_up_when_the_wait_would_pass_max_wait_s(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=1, policy="wait", max_wait_s=44.0)
    admit(limits)
    clock.now = 15.0
    error = refusal(limits)  # 45s needed, 44 allowed: no pointless sleep
    assert clock.sleeps == [] and error.retry_after == pytest.approx(45.0, abs=1e-4)


def test_wait_gives_up_when_others_keep_taking_the_room(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=1, policy="wait", max_wait_s=100.0)
    other = limits_on(store, clock, rpm=1)  # another client sharing the store (a separate window in memory)
    target = other if store is not None else limits
    admit(limits)
    clock.during_sleep = lambda: admit(target)  # while we sleep, another caller takes the freed room
    error = refusal(limits)
    assert clock.sleeps == [pytest.approx(60.0, abs=1e-4)]  # slept 60, then 60 more would pass 100
    assert error.retry_after == pytest.approx(60.0, abs=1e-4) and "after waiting 60.00s" in str(error)


@contextlib.contextmanager
def locked(path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds the SQLite file's write lock for ``seconds`` (from before the block starts)."""
    holding = threading.Event()

    def hold() -> None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holding.set()
        time.sleep(seconds)
        holder.execute("COMMIT")
        holder.close()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        yield
    finally:
        thread.join()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["admit", "aadmit"])
def test_max_wait_s_counts_the_time_a_locked_store_took(tmp_path: Path, asynchronous: bool) -> None:
    """The store took 0.8 s to answer (its file locked) and the window wants 0.5 s more: past max_wait_s=1, refused at once."""
    clock = FakeTime(0.0)
    limits = limits_on(tmp_path / "rate.sqlite3", clock, rpm=1, policy="wait", max_wait_s=1.0)
    admit(limits)
    clock.now = 59.5
    with locked(tmp_path / "rate.sqlite3", 0.8), pytest.raises(RateLimitExceededError) as caught:
        if asynchronous:
            asyncio.run(limits.aadmit(key=None, model="gpt-4o", tokens=1))
        else:
            admit(limits)
    assert clock.sleeps == [] and caught.value.retry_after == pytest.approx(0.5, abs=1e-4)
    clock.now = 60.0
    admit(limits)  # the window's own room, once the store answers at once
    limits.close()


def test_raise_policy_never_sleeps(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=1)
    admit(limits)
    refusal(limits)
    assert clock.sleeps == []


async def test_aadmit_makes_the_same_decisions_with_asyncio(store: str | Path | None) -> None:
    clock = FakeTime(0.0)
    limits = limits_on(store, clock, rpm=2, tpm=100, policy="wait", max_wait_s=30.0)
    first = await limits.aadmit(key=None, model="m", tokens=60)
    clock.now = 20.0
    await limits.aadmit(key=None, model="m", tokens=40)
    clock.now = 35.0
    admission = await limits.aadmit(key=None, model="m", tokens=10)  # the first call leaves at 60: 25s
    assert admission.waited_s == pytest.approx(25.0, abs=1e-4)
    later = await limits.aadmit(key=None, model="m", tokens=10)  # the call at 20 leaves at 80: 20s more
    assert later.waited_s == pytest.approx(20.0, abs=1e-4) and later.at == pytest.approx(80.0, abs=1e-4)
    with pytest.raises(RateLimitExceededError) as caught:
        await limits.aadmit(key=None, model="m", tokens=10)  # the call at 60 leaves at 120: 40s > 30
    assert caught.value.retry_after == pytest.approx(40.0, abs=1e-4)
    assert clock.sleeps == [pytest.approx(25.0, abs=1e-4), pytest.approx(20.0, abs=1e-4)]
    assert await limits.acorrect(first, 1) is False  # it has left, and the last admission dropped it
    assert await limits.arelease(admission) is True
    await limits.aclose()


# --- scopes -------------------------------------------------------------------------------------------


def test_per_key_windows_are_separate_and_keyless_calls_share_one(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=1, per="key")
    assert admit(limits, key="team-a").scope == "key:team-a"
    error = refusal(limits, key="team-a")
    assert error.scope == "key:team-a" and "key:team-a" in str(error)
    assert admit(limits, key="team-b").scope == "key:team-b"
    assert admit(limits, key=None).scope == "key"
    assert refusal(limits, key=None, model="another-model").scope == "key"


def test_per_model_windows_are_separate(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=1, per="model")
    assert admit(limits, key="a", model="gpt-4o").scope == "model:gpt-4o"
    assert refusal(limits, key="b", model="gpt-4o").scope == "model:gpt-4o"
    admit(limits, key="a", model="gpt-4o-mini")


def test_per_client_is_one_window_for_every_key_and_model(store: str | Path | None) -> None:
    clock = FakeTime()
    limits = limits_on(store, clock, rpm=2, per="client")
    admit(limits, key="a", model="m1")
    admit(limits, key="b", model="m2")
    assert refusal(limits, key="c", model="m3").scope == "client"


def test_clients_sharing_a_store_share_the_window(tmp_path: Path, redis_server: RedisServer) -> None:
    for store in (tmp_path / "shared.sqlite3", redis_server.url):
        clock = FakeTime()
        first, second = limits_on(store, clock, rpm=2), limits_on(store, clock, rpm=2)
        admit(first)
        admit(second)
        refusal(first)
        refusal(second)
    mine, yours = RateLimits(rpm=1), RateLimits(rpm=1)  # in-process: each object is its own window
    admit(mine)
    admit(yours)


# --- many processes and threads -----------------------------------------------------------------------


def _hammer(store: str, rpm: int, window_s: float, seconds: float, out: Any) -> None:
    """A process: 8 threads asking for room until the deadline; sends back the admitted times and refusals."""
    limits = RateLimits(rpm=rpm, window_s=window_s, store=store)
    admitted: list[float] = []
    refused = [0]
    guard = threading.Lock()
    deadline = time.time() + seconds

    def ask() -> None:
        while time.time() < deadline:
            try:
                at = limits.admit(key=None, model="m", tokens=1).at
                with guard:
                    admitted.append(at)
            except RateLimitExceededError:
                with guard:
                    refused[0] += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    limits.close()
    out.put((admitted, refused[0]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_four_processes_of_eight_threads_never_admit_more_than_rpm_in_any_window(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = str(tmp_path / "rate.sqlite3") if kind == "sqlite" else request.getfixturevalue("redis_server").url
    rpm, window_s, seconds = 10, 1.0, 3.0
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [context.Process(target=_hammer, args=(store, rpm, window_s, seconds, out)) for _ in range(4)]
    for process in processes:
        process.start()
    results = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    times = sorted(at for admitted, _ in results for at in admitted)
    refused = sum(count for _, count in results)
    assert refused > len(times)  # 32 threads asked far more often than the limit allows
    assert len(times) >= 2 * rpm  # and the window was filled, not starved
    crowded = [(times[i], times[i + rpm]) for i in range(len(times) - rpm) if times[i + rpm] - times[i] < window_s - 1e-5]
    assert crowded == []  # any rpm + 1 admissions are at least a window apart


# --- faults -------------------------------------------------------------------------------------------


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A redis-server that keeps every write across a kill (AOF, fsync always), as docs/fleet.md asks of a shared store."""
    server = RedisServer(options=("--appendonly", "yes", "--appendfsync", "always")).start()
    yield server
    server.close()


def test_redis_killed_fails_closed_and_recovers_after_restart(persistent_redis: RedisServer) -> None:
    limits = RateLimits(rpm=100, store=persistent_redis.url)
    admit(limits)
    persistent_redis.stop()
    with pytest.raises(StoreUnavailableError) as caught:
        admit(limits)
    assert "can't admit a call" in str(caught.value) and persistent_redis.url in str(caught.value)
    persistent_redis.start()  # with its data: the scripts are loaded again
    admit(limits)
    limits.close()


async def test_redis_killed_fails_closed_for_aadmit(persistent_redis: RedisServer) -> None:
    limits = RateLimits(rpm=100, store=persistent_redis.url)
    await limits.aadmit(key=None, model="m", tokens=1)
    persistent_redis.stop()
    with pytest.raises(StoreUnavailableError):
        await limits.aadmit(key=None, model="m", tokens=1)
    persistent_redis.start()
    await limits.aadmit(key=None, model="m", tokens=1)
    await limits.aclose()


async def test_aadmit_after_a_quick_restart_retries_on_a_fresh_connection(persistent_redis: RedisServer) -> None:
    limits = RateLimits(rpm=100, store=persistent_redis.url)
    await limits.aadmit(key=None, model="m", tokens=1)
    persistent_redis.stop()
    persistent_redis.start()  # between two calls: the pooled connection is stale, the server healthy
    await limits.aadmit(key=None, model="m", tokens=1)
    await limits.aclose()


def _refused_as_lost(call: Any) -> float:
    """How long a store that lost its data says it refuses, from the StoreUnavailableError ``call`` raises."""
    with pytest.raises(StoreUnavailableError, match="lost its data .* the counts of its windows: calls are refused for") as caught:
        call()
    return float(str(caught.value).split("refused for ")[1].split(" s more")[0])


async def test_a_redis_that_lost_its_data_refuses_for_one_window_and_the_limit_holds(redis_server: RedisServer) -> None:
    """Issue: Redis restarted without persistence forgot the window's counts, and a whole new limit's worth of calls
    was admitted at once, silently: twice the limit in one window."""
    limits = RateLimits(rpm=2, window_s=2.0, store=redis_server.url)
    admit(limits)
    admit(limits)
    refusal(limits)
    redis_server.stop()
    redis_server.start()  # empty: no persistence
    later = RateLimits(rpm=2, window_s=2.0, store=redis_server.url)  # a process started after it: it can't know
    admit(later)
    assert 0 < _refused_as_lost(lambda: admit(limits)) <= 2.0  # the first process that saw the old data notices
    assert 0 < _refused_as_lost(lambda: admit(later)) <= 2.0  # and every process refuses for that one window
    with pytest.raises(StoreUnavailableError, match="lost its data"):
        await limits.aadmit(key=None, model="gpt-4o", tokens=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            admit(limits)
            break
        except StoreUnavailableError:
            time.sleep(0.1)  # polling for the server's own expiry of the refusal, not a wait for another thread
    admit(later)  # the window after the refusal: both processes count in it again, together
    refusal(limits)
    refusal(later)
    limits.close()
    later.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_send_that_fails_while_redis_is_down_raises_its_own_error_and_is_logged(
    kind: str, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The window's room can't be given back (Redis died while the call was out): a warning, not the call's error."""

    upstream = InstantUpstream({"error": {"message": "overloaded"}}, before=redis_server.stop, status=503)  # never run: room back
    limits = RateLimits(rpm=100, store=redis_server.url)
    options = {"base_url": upstream.url, "api_key": "sk-test", "rate_limit": limits, "log": tmp_path / "calls.db", "max_retries": 0}
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"), pytest.raises(openai.InternalServerError):
            if kind == "sync":
                with OpenAI(**options) as client:
                    client.chat.completions.create(**ask)
            else:
                async with AsyncOpenAI(**options) as aclient:
                    await aclient.chat.completions.create(**ask)
    finally:
        upstream.close()
    assert "admission could not be released" in caplog.text
    [record] = list(CallLog(tmp_path / "calls.db").calls())
    assert "InternalServerError" in (record.error or "")


def test_the_redis_password_never_shows(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError) as refused:
        RateLimits(rpm=1, store=redis_server.url.replace("redis://", "redis://user:s3cret-pass@"))  # the server has no such user
    assert "s3cret-pass" not in str(refused.value) and "user:***@" in str(refused.value) and refused.value.__cause__ is None
    limits = RateLimits(rpm=2, store=redis_server.url.replace("redis://", "redis://:s3cret-pass@"))  # taken: the server asks for none
    assert "s3cret-pass" not in repr(limits)
    admit(limits)
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", "another-pass")  # now it asks, and refuses the URL's password when it reconnects
    admin.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(StoreUnavailableError) as caught:
        admit(limits)
    assert "s3cret-pass" not in str(caught.value) and ":***@" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # the driver's error is not chained
    redis_server.stop()
    with pytest.raises(StoreUnavailableError) as caught:
        admit(limits)
    assert "s3cret-pass" not in str(caught.value)
    assert redact_url("redis://h:6379/0?password=top%20secret&db=1") == "redis://h:6379/0?password=%2A%2A%2A&db=1"


def test_each_redis_admission_is_one_script_call_and_its_keys_expire(redis_server: RedisServer) -> None:
    limits = RateLimits(rpm=3, tpm=1_000, window_s=5.0, per="key", store=redis_server.url)
    inspect = redis.Redis.from_url(redis_server.url, decode_responses=True)
    limits.correct(admit(limits, 1, key="warm-up"), 1)  # the first use of each script loads it (NOSCRIPT, then SCRIPT LOAD)
    inspect.config_resetstat()
    admission = admit(limits, 400, key="team-a")
    admit(limits, 400, key="team-a")
    limits.correct(admission, 100)
    admit(limits, 400, key="team-a")
    with pytest.raises(RateLimitExceededError):
        admit(limits, 1, key="team-a")
    stats = inspect.info("commandstats")
    calls = {name: stats[name]["calls"] for name in stats}
    assert calls["cmdstat_evalsha"] == 5  # 4 admissions and 1 correction: one script call each
    assert not {"cmdstat_eval", "cmdstat_multi", "cmdstat_script"} & set(calls)
    keys = set(inspect.keys("blackbox:rate:*")) - {"blackbox:rate:epoch"}  # the one key kept for good: a loss shows as its change
    assert len(keys) == 4 and all(0 < inspect.pttl(key) <= 6_000 for key in keys)
    assert inspect.pttl("blackbox:rate:epoch") == -1
    inspect.close()
    limits.close()


def test_an_unreachable_sqlite_file_fails_closed(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailableError, match="can't open"):
        admit(RateLimits(rpm=1, store=blocker / "rate.sqlite3"))
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailableError):
        admit(RateLimits(rpm=1, store=garbage))


def test_a_locked_sqlite_file_fails_closed_instead_of_admitting(tmp_path: Path) -> None:
    from blackbox_sdk.limits import SQLiteWindow, Window

    path = tmp_path / "rate.sqlite3"
    window = SQLiteWindow(path, busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(StoreUnavailableError, match="locked"):
        window.try_admit("client|60.0s", "id-1", 1, Window(1, None, 60.0), None)
    holder.execute("ROLLBACK")
    assert window.try_admit("client|60.0s", "id-1", 1, Window(1, None, 60.0), None).admitted
    holder.close()
    window.close()


def test_a_sqlite_store_reopens_after_close(tmp_path: Path) -> None:
    limits = RateLimits(rpm=1, store=tmp_path / "rate.sqlite3")
    admit(limits)
    limits.close()
    refusal(limits)  # the window is in the file, not the connection
    with limits:
        refusal(limits)


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rpm": 0},
        {"rpm": -5},
        {"rpm": 1.5},
        {"rpm": True},
        {"rpm": "600"},
        {"tpm": 0},
        {"rpm": 1, "per": "user"},
        {"rpm": 1, "policy": "queue"},
        {"rpm": 1, "max_wait_s": -1},
        {"rpm": 1, "max_wait_s": math.inf},
        {"rpm": 1, "max_wait_s": 10**400},  # an int no float holds: a ConfigError, not an OverflowError
        {"rpm": 1, "window_s": 0},
        {"rpm": 1, "window_s": math.nan},
        {"rpm": 1, "window_s": "60"},
        {"rpm": 1, "window_s": 1e308},  # an overflow (OverflowError, a Redis "store unavailable") at the first call, not now
        {"rpm": 1, "window_s": 1e20},
        {"rpm": 2**64},  # more than SQLite's INTEGER or Lua's exact numbers hold
        {"tpm": 2**70},
        {"rpm": 1, "store": ""},
        {"rpm": 1, "store": 5},
        {"rpm": 1, "store": "postgresql://u:pw@h/db"},
        {"rpm": 1, "store": "redis://"},
        {"rpm": 1, "store": "redis://h:notaport/0"},
        {"rpm": 1, "store": "redis://:pw@[::1/0"},  # urllib can't split it (an unclosed IPv6 bracket)
        {"rpm": 1, "clock": 5.0},
        {"rpm": 1, "sleep": None},
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimits(**options)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://:pw@h:notaport/0", "redis://:pw@[::1/0", "redis://:pw@h/0?socket_timeout=abc"])
def test_a_redis_window_made_directly_from_a_bad_url_is_a_config_error(url: str) -> None:
    """The public RedisWindow, built without RateLimits' option checks: the URL is still refused as it is
    (not a ValueError, nor a store said to be unavailable), and its password is not echoed."""
    with pytest.raises(ConfigError) as caught:
        RedisWindow(url)
    assert "pw" not in str(caught.value)


def test_bad_call_arguments_are_config_errors() -> None:
    limits = RateLimits(rpm=10, per="model")
    for kwargs in ({"key": None, "model": None, "tokens": 1}, {"key": None, "model": "", "tokens": 1},
                   {"key": None, "model": "m", "tokens": -1}, {"key": None, "model": "m", "tokens": 1.5},
                   {"key": None, "model": "m", "tokens": 2**64}):  # an OverflowError from SQLite, not a ConfigError
        with pytest.raises(ConfigError):
            limits.admit(**kwargs)
    with pytest.raises(ConfigError):
        RateLimits(rpm=1, per="key").admit(key="", model="m", tokens=1)
    admission = limits.admit(key=None, model="m", tokens=1)
    with pytest.raises(ConfigError):
        limits.correct(admission, -3)


@pytest.mark.parametrize("per", ["key", "model"])
def test_a_name_with_a_lone_surrogate_is_a_config_error_on_every_store(store: str | Path | None, per: str) -> None:
    """Issue: half an emoji in a key or model raised a raw UnicodeEncodeError from the SQLite store and a
    StoreUnavailableError (as if the server were down) from Redis, and was admitted in memory."""
    with RateLimits(rpm=10, per=per, store=store) as limits:
        with pytest.raises(ConfigError, match="lone surrogate"):
            limits.admit(key="k\ud83d", model="m\udc00", tokens=1)
        with pytest.raises(ConfigError, match="lone surrogate"):
            asyncio.run(limits.aadmit(key="k\ud83d", model="m\udc00", tokens=1))


def test_options_are_frozen_compared_and_shown() -> None:
    limits = RateLimits(rpm=600, tpm=100_000, per="key")
    with pytest.raises(AttributeError):
        limits.rpm = 5  # type: ignore[misc]
    assert limits == RateLimits(rpm=600, tpm=100_000, per="key", clock=time.time)
    assert repr(limits) == "RateLimits(rpm=600, tpm=100000, per='key')"
    assert RateLimits(rpm=1, store="~/rate.sqlite3").store == Path.home() / "rate.sqlite3"
    assert copy.copy(limits) is limits and copy.deepcopy({"rate_limit": limits})["rate_limit"] is limits  # copies share the window


def test_in_process_threads_never_exceed_rpm() -> None:
    limits = RateLimits(rpm=50, window_s=3600.0)
    admitted = []

    def ask() -> None:
        for _ in range(40):
            try:
                admitted.append(limits.admit(key=None, model="m", tokens=1))
            except RateLimitExceededError:
                pass

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 50


def test_asyncio_tasks_waiting_share_the_window() -> None:
    limits = RateLimits(rpm=2, window_s=0.3, policy="wait", max_wait_s=5.0)

    async def main() -> list[Admission]:
        return await asyncio.gather(*(limits.aadmit(key=None, model="m", tokens=1) for _ in range(6)))

    started = time.monotonic()
    admissions = asyncio.run(main())
    assert time.monotonic() - started >= 0.6 - 0.05  # 6 calls at 2 per 0.3s: two windows of waiting
    times = sorted(admission.at for admission in admissions)
    assert all(times[i + 2] - times[i] >= 0.3 - 1e-6 for i in range(len(times) - 2))


def test_aadmit_cancelled_twice_while_the_window_is_locked_takes_no_slot(tmp_path: Path) -> None:
    """Cancelled twice while its attempt waits for the SQLite window's lock: the attempt is carried to its end
    and the slot it took given back, so the window holds nothing for a call that was never admitted."""
    path = tmp_path / "rate.sqlite3"
    limits = RateLimits(rpm=1, store=path)
    limits.release(admit(limits))  # the store is open, the window empty

    async def main() -> None:
        with locked(path, 0.6):
            task = asyncio.create_task(limits.aadmit(key=None, model="gpt-4o", tokens=1))
            for _ in range(2):
                await asyncio.sleep(0.1)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()

    asyncio.run(main())
    time.sleep(0.2)  # a release that escaped would have landed by now
    assert admit(limits).tokens == 1  # rpm=1: the one slot is free
    limits.close()


def test_an_async_client_on_redis_used_from_one_asyncio_run_after_another_leaves_no_connection_unclosed(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each `asyncio.run` gets the Redis window's asyncio connections of its own loop; they are closed as that loop
    shuts down, not dropped open with it (`unclosed Connection` / `unclosed transport` ResourceWarnings)."""
    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]}
    upstream = InstantUpstream(answer)
    unraisable: list[str] = []
    gc.collect()  # what earlier tests left unclosed is freed before the hook: only this test's connections are judged
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: unraisable.append(repr(raised.exc_value)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            client = AsyncOpenAI(base_url=upstream.url, api_key="sk-unused", rate_limit=RateLimits(rpm=100, store=redis_server.url))
            for _ in range(3):
                asyncio.run(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2))
                gc.collect()
            limits, failed = client.options.rate_limit, []

            def in_a_thread() -> None:  # threads each running a loop of their own at once: a client each, neither closed under the other
                async def calls() -> None:
                    for _ in range(20):
                        limits.release(await limits.aadmit(key=None, model="m", tokens=1))
                try:
                    asyncio.run(calls())
                except Exception as error:  # noqa: BLE001 - reported by the assertion below
                    failed.append(error)

            threads = [threading.Thread(target=in_a_thread) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            asyncio.run(limits.aclose())  # on a loop of its own: the earlier loops' connections are closed already
            gc.collect()
    finally:
        upstream.close()
    to_redis = f"raddr=('127.0.0.1', {redis_server.port})"  # a socket to another test's server is none of this test's
    assert not [text for text in unraisable if "raddr=" not in text or to_redis in text] and not failed


@pytest.mark.parametrize("asynchronous", [False, True], ids=["admit", "aadmit"])
def test_limits_inside_others_take_the_stricter_and_give_their_slot_back_when_the_outer_window_refuses(asynchronous: bool, tmp_path: Path) -> None:
    outer, inner = RateLimits(rpm=1, tpm=50), RateLimits(rpm=2, per="key")
    held = inner.inside(outer)
    assert (held.rpm, held.tpm, held.within) == (1, 50, outer)

    def take(key: str) -> Admission:
        return asyncio.run(held.aadmit(key=key, model="m", tokens=1)) if asynchronous else held.admit(key=key, model="m", tokens=1)

    first = take("a")
    with pytest.raises(RateLimitExceededError) as refused:
        take("b")  # b's own window has room, the outer one is full: the slot b took in its own is given back
    assert refused.value.scope == "client" and first.outer is not None
    held.correct(first, 7)
    held.release(first)  # both windows empty again
    take("b")  # b's window holds one request at most: its slot was given back
    shared = RateLimits(rpm=5, per="key", store=str(tmp_path / "rate.db"))
    assert dataclasses.replace(inner, store=shared.store).inside(shared).within is None  # the very same window: admitted there once
    assert inner.inside(RateLimits(rpm=5, per="key")).within is not None  # another process-local window: both admit
    other_length = inner.inside(RateLimits(rpm=1, tpm=50, window_s=1.0))
    assert (other_length.rpm, other_length.tpm) == (2, None)  # a minute's limits are not a second's: only the outer window holds those


@pytest.mark.parametrize("asynchronous", [False, True], ids=["admit", "aadmit"])
def test_a_wait_in_limits_inside_others_is_max_wait_s_in_all_not_in_each_window(asynchronous: bool) -> None:
    """5 s for room in the key's window, then 5 s more in the proxy's: 10 s in all, past max_wait_s=8, so refused
    once the key's window has room (its slot given back), never admitted after waiting 10 s."""
    clock = FakeTime(0.0)
    timing = {"clock": clock, "sleep": clock.sleep, "asleep": clock.asleep, "policy": "wait", "max_wait_s": 8.0, "window_s": 10.0}
    outer, inner = RateLimits(rpm=1, **timing), RateLimits(rpm=1, per="key", **timing)
    held = inner.inside(outer)
    inner.admit(key="k", model="m", tokens=1)  # the key's window is full until t=10
    clock.now = 5.0
    outer.admit(key=None, model="m", tokens=1)  # the proxy's until t=15
    with pytest.raises(RateLimitExceededError) as refused:
        asyncio.run(held.aadmit(key="k", model="m", tokens=1)) if asynchronous else held.admit(key="k", model="m", tokens=1)
    assert refused.value.scope == "client" and clock.now == 10.0  # waited for the key's window, then refused at once
    assert inner.admit(key="k", model="m", tokens=1).tokens == 1  # the key's slot it took was given back


def _sockets_to(port: int) -> int:
    """How many of this process's open TCP sockets are connected to `port` on this host (its Redis clients' connections)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # remote port; 01: established
                inodes.add(fields[9])
    fds = Path("/proc/self/fd")
    held = []
    for name in os.listdir(fds):
        with contextlib.suppress(OSError):  # a descriptor closed while listed
            held.append(os.readlink(fds / name))
    return sum(target.startswith("socket:[") and target[8:-1] in inodes for target in held)


@pytest.mark.parametrize("closing", ["close", "aclose"])
def test_closing_a_redis_window_closes_the_asyncio_client_of_a_loop_still_running_in_another_thread(
    closing: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`close()` (or `aclose()` on another loop) leaves no connection open: the sync client's, and the asyncio client of a
    loop that runs on in its thread, closed on that loop (never from another), without its loop having to end first."""
    unraisable: list[str] = []
    gc.collect()  # what earlier tests left unclosed is freed before the hook: only this test's connections are judged
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: unraisable.append(repr(raised.exc_value)))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            limits = RateLimits(rpm=100, store=redis_server.url)
            admission = asyncio.run_coroutine_threadsafe(limits.aadmit(key=None, model="m", tokens=1), loop).result(30)
            assert limits.release(admission)  # on the sync client: both clients hold a connection now
            assert _sockets_to(redis_server.port) >= 2
            limits.close() if closing == "close" else asyncio.run(limits.aclose())
            assert _sockets_to(redis_server.port) == 0 and loop.is_running()
            admission = asyncio.run_coroutine_threadsafe(limits.aadmit(key=None, model="m", tokens=1), loop).result(30)
            assert asyncio.run_coroutine_threadsafe(limits.arelease(admission), loop).result(30)  # opened again on next use
            limits.close()
            assert _sockets_to(redis_server.port) == 0
            gc.collect()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    to_redis = f"raddr=('127.0.0.1', {redis_server.port})"  # a socket to another test's server is none of this test's
    assert not [text for text in unraisable if "raddr=" not in text or to_redis in text]


def test_a_forked_child_closing_the_parents_redis_window_never_waits_on_the_parents_loops(redis_server: RedisServer) -> None:
    """A loop running in a thread of the parent runs in no thread of a forked child: the child's `close()` returns at
    once rather than waiting (here up to its 300 s socket timeout) for that loop to close its client."""
    window = RedisWindow(redis_server.url, timeout_s=300.0)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        asyncio.run_coroutine_threadsafe(window.arelease("client", "none"), loop).result(30)  # the loop's asyncio client opened
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                window.close()
                code = 0
            finally:
                os._exit(code)
        deadline, waited = time.monotonic() + 60, (0, 0)
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the child's exit, as test_fork does
        if waited[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert waited[0] == pid and os.waitstatus_to_exitcode(waited[1]) == 0, "the child waited on its parent's loop"
        window.close()  # in the parent: its loop's client closed on that loop
        assert _sockets_to(redis_server.port) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
