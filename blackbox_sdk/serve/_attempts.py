"""Failed authentication attempts per client address, in this process: a bound on guessing a key.

/login, /admin/* and the admin gate of /metrics and / count each wrong admin key a peer address presents;
the /v1 routes count each unknown tenant key in an instance of their own (`_state.Proxy.key_attempts`), so
neither kind of mistake locks out the other. Past MAX_FAILURES within WINDOW_S, that address is refused with
429 and Retry-After before any key it sends is compared (or looked up in the key store), until its oldest
failure leaves the window. Each process keeps its own count: several workers each allow MAX_FAILURES.
A request that presents no key at all guesses nothing and is not counted. Behind a reverse proxy the address is the one it forwards
(X-Forwarded-For), which uvicorn takes from a proxy it trusts (this host, or FORWARDED_ALLOW_IPS); from an
untrusted one, every client shares the proxy's address.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import Request

from .._exceptions import RateLimitExceededError

MAX_FAILURES = 10  # failed attempts an address may make within WINDOW_S
WINDOW_S = 60.0
MAX_ADDRESSES = 10_000  # addresses remembered at once; past it the one whose latest failure is oldest is forgotten


def peer(request: Request) -> str:
    """The client's address as the connection shows it ("" when the server gives none)."""
    return request.client.host if request.client is not None else ""


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
            message = f"Too many failed authentication attempts from this address: retry after {wait:.0f} s."
            raise RateLimitExceededError(message, limit=self.limit, scope="failed_authentication", retry_after=wait)

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
