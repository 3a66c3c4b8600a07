"""The response cache: a bucket of JSON responses per request key, on disk, never pickled.

A key (see ``_keys``) is the SHA-256 of the canonical JSON of what decides the answer. Its value
is a *bucket*: the stored responses for that request, oldest first, so sampled requests
(temperature > 0, ``n`` > 1) can hold several distinct answers. Every entry is wrapped with its
format version and creation time (see ``_bucket``), so expired, corrupt and foreign values are
detected and removed. The bytes live in a :class:`~blackbox_sdk.cache.CacheStore`: diskcache in
a folder for one machine (see ``_disk``), or a Redis server that many processes and hosts share
(``redis://`` / ``rediss://``, see ``_redis``). While Redis can't be reached a lookup is a miss and
a write is skipped, with one warning per outage: a call never fails because the cache is down.

Modes: ``on`` reads and writes; ``read`` only reads; ``write`` only writes; ``refresh`` never
reads and each write *replaces* the bucket with the fresh entries; ``off`` does neither.

Single flight (``claim``, ``wait_for``, ``release_claim``; see ``_flight``): of identical requests
in flight at once, one caller claims the key and sends, the others wait for its stored answer;
``extend`` stores that answer and drops the claim in one write.
"""

from __future__ import annotations

import copy
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from .._closing import Closing
from .._exceptions import CacheError, ConfigError
from .._logging import logger
from .._redis_url import is_redis_url
from .._text import checked_path
from ._bucket import encode, joined, live_entries, wrap
from ._disk import DiskStore
from ._flight import SingleFlight, check_seconds, check_wait
from ._keys import cache_key, canonical_key, check_key
from ._redis import RedisStore
from ._store import CacheStore, CacheUnavailableError, ForeignValueError

CacheMode = Literal["on", "read", "write", "refresh", "off"]
DEFAULT_TIMEOUT_S = 60.0
MAX_TTL_S = 1e9  # about 32 years: any longer is never (None), and Redis's expiry in milliseconds stays in range

_MODES: tuple[str, ...] = get_args(CacheMode)
_SURROGATE = re.compile("[\ud800-\udfff]")
_READS = frozenset({"on", "read"})
_WRITES = frozenset({"on", "write", "refresh"})


@dataclass(frozen=True)
class CacheStats:
    """Counters for one cache store since it was opened, plus its current size on disk."""

    hits: int  # get() calls that returned at least one entry
    misses: int  # get() calls that returned none while the mode could read
    writes: int  # extend() calls that stored entries
    dropped: int  # entries removed because they were expired, corrupt or foreign
    keys: int  # buckets now stored
    volume_bytes: int  # estimated size of the store on disk


