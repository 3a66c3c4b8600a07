"""A shared store's outage as the cache sees it: one warning when it goes, a short rest between tries.

While a Redis cache is unreachable every lookup is a miss and every store is skipped; without a
rest each call would wait for a connection to fail again, and without the one-warning rule each
call would log. Both are kept here, per store, thread-safe.
"""

from __future__ import annotations

import threading
import time

from .._logging import logger
from ._store import CacheUnavailableError

RETRY_AFTER_S = 0.5  # after a failure, calls skip the store this long before one tries it again


class Outage:
    """Whether a shared store is down now; logs once per outage and once when it answers again."""

    def __init__(self, where: str, *, retry_after_s: float = RETRY_AFTER_S) -> None:
        """Track the store at ``where`` (a printable location, no password)."""
        self._where = where
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        """Whether the last try failed and no try has succeeded since."""
        return self._down

    def check(self, action: str) -> None:
        """CacheUnavailableError at once, without a network try, while the store rests after a failure."""
        with self._lock:
            resting = self._down and time.monotonic() < self._retry_at
        if resting:
            raise CacheUnavailableError(f"can't {action}: the cache's store at {self._where} is unreachable (retrying shortly)")

    def failed(self, reason: str) -> None:
        """Record a failed try: the first of an outage logs one warning; the store then rests a moment."""
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + self._retry_after_s
        if first:
            logger.warning(
                "cache: the store at %s is unreachable (%s); lookups miss and stores are skipped until it answers again",
                self._where,
                reason,
            )

    def recovered(self) -> None:
        """Record a successful try, noting the end of an outage once."""
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("cache: the store at %s answers again", self._where)
