"""The rate windows a request's calls were decided in, as each decision saw them, for a server's ``x-ratelimit-*``
headers (the proxy's): read from the store's answer to the admission itself, never by a second trip to the store.

    with watching_windows() as seen:      # around the calls a request makes (a context variable: tasks it starts see it)
        await client.chat.completions.create(...)
    seen                                  # [WindowSeen(bucket, rpm, tpm, requests, tokens, reset_s), ...]

Windows are told apart by their store, bucket and limits: a key's window in this process and the proxy's, or one in
Redis and one in memory, may share a bucket name and limits and still count different calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from ._window import Verdict, Window


@dataclass(frozen=True)
class WindowSeen:
    """One decision's window: its limits, the requests and tokens it holds after the decision, and the seconds until it is empty."""

    bucket: str
    rpm: int | None
    tpm: int | None
    requests: int
    tokens: int
    reset_s: float
    reset_without_s: float = field(default=0.0, repr=False)  # an admission's reset without its own call: its slot given back
    call: str = field(default="", repr=False)  # the id of the call the decision was about
    place: str = field(default="", repr=False)  # the store holding the window (RateLimits.place)

    @property
    def window(self) -> tuple[str, str, int | None, int | None]:
        """What tells one window's decisions from another's: its store, bucket and limits (two stores, a key's window in
        this process inside the proxy's own, may name the same bucket with the same limits)."""
        return self.place, self.bucket, self.rpm, self.tpm


_SEEN: ContextVar[list[WindowSeen] | None] = ContextVar("blackbox_windows_seen", default=None)


@contextmanager
def watching_windows() -> Iterator[list[WindowSeen]]:
    """Collect the windows of the admissions and refusals made inside the block (and in the tasks it starts)."""
    seen: list[WindowSeen] = []
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


def note(place: str, bucket: str, window: Window, verdict: Verdict, call: str) -> None:
    """Record a decision's window where a caller is watching (and the store read its counts)."""
    seen = _SEEN.get()
    if seen is not None and verdict.requests is not None and verdict.tokens is not None:
        seen.append(WindowSeen(bucket, window.rpm, window.tpm, verdict.requests, verdict.tokens, verdict.reset_s, verdict.reset_without_s, call, place))


def given_back(place: str, bucket: str, window: Window, tokens: int, call: str) -> None:
    """The admission of ``call`` in ``bucket`` of the store ``place`` released after its decision (a window around it, or a budget, refused the
    call): the window's latest decision seen no longer counts its request and tokens. Where that decision was this
    call's, the reset is the window's without it (read with the admission: a store's release reads nothing); after a
    later call's, that call still holds the window, and its reset stands."""
    seen, wanted = _SEEN.get(), (place, bucket, window.rpm, window.tpm)
    latest = None if seen is None else next((index for index in reversed(range(len(seen))) if seen[index].window == wanted), None)
    if seen is not None and latest is not None:
        held = seen[latest]
        requests, left = max(0, held.requests - 1), max(0, held.tokens - tokens)
        reset_s = 0.0 if not requests else held.reset_without_s if held.call == call else held.reset_s
        seen[latest] = replace(held, requests=requests, tokens=left, reset_s=reset_s)
