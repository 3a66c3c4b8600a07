"""Single flight: identical requests in flight at the same moment are sent by one caller; the others wait.

A caller that finds no cached answer *claims* the request's key: an atomic add of a short-lived
marker in the cache's own store (on one machine an upsert into its ``Claims`` table that a live claim refuses, a Lua ``SET ... PX`` on Redis), so
exactly one thread, process or host wins; the bucket is read in the same step (one transaction, one round
trip), so that an answer another fetcher stored between the caller's lookup and its claim is seen. The winner sends, then stores the answer and drops its
claim in one transaction (the store's ``update``), or on failure releases the claim; the others
poll the bucket until it holds the entries they want, the claim is gone (the winner finished or
failed) or their wait is up, and then send themselves if they still need to.
A claim's ``ttl_s`` is a lease: a winner that dies frees the key when it lapses; a value at a claim's
key without an expiry (planted, or left by a foreign writer) is no claim and is taken over. A store that
can't be reached makes every caller a winner: nothing waits on a cache that is down.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from .._exceptions import CacheError, ConfigError
from .._logging import logger
from .._process import random_hex
from ._store import CacheStore, Claim

CLAIM_SUFFIX = ":claim"  # a claim lives beside the bucket, under the bucket's key plus this
FIRST_POLL_S, MAX_POLL_S = 0.005, 0.05  # waiting polls start fast and back off to this interval

Lookup = Callable[[str], list[dict[str, Any]]]


class SingleFlight:
    """Claims on cache keys in one store, and the tokens of the claims this object's callers hold."""

    def __init__(self, store: CacheStore) -> None:
        """Claims go to ``store``, next to the buckets."""
        self._store = store
        self._tokens: dict[str, tuple[str, float]] = {}  # key -> (token, when its lease lapses on time.monotonic())
        self._unreleased: dict[str, tuple[str, float]] = {}  # the same, for claims whose release failed
        self._lock = threading.Lock()

    def claim(self, key: str, ttl_s: float) -> tuple[bool, str | None]:
        """Whether this caller won the key for ``ttl_s`` seconds (True too when the store can't be reached), and the
        bucket's text read right after, in the same step: what a fetcher that finished meanwhile stored."""
        check_seconds("ttl_s", ttl_s, zero=False)
        self._release_unreleased()
        token = random_hex(16)  # unguessable and unique, like uuid4's
        lapses = time.monotonic() + ttl_s
        try:
            won, text = self._store.claim(key + CLAIM_SUFFIX, token, expire=ttl_s, bucket=key)
        except CacheError as exc:
            logger.debug("cache: claiming %s skipped, sending without single flight (%s)", key[:12], exc)
            return True, None
        if won:
            with self._lock:
                self._tokens[key] = (token, lapses)
                self._unreleased.pop(key, None)
        return won, text

    def mine(self, key: str) -> Claim | None:
        """The claim this object's caller holds on ``key``, as the store's (key, token), for ``update`` to drop."""
        with self._lock:
            held = self._tokens.get(key)
        return None if held is None else (key + CLAIM_SUFFIX, held[0])

    def dropped(self, key: str, claim: Claim) -> None:
        """Note that the store dropped ``claim`` (with the answer): a later ``release`` of it does nothing."""
        with self._lock:
            if self._tokens.get(key, ("",))[0] == claim[1]:
                del self._tokens[key]

    def release(self, key: str) -> None:
        """Give up a claim this object's caller won, unless it already lapsed and someone else holds it."""
        with self._lock:
            held = self._tokens.pop(key, None)
        if held is not None:
            self._discard(key, *held)

    def _discard(self, key: str, token: str, lapses: float) -> None:
        """Drop the claim if it still holds ``token``; when the store fails, kept for the next ``claim`` to release
        (else it would hold identical requests on every host back until it lapses)."""
        try:
            self._store.discard(key + CLAIM_SUFFIX, token)
        except CacheError as exc:
            logger.debug("cache: releasing %s skipped; released by a later claim, else it lapses at its ttl (%s)", key[:12], exc)
            with self._lock:
                self._unreleased[key] = (token, lapses)

    def _release_unreleased(self) -> None:
        """Release again the claims whose release failed and whose lease has not lapsed yet."""
        with self._lock:
            pending, self._unreleased = self._unreleased, {}
        now = time.monotonic()
        for key, (token, lapses) in pending.items():
            if lapses > now:
                self._discard(key, token, lapses)

    def held(self, key: str) -> bool:
        """Whether anyone holds a live claim on ``key``; False when the store can't tell."""
        try:
            return self._store.get(key + CLAIM_SUFFIX) is not None
        except CacheError:
            return False

    def wait(self, key: str, timeout_s: float, want: int, lookup: Lookup) -> list[dict[str, Any]]:
        """Poll until ``lookup(key)`` has ``want`` entries, the claim is gone or ``timeout_s`` is up."""
        rounds = self._rounds(key, timeout_s, want, lookup)
        while True:
            pause, entries = _step(rounds)
            if entries is not None:
                return entries
            time.sleep(pause)

    async def wait_async(self, key: str, timeout_s: float, want: int, lookup: Lookup) -> list[dict[str, Any]]:
        """``wait`` for an event loop: each poll of the store runs in a worker thread (a stalled store
        never blocks the loop) and the pauses between polls are ``asyncio.sleep``."""
        rounds = self._rounds(key, timeout_s, want, lookup)
        while True:
            pause, entries = await asyncio.to_thread(_step, rounds)
            if entries is not None:
                return entries
            await asyncio.sleep(pause)

    def _rounds(self, key: str, timeout_s: float, want: int, lookup: Lookup) -> Generator[float, None, list[dict[str, Any]]]:
        """The pauses between polls, backing off; returns the entries when the wait is over."""
        check_wait(timeout_s, want)
        deadline, pause = time.monotonic() + timeout_s, FIRST_POLL_S
        while True:
            entries, left = self._poll(key, want, deadline, lookup)
            if left <= 0:
                return entries
            yield min(pause, left)
            pause = min(pause * 2, MAX_POLL_S)

    def _poll(self, key: str, want: int, deadline: float, lookup: Lookup) -> tuple[list[dict[str, Any]], float]:
        """One look: the entries, and the seconds left to wait (0 when done).

        The claim is checked before the bucket: a winner stores before it releases, so a claim seen
        gone means the bucket read next already holds whatever the winner stored.
        """
        gone = not self.held(key)
        entries = lookup(key)
        done = gone or len(entries) >= want
        return entries, 0.0 if done else deadline - time.monotonic()


def _step(rounds: Generator[float, None, list[dict[str, Any]]]) -> tuple[float, list[dict[str, Any]] | None]:
    """One poll: (the pause before the next, None), or (0, the entries) once the wait is over."""
    try:
        return next(rounds), None
    except StopIteration as done:
        return 0.0, done.value


def check_seconds(name: str, value: Any, *, zero: bool) -> None:
    """ConfigError unless ``value`` is a finite number of seconds, positive (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ConfigError(f"{name} must be a {'non-negative' if zero else 'positive'} number of seconds; got {value!r}")


def check_wait(timeout_s: float, want: int) -> None:
    """ConfigError for a bad wait or a bad number of wanted entries."""
    check_seconds("timeout_s", timeout_s, zero=True)
    if isinstance(want, bool) or not isinstance(want, int) or want < 1:
        raise ConfigError(f"want must be a positive integer; got {want!r}")
