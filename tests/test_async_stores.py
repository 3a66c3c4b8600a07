"""`AsyncOpenAI` never makes its event loop wait on a store: cache, ledger and call-log work, a
server's tokenizer and the reranker run in worker threads, so one stalled store (a Redis that
stopped answering, an SQLite ledger locked by another process) or a slow reranker holds up only
the calls that need it, while every other coroutine on the loop goes on."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import blackbox_sdk
from servers import RedisServer

QUESTION = [{"role": "user", "content": "Name a colour."}]
PRICES = {"smollm2": {"input": 1.0, "output": 1.0}}
STALL_S = 0.6  # how long the store stalls
TICK_S = 0.01  # the heartbeat's period
MAX_GAP_S = 0.25  # the longest the heartbeat may go unserved while the store stalls


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


def test_a_locked_sqlite_ledger_holds_up_the_call_but_never_the_event_loop(llama_server: str, tmp_path: Path) -> None:
    """Another process's connection holds the ledger's write lock for 0.6 s: the reservation queues, the loop goes on."""
    ledger = tmp_path / "ledger.db"
    budget = blackbox_sdk.Budget(total_usd=100.0, prices=PRICES, ledger=str(ledger))
    client = blackbox_sdk.AsyncOpenAI(base_url=llama_server, api_key="sk-test", budget=budget)

    def stall() -> None:
        holder = sqlite3.connect(ledger, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(STALL_S)
        holder.execute("COMMIT")
        holder.close()

    async def main() -> tuple[Any, float, float]:
        await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
        return await _longest_gap(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4), stall)

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
