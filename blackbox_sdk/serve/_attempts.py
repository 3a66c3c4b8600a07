"""Failed authentication attempts per client address: a bound on guessing the admin key, one for every worker.

/login, /admin/* and the admin gate of /metrics and / count each wrong admin key a peer address presents;
the /v1 routes count each unknown tenant key in an instance of their own (`_state.Proxy.key_attempts`), so
neither kind of mistake locks out the other. Past MAX_FAILURES within WINDOW_S, that address is refused with
429 and Retry-After before any key it sends is compared (or looked up in the key store), until enough of its
failures leave the window. Wrong admin keys are counted in the key store when it is on SQLite or Redis
(`SharedAttempts`), so the workers and hosts sharing it allow MAX_FAILURES together; a key store of another kind
(or none) keeps the count in this process (`FailedAttempts`). While the shared store can't be reached, each
process counts in its own memory and logs it: an outage neither locks every client out nor lifts the bound, and
the admin key (compared without the store) still opens /metrics and the status page. Unknown tenant keys are
counted in each process: a tenant key holds 256 random bits, so that count bounds the lookups a sprayer costs
rather than a guess, and sharing it would cost every /v1 request a store read.
A request that presents no key at all guesses nothing and is not counted. Behind a reverse proxy the address is the one it forwards
(X-Forwarded-For), which uvicorn takes from a proxy it trusts (this host, or FORWARDED_ALLOW_IPS); from an
untrusted one, every client shares the proxy's address.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
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


class FailedAttempts:
    """Failed attempts per address in a sliding window, bounded in the addresses it keeps."""

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}  # address -> times of its failures in the window, oldest first
        self._lock = threading.Lock()

    def check(self, request: Request) -> None:
        """RateLimitExceededError (429 with Retry-After) when the request's address is past the limit."""
        address, now = peer(request), self._clock()
        with self._lock:
            times = self._recent(address, now)
            wait = times[0] + self.window_s - now if times is not None and len(times) >= self.limit else None
        if wait is not None:
            raise _refused(self.limit, wait)

    async def acheck(self, request: Request) -> None:
        """``check``: a lock held for microseconds, so the event loop is not blocked."""
        self.check(request)

    async def afailed(self, request: Request) -> None:
        """``failed``."""
        self.failed(request)

    def failed(self, request: Request) -> None:
        """Count one failed attempt of the request's address."""
        address, now = peer(request), self._clock()
        with self._lock:
            times = self._recent(address, now)
            if times is None:
                if len(self._failures) >= MAX_ADDRESSES:
                    del self._failures[min(self._failures, key=lambda known: self._failures[known][-1])]
                times = self._failures[address] = deque()
            times.append(now)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        """The address's failures still in the window (None when it has none left, and then forgotten)."""
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

    def count_failure(self, scope: str, window_s: float, now: float | None = None) -> None:
        """Record one failed attempt of ``scope`` (``now``: None for the store's own clock); StoreUnavailableError when down."""
        ...

    def failure_wait(self, scope: str, limit: int, window_s: float, now: float | None = None) -> float | None:
        """Seconds until ``scope`` has fewer than ``limit`` failures in the window (None: it has); StoreUnavailableError when down."""
        ...


class SharedAttempts:
    """Failed admin-key attempts per address, counted in a store every worker shares; in this process while it is down."""

    def __init__(self, store: FailureStore, *, limit: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 clock: Callable[[], float] | None = None) -> None:
        self.store, self.limit, self.window_s, self._clock = store, limit, window_s, clock
        self.local = FailedAttempts(limit, window_s)  # the count while the store can't be reached
        self._down = False  # whether the last call found the store down (logged once per outage)

    def check(self, request: Request) -> None:
        """RateLimitExceededError (429 with Retry-After) when the request's address is past the limit."""
        try:
            wait = self.store.failure_wait(self._scope(request), self.limit, self.window_s, self._now())
        except StoreUnavailableError as error:
            self._fall_back(error)
            self.local.check(request)
            return
        self._down = False
        if wait is not None:
            raise _refused(self.limit, wait)

    def failed(self, request: Request) -> None:
        """Count one failed attempt of the request's address."""
        try:
            self.store.count_failure(self._scope(request), self.window_s, self._now())
        except StoreUnavailableError as error:
            self._fall_back(error)
            self.local.failed(request)
            return
        self._down = False

    async def acheck(self, request: Request) -> None:
        """``check`` in a worker thread: the store's round trip must not block the event loop."""
        await run_in_threadpool(self.check, request)

    async def afailed(self, request: Request) -> None:
        """``failed`` in a worker thread."""
        await run_in_threadpool(self.failed, request)

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