class _Counters:
    """Hits, misses, writes and drops, shared by a Cache and the copies ``with_mode`` makes."""

    def __init__(self) -> None:
        """Start every counter at zero."""
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "writes": 0, "dropped": 0}

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one counter."""
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """The counters now, as a copy."""
        with self._lock:
            return dict(self._counts)


class Cache(Closing):
    """A bucket of JSON responses per request key, in a diskcache folder or on Redis; see the module docstring."""

    _store: CacheStore

    def __init__(
        self,
        directory: str | Path,
        *,
        namespace: str = "default",
        mode: CacheMode = "on",
        ttl: float | None = None,
        max_bucket: int = 64,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Open a folder (``~`` expanded) or a ``redis://`` / ``rediss://`` URL; ``ttl`` (seconds) ages entries out.

        ``timeout`` bounds a write's wait for the folder's lock, or a Redis write's retries under
        contention (Redis connect and read timeouts are ``min(timeout, 2)`` s unless the URL sets them).
        A Redis cache connects on first use: one that is down then reads as a miss.
        """
        _check_options(namespace=namespace, mode=mode, ttl=ttl, max_bucket=max_bucket, timeout=timeout)
        self._namespace = namespace
        self._mode: CacheMode = mode
        self._ttl = ttl
        self._max_bucket = max_bucket
        self._counters = _Counters()
        self._directory: Path | None = None
        if is_redis_url(directory):
            self._store = RedisStore(str(directory), namespace=namespace, timeout=timeout, writes=mode in _WRITES)
        elif isinstance(directory, str) and "://" in directory:  # not a folder named "unix:" holding a password
            scheme = directory.partition("://")[0]
            raise ConfigError(f"a cache is a folder or a redis:// or rediss:// URL; {scheme}:// is neither (for a Redis socket, use a redis:// server address)")
        else:
            self._directory = checked_path(directory, "the cache folder")
            self._store = DiskStore(self._directory, timeout=timeout)
        self._flights = SingleFlight(self._store)

    def __repr__(self) -> str:
        """Where the store is (a Redis URL without its password) and how this view of it behaves."""
        return f"Cache({self.location!r}, namespace={self._namespace!r}, mode={self._mode!r}, ttl={self._ttl!r})"

    @property
    def namespace(self) -> str:
        """The namespace mixed into every key (and on Redis, into every stored name), so tenants stay apart."""
        return self._namespace

    def key(self, *, route: str, endpoint: str, params: Mapping[str, Any]) -> str:
        """SHA-256 hex of the canonical JSON of (schema version, namespace, route, endpoint, params)."""
        return cache_key(namespace=self._namespace, route=route, endpoint=endpoint, params=params)

    def key_of_canonical(self, *, route: str, endpoint: str, canonical: dict[str, Any]) -> str:
        """``key`` for params that are already ``canonical_params``' output: the call path walks them once."""
        return canonical_key(namespace=self._namespace, route=route, endpoint=endpoint, canonical=canonical)

    @property
    def mode(self) -> CacheMode:
        """What this view may do: on, read, write, refresh or off."""
        return self._mode

    @property
    def readable(self) -> bool:
        """Whether ``get`` looks anything up in this mode."""
        return self._mode in _READS

    @property
    def writable(self) -> bool:
        """Whether ``extend`` stores anything in this mode."""
        return self._mode in _WRITES

    def with_mode(self, mode: CacheMode) -> Cache:
        """The same store seen through another mode, for a per-call override; self is unchanged."""
        _check_options(namespace=self._namespace, mode=mode, ttl=self._ttl, max_bucket=self._max_bucket)
        other = copy.copy(self)
        other._mode = mode
        return other

    @property
    def ttl(self) -> float | None:
        """Seconds an entry stays valid after it was stored; None keeps entries until evicted."""
        return self._ttl

    def get(self, key: str) -> list[dict[str, Any]]:
        """The bucket's entries, oldest first; [] on a miss, when this mode doesn't read, or while the store is down."""
        check_key(key)
        if not self.readable:
            return []
        entries = self._lookup(key)
        self._counters.add("hits" if entries else "misses")
        logger.debug("cache %s for %s (%d entries)", "hit" if entries else "miss", key[:12], len(entries))
        return entries

    @property
    def max_bucket(self) -> int:
        """The most entries one key keeps (the newest win)."""
        return self._max_bucket

    def extend(self, key: str, entries: list[dict[str, Any]]) -> None:
        """Append entries to a bucket atomically across threads, processes and hosts (replace it in refresh mode), keeping
        the newest ``max_bucket``; a claim this object holds on ``key`` is dropped in the same transaction. While Redis
        can't be reached the write is skipped (one warning per outage) and the claim kept for ``release_claim``."""
        check_key(key)
        fresh = wrap(entries, time.time())  # encoded once, here: a retried change only joins texts
        if not self.writable or not fresh:
            return
        replace, dropped, claim = self._mode == "refresh", 0, self._flights.mine(key)

        def change(current: str | None) -> str | None:
            nonlocal dropped
            kept, dropped, _ = ([], 0, False) if replace else live_entries(current, self._ttl, time.time())
            return joined(kept, fresh, self._max_bucket)

        try:
            self._store.update(key, change, expire=self._ttl, action=f"store {len(fresh)} entries", discard=claim)
        except CacheUnavailableError as exc:
            logger.debug("cache: storing %s skipped (%s)", key[:12], exc)
            return
        if claim is not None:
            self._flights.dropped(key, claim)
        self._counters.add("dropped", dropped)
        self._counters.add("writes")

    def claim(self, key: str, ttl_s: float) -> bool:
        """Single flight: True for the one caller (thread, process or host) that should send this request now; see
        ``claim_reading``."""
        return self.claim_reading(key, ttl_s)[0]

    def claim_reading(self, key: str, ttl_s: float) -> tuple[bool, list[dict[str, Any]]]:
        """``claim``, and the bucket's live entries read in the same step (one transaction, one round trip). The winner
        sends, stores its answer with ``extend`` (dropping the claim), then calls ``release_claim``; the others call
        ``wait_for``. ``ttl_s`` is the claim's lease. Only mode ``on`` claims; in other modes (True, what ``get``
        returns), and while the store can't be reached, every caller is a winner."""
        check_key(key)
        if self._mode != "on":
            check_seconds("ttl_s", ttl_s, zero=False)
            return True, self._lookup(key) if self.readable else []
        won, text = self._flights.claim(key, ttl_s)
        return won, self._count_wait(self._live(key, text))  # found now: a hit

    def release_claim(self, key: str) -> None:
        """Give up a claim this cache object won, so waiting callers stop waiting; a no-op for any other key
        and once ``extend`` has dropped the claim with the answer."""
        check_key(key)
        self._flights.release(key)

    def wait_for(self, key: str, timeout_s: float, want: int = 1) -> list[dict[str, Any]]:
        """Single flight: wait for the winner's answer, polling until the bucket holds ``want`` entries,
        the claim is gone (the winner stored its answer or failed) or ``timeout_s`` is up.

        Returns the entries then stored, maybe fewer than ``want`` or none: the caller sends for the
        rest. [] at once when this mode doesn't read or the store can't be reached. A non-empty
        result counts as a hit.
        """
        check_key(key)
        if not self.readable:
            check_wait(timeout_s, want)
            return []
        return self._count_wait(self._flights.wait(key, timeout_s, want, self._lookup))

    async def wait_for_async(self, key: str, timeout_s: float, want: int = 1) -> list[dict[str, Any]]:
        """``wait_for`` for an event loop (``AsyncOpenAI``): the pauses between polls don't block the loop."""
        check_key(key)
        if not self.readable:
            check_wait(timeout_s, want)
            return []
        return self._count_wait(await self._flights.wait_async(key, timeout_s, want, self._lookup))

    @property
    def directory(self) -> Path | None:
        """The cache folder; None for a Redis cache (see ``location``)."""
        return self._directory

    @property
    def location(self) -> str:
        """Where the buckets live, safe to print: the folder, or the Redis URL without user and password."""
        return self._store.location

    def clear(self) -> None:
        """Remove every bucket (on Redis: of this namespace), whatever the mode: an explicit admin action."""
        self._store.clear()

    def close(self) -> None:
        """Close the store's connections; a later use reopens them."""
        self._store.close()

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, writes and drops since opening, with the store's key count and size."""
        counts = self._counters.snapshot()
        keys, volume = self._store.size()
        return CacheStats(keys=keys, volume_bytes=volume, **counts)

    def _lookup(self, key: str) -> list[dict[str, Any]]:
        """The live entries at ``key``, dropping what is expired, corrupt or foreign; [] while the store is down."""
        try:
            text = self._read(key)
        except CacheUnavailableError as exc:
            logger.debug("cache: lookup of %s missed (%s)", key[:12], exc)
            return []
        return self._live(key, text)

    def _live(self, key: str, text: str | None) -> list[dict[str, Any]]:
        """The live entries of the text read at ``key``, the bucket pruned of what is expired or corrupt."""
        live, dropped, corrupt = live_entries(text, self._ttl, time.time())
        if corrupt:
            logger.warning("cache: dropping a corrupt bucket at %s (not a JSON list of entries)", key[:12])
        if dropped:
            self._prune(key)
        return [wrapper["entry"] for wrapper in live]

    def _count_wait(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Count a wait (or a claim's read) that ended with entries as a hit."""
        if entries:
            self._counters.add("hits")
        return entries

    def _read(self, key: str) -> str | None:
        """The raw stored text for a key, or None; a foreign or undecodable value is dropped with a warning."""
        try:
            return self._store.get(key)
        except ForeignValueError as exc:
            logger.warning("cache: dropping an unreadable value at %s (%s)", key[:12], exc)
            self._counters.add("dropped")
            self._delete_quietly(key)
            return None

    def _prune(self, key: str) -> None:
        """Rewrite a bucket without its expired or corrupt entries; skipped if the store is busy or down."""
        pruned = 0

        def change(current: str | None) -> str | None:
            nonlocal pruned
            kept, pruned, _ = live_entries(current, self._ttl, time.time())
            if not pruned:
                return current
            return encode(kept) if kept else None

        try:
            self._store.update(key, change, expire=self._ttl, action="prune a bucket")
        except CacheError as exc:
            logger.debug("cache: pruning %s skipped (%s)", key[:12], exc)
            return
        self._counters.add("dropped", pruned)

    def _delete_quietly(self, key: str) -> None:
        """Delete a key, tolerating a busy or unreachable store (the value is then dropped again next time)."""
        try:
            self._store.delete(key)
        except CacheError as exc:
            logger.debug("cache: deleting %s skipped (%s)", key[:12], exc)


def _check_options(*, namespace: str, mode: str, ttl: float | None, max_bucket: int, timeout: float = 1.0) -> None:
    """ConfigError for a bad mode, ttl, bucket size, namespace or timeout."""
    if mode not in _MODES:
        raise ConfigError(f"cache mode must be one of {', '.join(_MODES)}; got {mode!r}")
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"cache namespace must be a non-empty string; got {namespace!r}")
    if not namespace.isascii() and _SURROGATE.search(namespace):  # Redis stores it as UTF-8: every lookup would raise
        raise ConfigError(f"cache namespace must be valid Unicode text; got {namespace[:40]!r} (a lone surrogate, as bytes that are not UTF-8 decode to)")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_TTL_S):
        raise ConfigError(f"cache ttl must be a positive number of seconds up to {MAX_TTL_S:.0e} (about 32 years), or None to keep entries until evicted; got {ttl!r}")
    if isinstance(max_bucket, bool) or not isinstance(max_bucket, int) or max_bucket < 1:
        raise ConfigError(f"cache max_bucket must be a positive integer; got {max_bucket!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"cache timeout must be a positive number of seconds; got {timeout!r}")
