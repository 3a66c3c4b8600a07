"""`AsyncOpenAI` never makes its event loop wait on a store: cache, ledger and call-log work, a
server's tokenizer and the reranker run in worker threads, so one stalled store (a Redis that
stopped answering, an SQLite ledger locked by another process) or a slow reranker holds up only
the calls that need it, while every other coroutine on the loop goes on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import openai
import pytest

import blackbox_sdk
from servers import InstantUpstream, RedisServer

QUESTION = [{"role": "user", "content": "Name a colour."}]
PRICES = {"smollm2": {"input": 1.0, "output": 1.0}}
STALL_S = 1.2  # how long the store stalls: well past MAX_GAP_S, so a loop that waited on it is never mistaken for one slowed by a loaded machine
TICK_S = 0.01  # the heartbeat's period
MAX_GAP_S = 0.5  # the longest the heartbeat may go unserved while the store stalls


async def _longest_gap(call: Coroutine[Any, Any, Any], stall: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run `call` while a heartbeat ticks on the same loop and `stall()` (blocking, in a thread) holds a store;
    the call's result, the heartbeat's longest gap, and how long the call took."""
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    stalled = asyncio.create_task(asyncio.to_thread(stall))
    await asyncio.sleep(0.05)  # the store is stalled before the call starts
    start = time.perf_counter()
    result = await call
    took = time.perf_counter() - start
    await stalled
    running = False
    await beat
    return result, max(gaps), took


def test_a_stalled_redis_holds_up_the_call_but_never_the_event_loop(llama_server: str, redis_server: RedisServer, tmp_path: Path) -> None:
    """Cache and ledger on a Redis that stops answering for 0.6 s: the call waits for it, the loop does not."""
    budget = blackbox_sdk.Budget(total_usd=100.0, prices=PRICES, ledger=redis_server.url)
    client = blackbox_sdk.AsyncOpenAI(
        base_url=llama_server, api_key="sk-test", cache=redis_server.url, budget=budget, log=str(tmp_path / "calls.db")
    )

    def stall() -> None:
        with redis_server.paused():
            time.sleep(STALL_S)

    async def main() -> tuple[Any, float, float]:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)  # calibrates the endpoint
        fresh = [{"role": "user", "content": "Name a fruit."}]
        return await _longest_gap(client.chat.completions.create(model="smollm2", messages=fresh, max_tokens=4), stall)

    response, gap, took = asyncio.run(main())
    assert response.choices[0].message.content
    assert took >= STALL_S - 0.1  # the call did wait on the stalled store...
    assert gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"  # ...and the loop did not
    assert budget.report().outstanding_reservations == 0
    assert budget.spent() > 0


def _lock_for_a_while(path: Path) -> Callable[[], None]:
    """A stall: another connection holds the SQLite file's write lock for STALL_S."""

    def stall() -> None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(STALL_S)
        holder.execute("COMMIT")
        holder.close()

    return stall


def test_a_locked_sqlite_ledger_holds_up_the_call_but_never_the_event_loop(llama_server: str, tmp_path: Path) -> None:
    """Another process's connection holds the ledger's write lock for 0.6 s: the reservation queues, the loop goes on."""
    ledger = tmp_path / "ledger.db"
    budget = blackbox_sdk.Budget(total_usd=100.0, prices=PRICES, ledger=str(ledger))
    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", budget=budget)

    async def main() -> tuple[Any, float, float]:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
        return await _longest_gap(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4), _lock_for_a_while(ledger))

    response, gap, took = asyncio.run(main())
    assert response.blackbox.cost_usd > 0
    assert took >= STALL_S - 0.1
    assert gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"


def test_a_slow_reranker_scores_off_the_event_loop(llama_server: str) -> None:
    """A reranker that takes 0.6 s to score (a large model on a busy CPU) keeps the loop free meanwhile."""
    scored = threading.Event()

    def reranker(question: str, answers: list[str]) -> list[float]:
        time.sleep(STALL_S)
        scored.set()
        return [float(len(answer)) for answer in answers]

    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", reranker=reranker, rerank_n=2)

    async def main() -> tuple[Any, float, float]:
        call = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=1.0)
        return await _longest_gap(call, lambda: None)

    response, gap, took = asyncio.run(main())
    assert scored.is_set() and len(response.blackbox.scores) == 2
    assert took >= STALL_S
    assert gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"


def test_closing_the_client_writes_its_last_log_records_off_the_event_loop(llama_server: str, tmp_path: Path) -> None:
    """The call log's file is locked when the client closes with a record still queued: `close()` waits for
    the record to be written, the loop goes on meanwhile, and the record is in the log."""
    path = tmp_path / "calls.db"
    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", log=str(path))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(10.0)
        time.sleep(STALL_S)
        holder.execute("COMMIT")
        holder.close()

    async def call_then_close() -> None:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)  # queued: the writer waits for the lock
        release.set()
        await client.close()

    async def main() -> tuple[Any, float, float]:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)  # opens the log
        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait()
        try:
            return await _longest_gap(call_then_close(), lambda: None)
        finally:
            release.set()
            holder.join()

    _, gap, took = asyncio.run(main())
    assert took >= STALL_S - 0.1  # close did wait for the record to be written...
    assert gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"  # ...and the loop did not
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM calls").fetchone() == (2,)


