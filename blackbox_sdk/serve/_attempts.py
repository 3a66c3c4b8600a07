"""Failed authentication attempts per client address: a bound on guessing the admin key, one for every worker.

/login, /admin/* and the admin gate of /metrics and / count each wrong admin key a peer address presents;
the /v1 routes count each unknown tenant key in an instance of their own (`_state.Proxy.key_attempts`), so
neither kind of mistake locks out the other. Before a presented key is compared (or looked up in the key store),
the request takes an attempt of its address in one atomic step (`guessing`): refused with 429 and Retry-After
when the address already has MAX_FAILURES within WINDOW_S, else counted at once as a failure, and given back
only when the key turns out right (a right key costs nothing). Checking first and counting after the comparison
would let a burst of concurrent guesses all pass the check before any was counted. An attempt whose key is still
being compared holds its place without being a failure: in this process's count (`FailedAttempts.atake`) a request
that finds every place held, fewer than MAX_FAILURES of them by failures, waits for those comparisons to end rather
than being refused, so a service sending many requests at once with a right key is never locked out by its own
requests, while a burst of wrong keys still has only MAX_FAILURES compared. Wrong admin keys are counted
in the key store when it is on SQLite or Redis (`SharedAttempts`: one transaction or one Lua script per attempt),
so the workers and hosts sharing it allow MAX_FAILURES together; there the admin key, compared in this process at
no cost, is compared first and counted before its answer goes out (a wrong one recorded, a right one only checked,
each refused with 429 when the address has none left), so only failures hold places. A key store of another kind
(or none) keeps the count in this process (`FailedAttempts`). While the shared store can't be reached, each process
counts in its own memory and logs it: an outage neither locks every client out nor
lifts the bound, and the admin key (compared without the store) still opens /metrics and the status page.
Unknown tenant keys are counted in each process: a tenant key holds 256 random bits, so that count bounds the
lookups a sprayer costs rather than a guess, and sharing it would cost every /v1 request a store read.
A request that presents no key at all guesses nothing: it takes no attempt. Behind a reverse proxy the address
is the one it forwards (X-Forwarded-For), which uvicorn takes from a proxy it trusts (this host, or
FORWARDED_ALLOW_IPS); from an untrusted one, every client shares the proxy's address.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .._exceptions import RateLimitExceededError, StoreUnavailableError
from .._logging import logger

MAX_FAILURES = 10  # failed attempts an address may make within WINDOW_S
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # addresses remembered at once; past it the one whose latest failure is oldest is forgotten


def peer(request: Request) -> str:
    """The client's address as the connection shows it ("" when the server gives none)."""
    return request.client.host if request.client is not None else ""


def _refused(limit: int, wait: float) -> RateLimitExceededError:
    """The 429 (with Retry-After) of an address past its failed attempts."""
    message = f"Too many failed authentication attempts from this address: retry after {wait:.0f} s."
    return RateLimitExceededError(message, limit=limit, scope="failed_authentication", retry_after=wait)


@dataclass(frozen=True)
class LocalSlot:
    """An attempt taken in this process's count: its address and time."""

    address: str
    at: float


class Guess:
    """A presented key being compared: its attempt is kept (a failure) only once it is found wrong."""

    def __init__(self) -> None:
        self.is_wrong = False

    def wrong(self) -> None:
        """The key was compared and is not the right one: its attempt stays counted."""
        self.is_wrong = True


class FailedAttempts:
    """Failed attempts per address in a sliding window, bounded in the addresses it keeps."""

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}  # address -> times of its attempts in the window, oldest first
        self._comparing: dict[str, int] = {}  # address -> its attempts whose keys are still being compared
        self._lock = threading.Lock()
        self._ended: asyncio.Event | None = None  # set when a comparison ends (`atake`'s waiters try again)

    def take(self, request: Request) -> LocalSlot:
        """Count an attempt of the request's address, or RateLimitExceededError (429 with Retry-After) when it is at
        the limit already: one step under the lock, so concurrent requests can't all pass a check first."""
        address, now = peer(request), self._clock()
        with self._lock:
            return self._taken(address, now)

    def _take_or_wait(self, request: Request) -> LocalSlot | None:
        """`take`, or None (nothing taken) when the address's places are all held but some only by keys still being
        compared, so the caller waits for one of those comparisons to end."""
        address, now = peer(request), self._clock()
        with self._lock:
            times = self._recent(address, now)
            held_by_failures = 0 if times is None else len(times) - self._comparing.get(address, 0)
            if times is not None and len(times) >= self.limit > held_by_failures:
                return None
            return self._taken(address, now)

    def _taken(self, address: str, now: float) -> LocalSlot:
        """An attempt of `address` counted now, its key being compared; the 429 when the window is full (under the lock)."""
        times = self._recent(address, now)
        if times is not None and len(times) >= self.limit:
            raise _refused(self.limit, times[-self.limit] + self.window_s - now)
        if times is None:
            if len(self._failures) >= MAX_ADDRESSES:
                del self._failures[min(self._failures, key=lambda known: self._failures[known][-1])]
            times = self._failures[address] = deque()
        times.append(now)
        self._comparing[address] = self._comparing.get(address, 0) + 1
        return LocalSlot(address, now)

    def keep(self, slot: LocalSlot) -> None:
        """Keep an attempt taken as a failure (its key was wrong)."""
        with self._lock:
            self._compared(slot)

    def give_back(self, slot: LocalSlot) -> None:
        """Remove an attempt taken (its key was right); nothing when it already left the window or was forgotten."""
        with self._lock:
            self._compared(slot)
            times = self._failures.get(slot.address)
            if times is not None and slot.at in times:
                times.remove(slot.at)
                if not times:
                    del self._failures[slot.address]

    @asynccontextmanager
    async def guessing(self, request: Request, presented: str | None) -> AsyncIterator[Guess]:
        """An attempt taken for a presented key before the block compares it (429 when the address has none left),
        given back on leaving unless the block called `Guess.wrong`; a request presenting no key takes none."""
        guess = Guess()
        slot = None if presented is None else await self.atake(request)
        try:
            yield guess
        finally:
            if slot is not None:
                await (self.akeep(slot) if guess.is_wrong else self.agive_back(slot))

    async def atake(self, request: Request) -> LocalSlot:
        """``take`` (a lock held for microseconds, so the event loop is not blocked), waiting while the address's
        places are held by keys still being compared rather than refusing it."""
        while True:
            slot = self._take_or_wait(request)
            if slot is not None:
                return slot
            if self._ended is None:
                self._ended = asyncio.Event()
            await self._ended.wait()

    async def agive_back(self, slot: LocalSlot) -> None:
        """``give_back``, waking the requests that wait for a place."""
        self.give_back(slot)
        self._wake()

    async def akeep(self, slot: LocalSlot) -> None:
        """``keep``, waking the requests that wait for a place (they are refused now if failures fill the window)."""
        self.keep(slot)
        self._wake()

    def _compared(self, slot: LocalSlot) -> None:
        """One comparison of the slot's address is over (under the lock)."""
        left = self._comparing.get(slot.address, 0) - 1
        if left > 0:
            self._comparing[slot.address] = left
        else:
            self._comparing.pop(slot.address, None)

    def _wake(self) -> None:
        """Let every waiting `atake` try again (on the event loop; the next waiters wait on a new event)."""
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.set()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        """The address's attempts still in the window (None when it has none left, and then forgotten)."""
        times = self._failures.get(address)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if times is not None and not times:
            del self._failures[address]
            return None
        return times


