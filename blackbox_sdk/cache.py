"""The response cache: a bucket of JSON responses per request key, on disk, never pickled.

A key is the SHA-256 of the canonical JSON of what decides the answer (schema version,
namespace, route, endpoint, the caller's request arguments minus transport options and
credentials). Its value is a *bucket*: the stored responses for that request, oldest first,
so sampled requests (temperature > 0, ``n`` > 1) can hold several distinct answers.

Storage is diskcache (SQLite plus files) with :class:`_JSONTextDisk`, which writes only JSON
text and refuses to decode anything else: a pickle planted in the database is dropped unread,
where diskcache's own ``JSONDisk`` would unpickle it. Every entry is wrapped with its format
version and creation time, so expired, corrupt and foreign values are detected and removed.

Modes: ``on`` reads and writes; ``read`` only reads; ``write`` only writes; ``refresh`` never
reads and each write *replaces* the bucket with the fresh entries; ``off`` does neither.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import diskcache  # type: ignore[import-untyped]  # ships no type hints
import openai
import pydantic

from .errors import CacheError, ConfigError
from .logs import logger
from .redact import is_secret_key

__all__ = [
    "CACHE_FORMAT",
    "Cache",
    "CacheMode",
    "CacheStats",
    "KEY_SCHEMA_VERSION",
    "TRANSPORT_KEYS",
    "canonical_params",
]

CacheMode = Literal["on", "read", "write", "refresh", "off"]
KEY_SCHEMA_VERSION = 1  # bump when the key recipe changes: old entries then simply miss
CACHE_FORMAT = 1  # version stamped on every stored entry
TRANSPORT_KEYS = frozenset({"extra_headers", "http_client", "max_retries", "timeout"})
DEFAULT_TIMEOUT_S = 60.0

_MODES: tuple[str, ...] = get_args(CacheMode)
_READS = frozenset({"on", "read"})
_WRITES = frozenset({"on", "write", "refresh"})
_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_FILE_PATTERN = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")


class _ForeignValueError(CacheError):
    """A stored row is not JSON text this cache wrote (a pickle, bytes, a path outside the cache)."""


class _JSONTextDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type hints
    """A diskcache Disk that stores only ``str`` keys and JSON text values, and decodes nothing else."""

    def get(self, key: Any, raw: bool) -> str:
        """A stored key, only when it is raw text (diskcache would unpickle the others)."""
        if not raw or not isinstance(key, str):
            raise _ForeignValueError("stored key is not text")
        return key

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> tuple[int, int, str | None, Any]:
        """Store JSON text: inline in SQLite when small, else in a ``.val`` file diskcache names."""
        if read or type(value) is not str:
            raise TypeError(f"the response cache stores JSON text only, not {type(value).__name__}")
        stored: tuple[int, int, str | None, Any] = super().store(value, read, key=key)
        return stored

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> str:
        """The stored text; any other mode (pickle, bytes) or a foreign file path is refused unread."""
        if mode == diskcache.core.MODE_RAW and type(value) is str:
            return value
        if mode == diskcache.core.MODE_TEXT and not read and _is_own_file(filename):
            return str(super().fetch(mode, filename, value, read))
        raise _ForeignValueError(f"stored value has mode {mode} and is not JSON text")

    def remove(self, file_path: str) -> None:
        """Delete a value file, but only one shaped like diskcache's own names inside the cache folder."""
        if _is_own_file(file_path):
            super().remove(file_path)


def _is_own_file(filename: str | None) -> bool:
    """Whether a stored file name is one diskcache generates (``ab/cd/<28 hex>.val``), not a planted path."""
    return filename is not None and _FILE_PATTERN.fullmatch(filename) is not None


@dataclass(frozen=True)
class CacheStats:
    """Counters for one cache store since it was opened, plus its current size on disk."""

    hits: int  # get() calls that returned at least one entry
    misses: int  # get() calls that returned none while the mode could read
    writes: int  # extend() calls that stored entries
    dropped: int  # entries removed because they were expired, corrupt or foreign
    keys: int  # buckets now stored
    volume_bytes: int  # estimated size of the store on disk


class _Store:
    """One open diskcache plus counters, shared by a Cache and the copies ``with_mode`` makes."""

    def __init__(self, directory: Path, timeout: float) -> None:
        """Open (creating) the diskcache at ``directory``; CacheError if the folder is unusable."""
        self.directory = directory
        self.lock = threading.Lock()
        self.counts = {"hits": 0, "misses": 0, "writes": 0, "dropped": 0}
        try:
            self.disk = diskcache.Cache(str(directory), timeout=timeout, disk=_JSONTextDisk)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(
                f"can't open the response cache at {directory} ({exc}): the folder must be creatable and "
                "writable (not read-only, not under a file) and not held locked by another process"
            ) from exc

    def count(self, name: str, amount: int = 1) -> None:
        """Add to one counter."""
        with self.lock:
            self.counts[name] += amount


