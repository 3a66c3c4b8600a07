"""The two key stores: an SQLite file the processes of a host share, and Redis shared by proxy replicas.

SQLite: one ``keys`` table (the digest unique, a live name unique through a partial index) and a
``meta`` table holding the pepper, in WAL mode with ``BEGIN IMMEDIATE`` writes (``_sqlite``).
Redis, under a prefix: ``pepper``; a hash per key id ``id:<key_id>`` (each field JSON); a lookup
index ``digest:<hmac>`` -> key id; ``name:<name>`` -> the live key id; ``ids``, a sorted set by
creation time. Creating and revoking are Lua scripts, so replicas never race on a name. Any
failure to reach or read a store raises StoreUnavailableError: the proxy answers 503, never
serving a request it could not authenticate.

Both also count failed admin-key attempts for every worker sharing them (`_attempts.SharedAttempts`):
per scope ("admin:<address>"), the times of its failures in the last window, never a key presented. Counting a
wrong key is one atomic step, the count in the window and the insert together, so concurrent workers can't all
pass a check before any counts (a right key is only checked against the count): SQLite, one ``BEGIN IMMEDIATE``
transaction on a ``failures`` table (that also drops the expired rows), times from ``time.time``; Redis, one Lua
script on a sorted set ``failures:<scope>`` expiring with its window, on the server's clock so hosts agree on the
window, adding a random member.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError, StoreUnavailableError
from .._redis_url import REDIS_OR_UNIX, RedisURL
from .._sqlite import ProcessConnection, connect, immediate, refuse_foreign
from ._keys import ADMIN_KEY_ENV, KeyRecord, KeyStore, KeyStoreBase, SecretKey, new_pepper, plausible

DEFAULT_PREFIX = "blackbox:keys:"
BUSY_TIMEOUT_S = 30.0
REDIS_TIMEOUT_S = 5.0
_COLUMNS = ("key_id", "name", "budget_usd", "per_day_usd", "rpm", "tpm", "models", "reranker", "cache_namespace", "created_at", "revoked")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    (
        "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
        " budget_usd REAL, per_day_usd REAL, rpm INTEGER, tpm INTEGER, models TEXT NOT NULL, reranker TEXT,"
        " cache_namespace TEXT NOT NULL, created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)"
    ),
    "CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys (name) WHERE revoked = 0",
    "CREATE TABLE IF NOT EXISTS failures (scope TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS failures_scope ON failures (scope, at)",
    "CREATE INDEX IF NOT EXISTS failures_at ON failures (at)",
)
# What tells a key store's file (its own: the key store never shares one, its meta is not the call log's)
_OURS = {"keys": frozenset({"digest", *_COLUMNS})}
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SET', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return 1
"""
_REVOKE = """
redis.call('HSET', KEYS[1], 'revoked', 'true')
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
# KEYS: the scope's sorted set. ARGV: now ('': the server's TIME), window_s, limit, a unique member ('': a right key,
# only checked), ttl_ms. With the expired ones dropped: false when the scope has fewer than limit (the member added),
# else the wait until the limit-th newest leaves the window (none added).
_TAKE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now - window))
local limit = tonumber(ARGV[3])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= limit then
  local nth = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
  return string.format('%.6f', tonumber(nth[2]) + window - now)
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[1], string.format('%.6f', now), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return false
"""


def open_key_store(where: str | Path, *, admin_key: str | None = None, prefix: str = DEFAULT_PREFIX) -> KeyStore:
    """The key store at an SQLite file path or a ``redis://`` (``rediss://``, ``unix://``) URL.

    ``admin_key`` defaults to the environment's ``BLACKBOX_ADMIN_KEY``; without one, no request is admin.
    """
    if admin_key is None:
        admin_key = os.environ.get(ADMIN_KEY_ENV) or None
    if isinstance(where, str) and "://" in where:
        return RedisKeyStore(where, admin_key=admin_key, prefix=prefix)  # ConfigError for a URL that is not Redis's
    if not isinstance(where, (str, Path)) or not str(where):
        raise ConfigError(f"a key store is an SQLite file path or a redis:// URL, got {where!r}")
    return SQLiteKeyStore(Path(where), admin_key=admin_key)


