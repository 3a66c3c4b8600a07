"""A SQLite file that another writer holds locked for a while, and a ticker on the event loop meanwhile: what a
test needs to show that an async call waited for the lock off the loop (the loop kept ticking) rather than on it."""

from __future__ import annotations

import asyncio
import itertools
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

HOLD_S = 1.5  # long enough that a call blocking the loop on the lock shows as a stall far over a tick


@dataclass
class LockWatch:
    """When the other writer let go of the file (``released``), and when the loop ticked meanwhile (``ticks``)."""

    released: float = math.inf  # a time once the lock is let go
    ticks: list[float] = field(default_factory=list)

    def longest_stall(self) -> float:
        """The longest the event loop went without ticking: far over a tick where something blocked it."""
        return max(later - earlier for earlier, later in itertools.pairwise(self.ticks))


@asynccontextmanager
async def locked_while_the_loop_ticks(path: Path, hold_s: float = HOLD_S) -> AsyncIterator[LockWatch]:
    """Hold SQLite's exclusive lock on ``path`` from a second connection for ``hold_s`` seconds while a task ticks
    on the running loop every 10 ms; the ticker runs before the body begins. On exit the lock is let go first."""
    watch = LockWatch()
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: opening a store on it waits on the busy timeout

    def release() -> None:
        watch.released = time.monotonic()
        locker.execute("ROLLBACK")

    async def tick() -> None:
        while True:
            watch.ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker, timer = asyncio.create_task(tick()), threading.Timer(hold_s, release)
    timer.start()
    try:
        await asyncio.sleep(0.05)  # the ticker is running before the body begins
        yield watch
    finally:
        timer.join()
        ticker.cancel()
        locker.close()