@pytest.mark.parametrize("ending", ["server error", "timeout"])
def test_a_failed_call_gives_back_its_holds_off_the_event_loop(tmp_path: Path, ending: str) -> None:
    """The ledger, rate window and call log share one SQLite file, which another connection locks as the
    request is answered with a 500 (or as the caller's timeout cancels it): the release of the budget's hold
    and of the rate-limit admission, and the log record, wait for the lock in worker threads; the loop goes on,
    and once the lock is gone nothing is held and the failure is logged (a fault llama.cpp can't show on cue)."""
    path = tmp_path / "stores.db"
    holder, opened = threading.Thread(target=_hold_write_lock, args=(path, STALL_S)), threading.Event()

    def lock_then_answer() -> None:  # runs in the server as the request arrives (the first opens the stores)
        if not holder.is_alive() and not opened.is_set():
            opened.set()
            return
        holder.start()
        while not _locked(path):
            time.sleep(0.005)
        if ending == "timeout":
            time.sleep(STALL_S)

    upstream = InstantUpstream({"error": {"message": "boom"}}, before=lock_then_answer, status=500)
    budget = blackbox_sdk.Budget(total_usd=1.0, prices={"m": {"input": 1.0, "output": 1.0}}, ledger=str(path))
    limits = blackbox_sdk.RateLimits(rpm=100, store=str(path))
    client = blackbox_sdk.AsyncOpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0, budget=budget, rate_limit=limits, log=str(path))

    async def failing() -> BaseException:
        call = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
        try:
            await (asyncio.wait_for(call, 0.1) if ending == "timeout" else call)
        except (openai.InternalServerError, TimeoutError) as error:
            return error
        raise AssertionError("the call did not fail")

    async def main() -> tuple[Any, float, float]:
        with contextlib.suppress(openai.InternalServerError):
            await client.chat.completions.create(model="m", messages=QUESTION, max_tokens=4)
        return await _longest_gap(failing(), lambda: None)

    error, gap, took = asyncio.run(main())
    holder.join()
    upstream.close()
    assert isinstance(error, TimeoutError if ending == "timeout" else openai.InternalServerError)
    assert took >= STALL_S - 0.1 and gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"
    assert budget.report().outstanding_reservations == 0
    asyncio.run(client.close())  # the log's queued record written
    with sqlite3.connect(path) as db:
        kept = 1 if ending == "timeout" else 0  # a 500 gives the room back; a request cancelled while out keeps it (the server has it)
        assert db.execute("SELECT COUNT(*) FROM rate_events").fetchone() == (kept,)
        assert db.execute("SELECT COUNT(*) FROM calls WHERE error IS NOT NULL").fetchone() == (2,)  # the first call's and this one's


def _hold_write_lock(path: Path, seconds: float) -> None:
    """Hold `path`'s SQLite write lock for `seconds` from another connection."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    time.sleep(seconds)
    holder.execute("COMMIT")
    holder.close()


def _locked(path: Path) -> bool:
    """Whether another connection holds `path`'s write lock."""
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


def test_a_call_cancelled_twice_while_its_ledger_is_locked_leaves_no_hold(llama_server: str, tmp_path: Path) -> None:
    """Cancelled twice (a timeout, then its task) while its reservation waits for the ledger's lock: the second
    cancel still waits for the reservation, which the call then gives back; nothing stays held."""
    ledger = tmp_path / "ledger.db"
    budget = blackbox_sdk.Budget(total_usd=100.0, prices=PRICES, ledger=str(ledger))
    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", budget=budget)
    holder = threading.Thread(target=_hold_write_lock, args=(ledger, STALL_S))

    async def main() -> None:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)  # calibrates the endpoint
        holder.start()
        while not _locked(ledger):
            await asyncio.sleep(0.005)
        task = asyncio.create_task(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4))
        for _ in range(2):
            await asyncio.sleep(0.1)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await asyncio.to_thread(holder.join)

    asyncio.run(main())
    assert budget.report().outstanding_reservations == 0


def test_feedback_is_awaited_and_writes_off_the_event_loop(llama_server: str, tmp_path: Path) -> None:
    """`await client.feedback(...)`, as every call of an async client is awaited (it was a plain method: awaiting it
    raised TypeError), waits for a locked log file in a worker thread while the loop goes on."""
    path = tmp_path / "calls.db"
    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", log=str(path))

    async def main() -> tuple[Any, float, float]:
        answer = await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
        client.options.log.flush()  # type: ignore[attr-defined]
        try:
            return await _longest_gap(client.feedback(answer.blackbox.call_id, label="correct"), _lock_for_a_while(path))  # type: ignore[attr-defined]
        finally:
            await client.close()

    _, gap, took = asyncio.run(main())
    assert took >= STALL_S - 0.1  # the feedback waited for the lock...
    assert gap < MAX_GAP_S, f"the event loop was blocked for {gap:.3f} s"  # ...and the loop did not
    assert sqlite3.connect(path).execute("SELECT label FROM feedback").fetchall() == [("correct",)]


def test_feedback_cancelled_while_the_log_is_locked_leaves_no_unretrieved_error(tmp_path: Path) -> None:
    """Cancelled while it waits for the locked log file, feedback on an unknown call still ends in its worker with
    ConfigError; the cancel goes on, and that error is taken in, not reported by asyncio as never retrieved."""
    path = tmp_path / "calls.db"
    client = blackbox_sdk.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", log=str(path))
    problems: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: problems.append(repr(context)))
        with pytest.raises(blackbox_sdk.ConfigError):
            await client.feedback("bb-unknown", reward=1.0)  # type: ignore[attr-defined]
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
        task = asyncio.create_task(client.feedback("bb-unknown", reward=1.0))  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.3)
        locker.execute("COMMIT")
        locker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        gc.collect()
        await asyncio.sleep(0.1)
        await client.close()

    asyncio.run(main())
    assert [problem for problem in problems if "ConfigError" in problem] == []  # (clients earlier tests left may add their own)