@runtime_checkable
class FailureStore(Protocol):
    """A store shared by the workers that counts failed attempts (the SQLite and Redis key stores)."""

    def count_attempt(self, scope: str, limit: int, window_s: float, *, failed: bool, now: float | None = None) -> float | None:
        """In one atomic step: None when ``scope`` has fewer than ``limit`` failures in the window (a ``failed`` one
        recorded now), else the seconds until it has (none recorded); ``now``: None for the store's own clock;
        StoreUnavailableError when down."""
        ...


class SharedAttempts:
    """Failed admin-key attempts per address, counted in a store every worker shares; in this process while it is down.

    The admin key is compared in this process, never looked up in the store, so the key is compared first and counted
    before its answer goes out, in one atomic step of the store: a wrong key records a failure (429 instead when the
    address has none left), a right key only checks that one is left (429 when none is). Only failures hold places, so
    right keys sent at once are never refused for each other; a burst of wrong keys still has only MAX_FAILURES answered
    401, every other one 429, and a right key among them answered 429 too once they fill the window."""

    def __init__(self, store: FailureStore, *, limit: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 clock: Callable[[], float] | None = None) -> None:
        self.store, self.limit, self.window_s, self._clock = store, limit, window_s, clock
        self.local = FailedAttempts(limit, window_s)  # the count while the store can't be reached
        self._down = False  # whether the last call found the store down (logged once per outage)

    @asynccontextmanager
    async def guessing(self, request: Request, presented: str | None) -> AsyncIterator[Guess]:
        """The block compares a presented key (calling `Guess.wrong` for a wrong one); on leaving it, the key is counted
        (`count`) before the caller answers: RateLimitExceededError (429) when the address has no attempt left. A request
        presenting no key, or whose block raised, counts nothing."""
        guess = Guess()
        yield guess
        if presented is not None:
            await run_in_threadpool(self.count, request, guess.is_wrong)

    def count(self, request: Request, wrong: bool) -> None:
        """Record a wrong key's failure, or check a right key's address, in the store (one transaction or script):
        RateLimitExceededError (429 with Retry-After) when the address is at the limit; in this process while the store is down."""
        try:
            wait = self.store.count_attempt(self._scope(request), self.limit, self.window_s, failed=wrong, now=self._now())
        except StoreUnavailableError as error:
            self._fall_back(error)
            slot = self.local.take(request)  # the 429 when the address is at the limit here
            (self.local.keep if wrong else self.local.give_back)(slot)
            return
        self._down = False
        if wait is not None:
            raise _refused(self.limit, wait)

    def _scope(self, request: Request) -> str:
        """Where the address's failures are counted in the store (tenant keys are never counted there)."""
        return f"admin:{peer(request)}"

    def _now(self) -> float | None:
        """The injected clock's time; None for the store's own (Redis: the server's, so hosts agree)."""
        return None if self._clock is None else self._clock()

    def _fall_back(self, error: StoreUnavailableError) -> None:
        """Log the first failure of an outage (its message names the store, never a key); the local count takes over."""
        if not self._down:
            logger.warning("proxy: failed admin key attempts are counted in this process until the store answers again: %s", error)
        self._down = True


Attempts = FailedAttempts | SharedAttempts


def admin_attempts(store: object) -> Attempts:
    """The count of failed admin-key attempts: in the key store when it can hold one (SQLite, Redis), else in this process."""
    return SharedAttempts(store) if isinstance(store, FailureStore) else FailedAttempts()
