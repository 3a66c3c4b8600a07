"""The response cache: a bucket of JSON responses per request key, on disk, never pickled.

A key (see ``_keys``) is the SHA-256 of the canonical JSON of what decides the answer. Its value
is a *bucket*: the stored responses for that request, oldest first, so sampled requests
(temperature > 0, ``n`` > 1) can hold several distinct answers. Every entry is wrapped with its
format version and creation time (see ``_bucket``), so expired, corrupt and foreign values are
detected and removed. The bytes live in a :class:`~blackbox_sdk.cache.CacheStore`; today that
is diskcache (see ``_disk``).

Modes: ``on`` reads and writes; ``read`` only reads; ``write`` only writes; ``refresh`` never
reads and each write *replaces* the bucket with the fresh entries; ``off`` does neither.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from .._closing import Closing
from .._exceptions import CacheError, ConfigError
from .._logging import logger
from ._bucket import encode, live_entries, wrap
from ._disk import DiskStore
from ._keys import cache_key, check_key
from ._store import CacheStore, ForeignValueError

CacheMode = Literal["on", "read", "write", "refresh", "off"]
DEFAULT_TIMEOUT_S = 60.0

_MODES: tuple[str, ...] = get_args(CacheMode)
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
    """A bucket of JSON responses per request key in a diskcache folder; see the module docstring."""

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
        """Open the store at ``directory`` (``~`` expanded); ``ttl`` (seconds) ages entries out, ``timeout`` bounds lock waits."""
        _check_options(namespace=namespace, mode=mode, ttl=ttl, max_bucket=max_bucket, timeout=timeout)
        self._directory = Path(directory).expanduser()
        self._namespace = namespace
        self._mode: CacheMode = mode
        self._ttl = ttl
        self._max_bucket = max_bucket
        self._counters = _Counters()
        self._store = DiskStore(self._directory, timeout=timeout)

    def __repr__(self) -> str:
        """Where the store is and how this view of it behaves."""
        return f"Cache({str(self.directory)!r}, namespace={self._namespace!r}, mode={self._mode!r}, ttl={self._ttl!r})"

    @property
    def namespace(self) -> str:
        """The namespace mixed into every key, so separate projects can share a folder."""
        return self._namespace

    def key(self, *, route: str, endpoint: str, params: Mapping[str, Any]) -> str:
        """SHA-256 hex of the canonical JSON of (schema version, namespace, route, endpoint, params)."""
        return cache_key(namespace=self._namespace, route=route, endpoint=endpoint, params=params)

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
        """The bucket's entries, oldest first; [] on a miss or when this mode doesn't read."""
        check_key(key)
        if not self.readable:
            return []
        entries, dropped = live_entries(self._read(key), self._ttl, time.time())
        if dropped:
            self._prune(key)
        self._counters.add("hits" if entries else "misses")
        logger.debug("cache %s for %s (%d entries)", "hit" if entries else "miss", key[:12], len(entries))
        return [wrapper["entry"] for wrapper in entries]

    @property
    def max_bucket(self) -> int:
        """The most entries one key keeps (the newest win)."""
        return self._max_bucket

    def extend(self, key: str, entries: list[dict[str, Any]]) -> None:
        """Append entries to a bucket atomically (replace it in refresh mode), keeping the newest ``max_bucket``."""
        check_key(key)
        wrapped = wrap(entries, time.time())
        if not self.writable or not wrapped:
            return
        replace = self._mode == "refresh"
        with self._store.transaction(f"store {len(wrapped)} entries"):
            kept, dropped = ([], 0) if replace else live_entries(self._read(key), self._ttl, time.time())
            self._write(key, (kept + wrapped)[-self._max_bucket:])
        self._counters.add("dropped", dropped)
        self._counters.add("writes")

    @property
    def directory(self) -> Path:
        """The cache folder."""
        return self._directory

    def clear(self) -> None:
        """Remove every bucket from the store (whatever the mode: this is an explicit admin action)."""
        with self._store.transaction("clear the cache"):
            self._store.clear()

    def close(self) -> None:
        """Close the store's database connections; a later use reopens them."""
        self._store.close()

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, writes and drops since opening, with the store's key count and size."""
        counts = self._counters.snapshot()
        keys, volume = self._store.size()
        return CacheStats(keys=keys, volume_bytes=volume, **counts)

    def _read(self, key: str) -> str | None:
        """The raw stored text for a key, or None; a foreign row (pickle, bytes) is deleted unread."""
        try:
            return self._store.get(key)
        except ForeignValueError as exc:
            logger.warning("cache: dropping a foreign value at %s (%s)", key[:12], exc)
            self._counters.add("dropped")
            self._delete_quietly(key)
            return None

    def _write(self, key: str, wrappers: list[dict[str, Any]]) -> None:
        """Store a bucket's wrapped entries as JSON text with the store-level expiry, or delete it when empty."""
        if wrappers:
            self._store.set(key, encode(wrappers), expire=self._ttl)
        else:
            self._store.delete(key)

    def _prune(self, key: str) -> None:
        """Rewrite a bucket without its expired or corrupt entries; skipped if the store is busy."""
        try:
            with self._store.transaction("prune a bucket"):
                kept, dropped = live_entries(self._read(key), self._ttl, time.time())
                if dropped:
                    self._counters.add("dropped", dropped)
                    self._write(key, kept)
        except CacheError as exc:
            logger.debug("cache: pruning %s skipped (%s)", key[:12], exc)

    def _delete_quietly(self, key: str) -> None:
        """Delete a key, tolerating a busy store (the row is then dropped again next time)."""
        try:
            with self._store.transaction("drop a foreign value"):
                self._store.delete(key)
        except CacheError as exc:
            logger.debug("cache: deleting %s skipped (%s)", key[:12], exc)


def _check_options(*, namespace: str, mode: str, ttl: float | None, max_bucket: int, timeout: float = 1.0) -> None:
    """ConfigError for a bad mode, ttl, bucket size, namespace or timeout."""
    if mode not in _MODES:
        raise ConfigError(f"cache mode must be one of {', '.join(_MODES)}; got {mode!r}")
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"cache namespace must be a non-empty string; got {namespace!r}")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl < math.inf):
        raise ConfigError(f"cache ttl must be a positive number of seconds or None; got {ttl!r}")
    if isinstance(max_bucket, bool) or not isinstance(max_bucket, int) or max_bucket < 1:
        raise ConfigError(f"cache max_bucket must be a positive integer; got {max_bucket!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"cache timeout must be a positive number of seconds; got {timeout!r}")
