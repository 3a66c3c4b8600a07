"""MemoryWindow: the windows of one process, behind one lock (the store when ``store=None``)."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

from ._store import Clock
from ._window import Verdict, Window, judge

_SWEEP_EVERY = 256  # admissions between sweeps of scopes no call has touched lately


@dataclass
class _Event:
    """One admitted call: when, how many tokens, and its id."""

    expires: float
    at: float
    tokens: int
    id: str


@dataclass
class _Scope:
    """A scope's live events ordered by expiry, and their token total."""

    events: list[_Event] = field(default_factory=list)
    total: int = 0

    def trim(self, now: float) -> None:
        """Drop the events that have left the window."""
        cut = bisect.bisect_right(self.events, now, key=lambda event: event.expires)
        self.total -= sum(event.tokens for event in self.events[:cut])
        del self.events[:cut]

    def rewind(self, now: float, window_s: float) -> None:
        """Events recorded after ``now`` (the clock went back) count as admitted now: they leave within one window, not the jump's length."""
        if self.events and self.events[-1].at > now:
            for event in self.events:
                if event.at > now:
                    event.at, event.expires = now, now + window_s
            self.events.sort(key=lambda event: event.expires)

    def find(self, event_id: str) -> _Event | None:
        """The live event with this id, if any."""
        return next((event for event in self.events if event.id == event_id), None)


class MemoryWindow:
    """Sliding windows in this process's memory: shared by the threads and tasks using one RateLimits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[str, _Scope] = {}
        self._admissions = 0

    def try_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """Admit and record the event if it fits, under the lock."""
        with self._lock:
            now = (clock or time.time)()
            self._sweep(now)
            live = self._scopes.setdefault(scope, _Scope())
            live.trim(now)
            live.rewind(now, window.window_s)
            if live.find(event_id) is not None:
                return Verdict(True, now)
            verdict = judge(window, count=len(live.events), total=live.total, tokens=tokens, now=now,
                            ordered=lambda: ((event.at, event.tokens) for event in live.events),
                            newest=live.events[-1].at if live.events else None)  # ordered by expiry: the latest admitted last
            if verdict.admitted:
                bisect.insort(live.events, _Event(now + window.window_s, now, tokens, event_id), key=lambda event: event.expires)
                live.total += tokens
            return verdict

    async def atry_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """``try_admit``: the lock is held for microseconds, so the loop is not blocked."""
        return self.try_admit(scope, event_id, tokens, window, clock)

    def correct(self, scope: str, event_id: str, tokens: int) -> bool:
        """Replace a live event's token amount."""
        with self._lock:
            live = self._scopes.get(scope)
            event = live.find(event_id) if live is not None else None
            if live is None or event is None:
                return False
            live.total += tokens - event.tokens
            event.tokens = tokens
            return True

    async def acorrect(self, scope: str, event_id: str, tokens: int) -> bool:
        """``correct``."""
        return self.correct(scope, event_id, tokens)

    def release(self, scope: str, event_id: str) -> bool:
        """Drop a live event."""
        with self._lock:
            live = self._scopes.get(scope)
            event = live.find(event_id) if live is not None else None
            if live is None or event is None:
                return False
            live.events.remove(event)
            live.total -= event.tokens
            return True

    async def arelease(self, scope: str, event_id: str) -> bool:
        """``release``."""
        return self.release(scope, event_id)

    def close(self) -> None:
        """Nothing to drop: the windows live as long as their RateLimits."""

    async def aclose(self) -> None:
        """Nothing to drop."""

    def _sweep(self, now: float) -> None:
        """Now and then, forget scopes whose events have all left (many keys would otherwise pile up)."""
        self._admissions += 1
        if self._admissions % _SWEEP_EVERY:
            return
        for name in list(self._scopes):
            self._scopes[name].trim(now)
            if not self._scopes[name].events:
                del self._scopes[name]