class SQLiteKeyStore(KeyStoreBase):
    """Keys in an SQLite file (WAL), shared by the threads and processes of one host."""

    def __init__(self, path: Path, *, admin_key: str | None = None, timeout_s: float = BUSY_TIMEOUT_S) -> None:
        super().__init__(admin_key)
        self.path = Path(path).expanduser()
        if self.path.is_dir():  # SQLite would say only "unable to open database file"
            raise ConfigError(f"can't open the key store {self.path}: it is a folder; name a file in it, such as {self.path / 'keys.db'}")
        self._held = ProcessConnection(functools.partial(connect, self.path, timeout_s))  # this process's, opened again after a fork
        self._lock = self._held.lock
        try:
            refuse_foreign(self.path, _OURS, "key store", timeout_s)  # another application's database: left as it was
            with self._lock:
                db = self._db()
                with immediate(db):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('pepper', ?)", (new_pepper(),))
                    self._pepper_value = str(db.execute("SELECT value FROM meta WHERE name = 'pepper'").fetchone()[0])
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"can't open the key store {self.path}: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        """The file, never a key or digest."""
        return f"SQLiteKeyStore({str(self.path)!r})"

    def _db(self) -> sqlite3.Connection:
        """This process's connection (a forked child opens its own); call under the lock."""
        return self._held.get()

    @contextmanager
    def _using(self, action: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; SQLite failures as StoreUnavailableError (a duplicate name as ConfigError)."""
        try:
            with self._lock:
                yield self._db()
        except sqlite3.IntegrityError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"the key store {self.path} can't {action}: {type(exc).__name__}: {exc}") from None

    def _pepper(self) -> str:
        """Read once when the store was opened."""
        return self._pepper_value

    def _insert(self, record: KeyRecord, key_digest: str) -> None:
        """One INSERT; the partial unique index refuses a second live key of one name, in any process."""
        row = _row(record)
        try:
            with self._using("add a key") as db, immediate(db):
                db.execute(f"INSERT INTO keys (digest, {', '.join(_COLUMNS)}) VALUES (?{', ?' * len(_COLUMNS)})", (key_digest, *row))
        except sqlite3.IntegrityError:
            raise ConfigError(f"the name {record.name!r} already has a live key: revoke it first") from None

    def _by_digest(self, key_digest: str) -> tuple[str, KeyRecord] | None:
        """One indexed SELECT."""
        with self._using("look a key up") as db:
            row = db.execute(f"SELECT digest, {', '.join(_COLUMNS)} FROM keys WHERE digest = ?", (key_digest,)).fetchone()
        return None if row is None else (str(row[0]), _record(row[1:]))

    def list(self) -> list[KeyRecord]:
        """Every record, oldest first."""
        with self._using("list keys") as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM keys ORDER BY created_at, key_id").fetchall()
        return [_record(row) for row in rows]

    def _mark_revoked(self, record: KeyRecord) -> None:
        """One UPDATE."""
        with self._using("revoke a key") as db, immediate(db):
            db.execute("UPDATE keys SET revoked = 1 WHERE key_id = ?", (record.key_id,))

    def count_attempt(self, scope: str, limit: int, window_s: float, *, failed: bool, now: float | None = None) -> float | None:
        """None when ``scope`` has fewer than ``limit`` failures in the window (a `failed` one inserted now), else the
        seconds until it has (none inserted): one transaction, that also drops every scope's failures that left the window."""
        at = time.time() if now is None else now
        with self._using("count a failed attempt") as db, immediate(db):
            db.execute("DELETE FROM failures WHERE at <= ?", (at - window_s,))
            nth = db.execute("SELECT at FROM failures WHERE scope = ? ORDER BY at DESC LIMIT 1 OFFSET ?", (scope, limit - 1)).fetchone()
            if nth is not None:
                return float(nth[0]) + window_s - at
            if failed:
                db.execute("INSERT INTO failures (scope, at) VALUES (?, ?)", (scope, at))
        return None

    def close(self) -> None:
        """Close this process's connection."""
        self._held.close()


def _row(record: KeyRecord) -> tuple[Any, ...]:
    """A record as the table's columns (models as JSON)."""
    data = record.to_json()
    data["models"] = json.dumps(data["models"])
    data["revoked"] = int(record.revoked)
    return tuple(data[name] for name in _COLUMNS)


def _record(row: tuple[Any, ...] | list[Any]) -> KeyRecord:
    """A record from the table's columns."""
    data = dict(zip(_COLUMNS, row, strict=True))
    data["models"] = json.loads(data["models"])
    return KeyRecord.from_json(data)


class RedisKeyStore(KeyStoreBase):
    """Keys in Redis, shared by every proxy replica using the same URL and prefix."""

    def __init__(self, url: str, *, admin_key: str | None = None, prefix: str = DEFAULT_PREFIX, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        """Check ``url`` (ConfigError for a bad one or one the server refuses, its password never shown) and prepare the scripts."""
        super().__init__(admin_key)
        self._url = RedisURL(url, "key store", schemes=REDIS_OR_UNIX)
        self.url = self._url.shown
        self._prefix = prefix
        self._pepper_value: str | None = None
        # no retry: a create whose reply was lost, sent again, would find its own name taken
        self._client = self._url.client(decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._url.check(timeout_s, forgets="the tenant keys it holds (their requests would be refused)", prefix=prefix)  # a wrong password or database: ConfigError now, not at the first request
        self._create = self._client.register_script(_CREATE)
        self._revoke = self._client.register_script(_REVOKE)
        self._take = self._client.register_script(_TAKE)

    def __repr__(self) -> str:
        """The URL without its password."""
        return f"RedisKeyStore({self.url!r})"

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        """Redis, socket and decoding errors as StoreUnavailableError, the password scrubbed, the cause not chained."""
        import redis

        try:
            yield
        except (redis.RedisError, OSError, ValueError, TypeError, KeyError) as exc:
            detail = self._url.reason(exc)
            raise StoreUnavailableError(f"the key store {self.url} can't {action}: {detail}") from None

    def create(self, name: str, **limits: Any) -> tuple[SecretKey, KeyRecord]:
        """``KeyStoreBase.create`` under the pepper Redis holds now: a replica that kept one from before a restart
        without data would write a key no other replica finds."""
        self._pepper_changed()
        return super().create(name, **limits)

    def match(self, presented: str | None) -> KeyRecord | None:
        """``KeyStoreBase.match``; an unknown key is looked up once more if the pepper in Redis is no longer the
        one this process kept (another replica made a new one after a restart without data)."""
        found = super().match(presented)
        if found is None and plausible(presented) and self._pepper_changed():
            found = super().match(presented)
        return found

    def _pepper_changed(self) -> bool:
        """Whether Redis holds another pepper than the one kept (none too); it is then forgotten, to be read again."""
        with self._unavailable("read its pepper"):
            current = self._client.get(self._prefix + "pepper")
        changed = current != self._pepper_value
        if changed:
            self._pepper_value = None
        return changed

    def _pepper(self) -> str:
        """The pepper, set once by whichever replica comes first, then read once per process (and again when it changed)."""
        if self._pepper_value is None:
            with self._unavailable("read its pepper"):
                self._client.set(self._prefix + "pepper", new_pepper(), nx=True)
                value = self._client.get(self._prefix + "pepper")
                bytes.fromhex(value)
                self._pepper_value = value
        return self._pepper_value

    def _insert(self, record: KeyRecord, key_digest: str) -> None:
        """The create script: refused (0) when the name already has a live key."""
        pairs = [item for name, value in record.to_json().items() for item in (name, json.dumps(value))]
        keys = [f"{self._prefix}name:{record.name}", f"{self._prefix}id:{record.key_id}", f"{self._prefix}digest:{key_digest}", f"{self._prefix}ids"]
        with self._unavailable("add a key"):
            created = self._create(keys=keys, args=[record.key_id, repr(record.created_at), *pairs, "digest", json.dumps(key_digest)])
        if created != 1:
            raise ConfigError(f"the name {record.name!r} already has a live key: revoke it first")

    def _by_digest(self, key_digest: str) -> tuple[str, KeyRecord] | None:
        """The index, then the key's hash: two reads."""
        with self._unavailable("look a key up"):
            key_id = self._client.get(f"{self._prefix}digest:{key_digest}")
            if key_id is None:
                return None
            fields = self._client.hgetall(f"{self._prefix}id:{key_id}")
            return (json.loads(fields["digest"]), _from_hash(fields)) if fields else None

    def list(self) -> list[KeyRecord]:
        """Every record by creation time, read in one pipeline."""
        with self._unavailable("list keys"):
            ids = self._client.zrange(self._prefix + "ids", 0, -1)
            pipe = self._client.pipeline(transaction=False)
            for key_id in ids:
                pipe.hgetall(f"{self._prefix}id:{key_id}")
            return [_from_hash(fields) for fields in pipe.execute() if fields]

    def _mark_revoked(self, record: KeyRecord) -> None:
        """The revoke script: the record marked, its name freed if it still points at it."""
        with self._unavailable("revoke a key"):
            self._revoke(keys=[f"{self._prefix}id:{record.key_id}", f"{self._prefix}name:{record.name}"], args=[record.key_id])

    def count_attempt(self, scope: str, limit: int, window_s: float, *, failed: bool, now: float | None = None) -> float | None:
        """None when ``scope`` has fewer than ``limit`` failures in the window (a `failed` one added now, a unique
        member), else the seconds until it has (none added): one script, the set expiring a second after its window."""
        member = secrets.token_hex(16) if failed else ""
        args = ["" if now is None else repr(float(now)), repr(float(window_s)), limit, member, math.ceil(window_s * 1000) + 1000]
        with self._unavailable("count a failed attempt"):
            wait = self._take(keys=[f"{self._prefix}failures:{scope}"], args=args)
            return None if wait is None else float(wait)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _from_hash(fields: dict[str, str]) -> KeyRecord:
    """A record from its Redis hash (each field JSON; the digest left out)."""
    return KeyRecord.from_json({name: json.loads(value) for name, value in fields.items() if name != "digest"})