class Cache:
    """A bucket of JSON responses per request key in a diskcache folder; see the module docstring."""

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
        self._namespace = namespace
        self._mode: CacheMode = mode
        self._ttl = ttl
        self._max_bucket = max_bucket
        self._store = _Store(Path(directory).expanduser(), timeout)

    def __repr__(self) -> str:
        """Where the store is and how this view of it behaves."""
        return f"Cache({str(self.directory)!r}, namespace={self._namespace!r}, mode={self._mode!r}, ttl={self._ttl!r})"

    def __enter__(self) -> Cache:
        """Use as a context manager that closes the store."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the store."""
        self.close()

    @property
    def directory(self) -> Path:
        """The cache folder."""
        return self._store.directory

    @property
    def namespace(self) -> str:
        """The namespace mixed into every key, so separate projects can share a folder."""
        return self._namespace

    @property
    def mode(self) -> CacheMode:
        """What this view may do: on, read, write, refresh or off."""
        return self._mode

    @property
    def ttl(self) -> float | None:
        """Seconds an entry stays valid after it was stored; None keeps entries until evicted."""
        return self._ttl

    @property
    def max_bucket(self) -> int:
        """The most entries one key keeps (the newest win)."""
        return self._max_bucket

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

    def key(self, *, route: str, endpoint: str, params: Mapping[str, Any]) -> str:
        """SHA-256 hex of the canonical JSON of (schema version, namespace, route, endpoint, params)."""
        if not isinstance(route, str) or not isinstance(endpoint, str):
            raise ConfigError("cache key: route and endpoint must be strings")
        material = {
            "v": KEY_SCHEMA_VERSION,
            "namespace": self._namespace,
            "route": route,
            "endpoint": endpoint,
            "params": canonical_params(params),
        }
        text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def get(self, key: str) -> list[dict[str, Any]]:
        """The bucket's entries, oldest first; [] on a miss or when this mode doesn't read."""
        _check_key(key)
        if not self.readable:
            return []
        text = self._read(key)
        entries, dropped = _live_entries(text, self._ttl, time.time())
        if dropped:
            self._prune(key)
        self._store.count("hits" if entries else "misses")
        logger.debug("cache %s for %s (%d entries)", "hit" if entries else "miss", key[:12], len(entries))
        return [wrapper["entry"] for wrapper in entries]

    def extend(self, key: str, entries: list[dict[str, Any]]) -> None:
        """Append entries to a bucket atomically (replace it in refresh mode), keeping the newest ``max_bucket``."""
        _check_key(key)
        wrapped = _wrap(entries, time.time())
        if not self.writable or not wrapped:
            return
        replace = self._mode == "refresh"
        with self._transaction(f"store {len(wrapped)} entries"):
            kept, dropped = ([], 0) if replace else _live_entries(self._read(key), self._ttl, time.time())
            self._write(key, (kept + wrapped)[-self._max_bucket:])
        self._store.count("dropped", dropped)
        self._store.count("writes")

    def clear(self) -> None:
        """Remove every bucket from the store (whatever the mode: this is an explicit admin action)."""
        with self._transaction("clear the cache"):
            self._store.disk.clear()

    def close(self) -> None:
        """Close the store's database connections; a later use reopens them."""
        self._store.disk.close()

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, writes and drops since opening, with the store's key count and size."""
        with self._store.lock:
            counts = dict(self._store.counts)
        try:
            keys, volume = len(self._store.disk), self._store.disk.volume()
        except sqlite3.Error as exc:
            raise CacheError(f"can't read the response cache at {self.directory}: {exc}") from exc
        return CacheStats(keys=keys, volume_bytes=volume, **counts)

    def _read(self, key: str) -> str | None:
        """The raw stored text for a key, or None; a foreign row (pickle, bytes) is deleted unread."""
        try:
            value = self._store.disk.get(key)
        except _ForeignValueError as exc:
            logger.warning("cache: dropping a foreign value at %s (%s)", key[:12], exc)
            self._store.count("dropped")
            self._delete_quietly(key)
            return None
        except sqlite3.Error as exc:
            raise CacheError(f"can't read the response cache at {self.directory}: {exc}") from exc
        return value if isinstance(value, str) else None

    def _write(self, key: str, wrappers: list[dict[str, Any]]) -> None:
        """Store a bucket's wrapped entries as JSON text with the store-level expiry, or delete it when empty."""
        if not wrappers:
            self._store.disk.delete(key)
            return
        text = json.dumps(wrappers, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        self._store.disk.set(key, text, expire=self._ttl)

    def _prune(self, key: str) -> None:
        """Rewrite a bucket without its expired or corrupt entries; skipped if the store is busy."""
        try:
            with self._store.disk.transact():
                text = self._read(key)
                kept, dropped = _live_entries(text, self._ttl, time.time())
                if dropped:
                    self._store.count("dropped", dropped)
                    self._write(key, kept)
        except (diskcache.Timeout, sqlite3.Error, OSError) as exc:
            logger.debug("cache: pruning %s skipped (%s)", key[:12], exc)

    def _delete_quietly(self, key: str) -> None:
        """Delete a key, tolerating a busy store (the row is then dropped again next time)."""
        try:
            self._store.disk.delete(key)
        except (diskcache.Timeout, sqlite3.Error, OSError) as exc:
            logger.debug("cache: deleting %s skipped (%s)", key[:12], exc)

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[None]:
        """A diskcache write transaction, with lock timeouts and disk errors raised as CacheError."""
        try:
            with self._store.disk.transact():
                yield
        except diskcache.Timeout as exc:
            raise CacheError(
                f"can't {action}: the response cache at {self.directory} is locked by another process or "
                "thread (timed out waiting); retry later or raise Cache(timeout=...)"
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise CacheError(
                f"can't {action} in the response cache at {self.directory}: {exc}. "
                "Check that the folder is writable and the disk is not full."
            ) from exc


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


def _check_key(key: str) -> None:
    """ConfigError unless the key is a 64-character lowercase hex digest, as ``Cache.key`` makes."""
    if not isinstance(key, str) or _KEY_PATTERN.fullmatch(key) is None:
        raise ConfigError(f"cache key must be a SHA-256 hex digest from Cache.key(); got {key!r}")


def _wrap(entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Each entry wrapped with the format version and creation time; ConfigError unless all are JSON objects."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError("cache entries must be a list of dicts")
    for entry in entries:
        _check_json(entry)
    return [{"bb": CACHE_FORMAT, "created": now, "entry": entry} for entry in entries]


def _check_json(entry: dict[str, Any]) -> None:
    """ConfigError unless the entry survives strict JSON encoding (no NaN, no objects)."""
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cache entries must be plain JSON (dicts, lists, str, finite numbers): {exc}") from exc


def _live_entries(text: str | None, ttl: float | None, now: float) -> tuple[list[dict[str, Any]], int]:
    """The well-formed, unexpired wrappers in a stored bucket, and how many others were dropped."""
    if text is None:
        return [], 0
    try:
        stored = json.loads(text)
    except ValueError:
        return [], 1
    if not isinstance(stored, list):
        return [], 1
    live = [item for item in stored if _is_wrapper(item) and (ttl is None or now - item["created"] < ttl)]
    return live, len(stored) - len(live)


def _is_wrapper(item: Any) -> bool:
    """Whether a stored item is an entry this cache wrote: our format, a finite time, a dict payload."""
    return (
        isinstance(item, dict)
        and item.keys() == {"bb", "created", "entry"}
        and item["bb"] == CACHE_FORMAT
        and isinstance(item["created"], (int, float))
        and not isinstance(item["created"], bool)
        and math.isfinite(item["created"])
        and isinstance(item["entry"], dict)
    )


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The request arguments as plain JSON for keying: unset/None/transport/credential keys gone, models expanded.

    Top level: None, openai ``NOT_GIVEN``/``omit``, transport options (``timeout``,
    ``extra_headers``, ...) and credential-named keys are dropped; credential-named keys inside
    ``extra_query`` too. At every depth: ``NOT_GIVEN``/``omit`` are dropped (never sent), a pydantic
    model class becomes its JSON schema, a pydantic instance its ``model_dump(mode="json")``,
    tuples become lists. Anything else that isn't JSON raises ConfigError naming where it is.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"cache key: params must be a mapping, not {type(params).__name__}")
    kept = {name: value for name, value in params.items() if not _is_dropped_top(name, value)}
    result = _canonical_mapping(kept, "params")
    if isinstance(result.get("extra_query"), dict):
        result["extra_query"] = {k: v for k, v in result["extra_query"].items() if not is_secret_key(k)}
    return result


def _is_dropped_top(name: Any, value: Any) -> bool:
    """Whether a top-level argument is left out of the key (unset, None, transport-only, or a credential)."""
    if not isinstance(name, str):
        return False
    return value is None or _is_unset(value) or name in TRANSPORT_KEYS or is_secret_key(name)


def _is_unset(value: Any) -> bool:
    """Whether a value is openai's "not given" / "omit" sentinel."""
    return isinstance(value, (openai.NotGiven, openai.Omit))


def _canonical(value: Any, where: str) -> Any:
    """Plain JSON for one value, recursively; ConfigError naming ``where`` for anything that isn't JSON."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cache key: {where} is {value!r}, which JSON can't hold")
        return float(value)
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        schema: dict[str, Any] = value.model_json_schema()
        return schema
    if isinstance(value, pydantic.BaseModel):
        return _canonical(value.model_dump(mode="json"), where)
    if isinstance(value, Mapping):
        return _canonical_mapping(value, where)
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value) if not _is_unset(item)]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray, set, frozenset)):
        raise ConfigError(f"cache key: {where} is a one-shot {type(value).__name__}; pass a list so it can be keyed and sent")
    raise ConfigError(f"cache key: {where} is a {type(value).__name__}, which is not JSON; pass JSON-able values")


def _canonical_mapping(value: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """A mapping with string keys and canonical values, openai sentinels dropped."""
    out: dict[str, Any] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise ConfigError(f"cache key: {where} has a non-string key {name!r}; JSON keys must be strings")
        if not _is_unset(item):
            out[name] = _canonical(item, f"{where}[{name!r}]")
    return out

