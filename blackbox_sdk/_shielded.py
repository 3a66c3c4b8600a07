"""Store work an event loop waits for, carried to its end however often the waiting task is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await `work` (a worker thread's future, a Redis script sent): a cancel meanwhile, once or more, waits for it
    to end before one CancelledError goes on, so that what it took (a hold, a claim, a window's slot) is known
    to the caller, which gives it back, and nothing the caller does next runs beside it; an error it ended with
    gives way to the cancel."""
    running = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():  # a second cancel (a timeout and a cancelled task both) still waits for it
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([running])
        if not running.cancelled():
            running.exception()  # taken in: the cancel goes on, and asyncio reports no error "never retrieved"
        raise
