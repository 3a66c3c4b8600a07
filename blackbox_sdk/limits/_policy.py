"""The admission policy, written once for sync and async: a generator that yields the I/O it needs.

``admission_flow`` asks the store (``Attempt``) and, under ``policy="wait"``, pauses (``Pause``)
until the window has room, at most ``max_wait_s`` in all, the store's own time to answer counted in;
``admit`` and ``aadmit`` only perform those effects, blocking or awaiting. A refusal is a RateLimitExceededError with ``retry_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Literal

from .._exceptions import RateLimitExceededError
from .._redact import redact_text
from .._shielded import to_the_end
from ._seen import note
from ._store import Clock, WindowStore
from ._window import Verdict, Window

MIN_PAUSE_S = 0.001  # a wait rounded to nothing still yields, so a busy window is not polled in a spin

Policy = Literal["raise", "wait"]


@dataclass(frozen=True)
class Admission:
    """An admitted call: its scope (``"client"``, ``"key:team-a"``, ``"model:gpt-4o"``), id, tokens, time and wait."""

    scope: str
    id: str
    tokens: int
    at: float
    waited_s: float
    bucket: str  # the scope's name in the store (its window length included)
    outer: Admission | None = None  # the call's admission in the window these limits are held within (RateLimits.within)


@dataclass(frozen=True)
class Request:
    """One call asking for room: everything the flow and the store need to decide."""

    scope: str
    bucket: str
    id: str
    tokens: int
    window: Window
    policy: Policy
    max_wait_s: float
    clock: Clock | None
    place: str = ""  # the store holding the window, to tell it from another store's of the same bucket (RateLimits.place)

    @property
    def store_args(self) -> tuple[str, str, int, Window, Clock | None]:
        """The arguments of the store's ``try_admit`` for this request."""
        return self.bucket, self.id, self.tokens, self.window, self.clock


@dataclass(frozen=True)
class Attempt:
    """Effect: ask the store to admit the request now."""

    request: Request


@dataclass(frozen=True)
class Pause:
    """Effect: sleep this many seconds, then ask again."""

    seconds: float


Flow = Generator["Attempt | Pause", "Verdict | None", Admission]


def _refusal(request: Request, verdict: Verdict, waited_s: float) -> RateLimitExceededError:
    """The error for a call the window has no room for (after ``waited_s`` of waiting)."""
    binding = verdict.binding or "rpm"
    limit = request.window.rpm if binding == "rpm" else request.window.tpm
    what = "request" if binding == "rpm" else f"{request.tokens} tokens"
    waited = f" after waiting {waited_s:.2f}s" if waited_s else ""
    message = (f"rate limit {binding}={limit} per {request.window.window_s:g}s reached for {request.scope}: "
               f"no room for {what}{waited}; retry after {verdict.wait_s:.2f}s")
    unit = "requests" if binding == "rpm" else "tokens"
    return RateLimitExceededError(redact_text(message), limit=float(limit or 0), scope=redact_text(request.scope), retry_after=verdict.wait_s, unit=unit)


def _never_fits(request: Request) -> RateLimitExceededError:
    """The error for a call larger than the whole tpm: no wait makes room for it."""
    message = (f"a call of {request.tokens} tokens can never fit tpm={request.window.tpm} for {request.scope} "
               f"(lower max_tokens, or for a call that sets none the default_max_output_tokens of its budget or RateLimits, "
               f"or raise tpm); retry_after is inf")
    return RateLimitExceededError(
        redact_text(message), limit=float(request.window.tpm or 0), scope=redact_text(request.scope), retry_after=math.inf, unit="tokens",
    )


def admission_flow(request: Request) -> Flow:
    """Ask until admitted; refuse at once under "raise", or once waiting would pass ``max_wait_s`` under "wait". A call
    larger than the whole tpm is refused after one attempt, which the store refuses too: its window's counts are seen."""
    never_fits = request.window.tpm is not None and request.tokens > request.window.tpm
    waited = in_store = 0.0  # the pauses, and the time the store took to answer (a locked SQLite file, a slow Redis)
    while True:
        asked = time.monotonic()
        verdict = yield Attempt(request)
        in_store += time.monotonic() - asked
        assert verdict is not None
        note(request.place, request.bucket, request.window, verdict, request.id)
        if never_fits:
            raise _never_fits(request)
        if verdict.admitted:
            return Admission(request.scope, request.id, request.tokens, verdict.at, waited, request.bucket)
        if request.policy == "raise" or waited + in_store + verdict.wait_s > request.max_wait_s:  # max_wait_s bounds both
            raise _refusal(request, verdict, waited)
        pause = max(verdict.wait_s, MIN_PAUSE_S)
        yield Pause(pause)
        waited += pause


def _advance(flow: Flow, reply: Verdict | None) -> Attempt | Pause | Admission:
    """The flow's next effect, or its Admission once it is done."""
    try:
        return flow.send(reply)
    except StopIteration as done:
        return done.value


def run_sync(flow: Flow, store: WindowStore, sleep: Callable[[float], object]) -> Admission:
    """Perform a flow's effects with blocking calls."""
    step = _advance(flow, None)
    while not isinstance(step, Admission):
        reply = store.try_admit(*step.request.store_args) if isinstance(step, Attempt) else sleep(step.seconds)
        step = _advance(flow, reply if isinstance(reply, Verdict) else None)
    return step


async def run_async(flow: Flow, store: WindowStore, asleep: Callable[[float], Awaitable[object]]) -> Admission:
    """Perform a flow's effects with awaits."""
    step = _advance(flow, None)
    while not isinstance(step, Admission):
        reply = (await _attempt(store, step.request)) if isinstance(step, Attempt) else (await asleep(step.seconds))
        step = _advance(flow, reply if isinstance(reply, Verdict) else None)
    return step


async def _attempt(store: WindowStore, request: Request) -> Verdict:
    """One store attempt, carried to its end when the caller is cancelled meanwhile, once or more (the store's
    worker thread, or a Redis script already sent, runs on): a slot it took is then given back, rather than
    counted for a window by a call that never got its admission. The pauses between attempts are not
    shielded: a cancel while waiting for room ends the wait at once."""
    attempt = asyncio.ensure_future(store.atry_admit(*request.store_args))
    try:
        return await to_the_end(attempt)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a store out of reach: the slot leaves with its window
            if attempt.result().admitted:
                await to_the_end(store.arelease(request.bucket, request.id))
        raise
