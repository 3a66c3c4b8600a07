"""The seam between RateLimits and the store that keeps its windows: in-process, SQLite or Redis.

A store keeps, per scope, the events admitted in the last window (an id, a time, a token amount)
and admits a call atomically: check and record happen under one lock, one SQLite transaction or
one Redis script, so threads, processes and hosts sharing a store never admit too many together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._window import Verdict, Window

Clock = Callable[[], float]


@runtime_checkable
class WindowStore(Protocol):
    """What RateLimits needs from a store; ``clock=None`` means the store's own clock (Redis: the server's)."""

    def try_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """Admit and record the event if it fits the scope's window; a retried id that is already in is admitted."""
        ...

    async def atry_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """``try_admit`` without blocking the event loop."""
        ...

    def correct(self, scope: str, event_id: str, tokens: int) -> bool:
        """Replace an admitted event's token amount; False when the store no longer holds it (it left the window)."""
        ...

    async def acorrect(self, scope: str, event_id: str, tokens: int) -> bool:
        """``correct`` without blocking the event loop."""
        ...

    def release(self, scope: str, event_id: str) -> bool:
        """Drop an admitted event (its call was never sent); False when it is not in the window."""
        ...

    async def arelease(self, scope: str, event_id: str) -> bool:
        """``release`` without blocking the event loop."""
        ...

    def close(self) -> None:
        """Drop connections; the store's data stays for the others sharing it."""
        ...

    async def aclose(self) -> None:
        """``close``, awaiting asynchronous connections."""
        ...
