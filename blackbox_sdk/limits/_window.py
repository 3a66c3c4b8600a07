"""The sliding window's arithmetic, shared by the in-process and SQLite stores (the Redis script mirrors it).

A scope admits a call when, among the events admitted in the last ``window_s`` seconds, one more
request stays within ``rpm`` and its tokens stay within ``tpm``. An event admitted at ``at``
leaves the window when ``at + window_s <= now``. A refusal says how long until enough events
have left for the call to fit, so ``retry_after`` is exact when nothing else is admitted meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

Binding = Literal["rpm", "tpm"]


@dataclass(frozen=True)
class Window:
    """A scope's limits: at most ``rpm`` requests and ``tpm`` tokens admitted in any ``window_s`` seconds."""

    rpm: int | None
    tpm: int | None
    window_s: float


@dataclass(frozen=True)
class Verdict:
    """A store's answer to one admission: admitted (at the store's time ``at``), or how long to wait and why."""

    admitted: bool
    at: float
    wait_s: float = 0.0
    binding: Binding | None = None
    requests: int | None = None  # the window's requests and tokens after this decision (an admitted call's own counted in);
    tokens: int | None = None  # None where the store did not read them (a retried admission found already in)
    reset_s: float = 0.0  # seconds until every event now in the window has left it (OpenAI's x-ratelimit-reset-*)
    reset_without_s: float = 0.0  # an admission's: the same without its own call (the window's reset once its slot is given back)


def judge(
    window: Window,
    *,
    count: int,
    total: int,
    tokens: int,
    now: float,
    ordered: Callable[[], Iterable[tuple[float, int]]],
    newest: float | None = None,
) -> Verdict:
    """Whether a call of ``tokens`` fits beside ``count`` live events holding ``total`` tokens.

    ``ordered`` yields the live events oldest first as ``(at, tokens)``; it is read only on a
    refusal, to find when the oldest events that must leave will have left. ``newest``: the time of
    the latest live event (the window is empty again one window after it), for a refusal's ``reset_s`` and an
    admission's ``reset_without_s``.
    """
    need_requests = count + 1 - window.rpm if window.rpm is not None else 0
    need_tokens = total + tokens - window.tpm if window.tpm is not None else 0
    reset_s = 0.0 if newest is None else max(0.0, newest + window.window_s - now)
    if need_requests <= 0 and need_tokens <= 0:
        return Verdict(True, now, requests=count + 1, tokens=total + tokens, reset_s=window.window_s, reset_without_s=reset_s)
    wait_requests = 0.0 if need_requests <= 0 else math.inf
    wait_tokens = 0.0 if need_tokens <= 0 else math.inf
    freed_tokens = 0
    for freed_requests, (at, amount) in enumerate(ordered(), start=1):
        freed_tokens += amount
        if freed_requests == need_requests:
            wait_requests = at + window.window_s - now
        if need_tokens > 0 and freed_tokens >= need_tokens and math.isinf(wait_tokens):
            wait_tokens = at + window.window_s - now
        if not (math.isinf(wait_requests) or math.isinf(wait_tokens)):
            break
    binding: Binding = "rpm" if wait_requests >= wait_tokens else "tpm"
    return Verdict(False, now, max(wait_requests, wait_tokens), binding, requests=count, tokens=total, reset_s=reset_s)
