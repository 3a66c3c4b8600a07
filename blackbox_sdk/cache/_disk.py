"""The cache's store on disk: diskcache (SQLite plus files) that holds JSON text and never unpickles.

:class:`_JSONTextDisk` writes only JSON text and refuses to decode anything else: a pickle planted
in the database is dropped unread, where diskcache's own ``JSONDisk`` would unpickle it, a value
file that is not UTF-8 is refused like any foreign value, and a file path outside the cache folder
is neither read nor deleted.

A folder another application uses is refused before diskcache opens it (``ConfigError``, nothing
written): one whose ``cache.db`` is an SQLite database without diskcache's tables, another application's
diskcache (a key this cache never writes: opening it would clear, evict and count that application's
entries, and rewrite the settings diskcache keeps in the folder), or one that holds other files (dot
files such as ``.gitkeep`` aside) and no ``cache.db``. A new or empty folder, or this cache's, is fine.

diskcache culls (drops expired rows, then evicts past its size limit) inside every write by default:
three more statements per write. The store opens it with ``cull_limit=0`` and calls diskcache's own
``cull`` after the first write and then at most every ``CULL_EVERY_S`` seconds or ``CULL_EVERY_WRITES``
writes: an expired row waits until then (a read never serves it: diskcache's ``get`` skips it and
the Cache checks its TTL) and the folder may pass its size limit by what is written in between.

On the call path the store writes diskcache's rows itself, one statement each, where diskcache's ``set`` takes
two or three: an answer small enough to stay in the database (under 32 KB) is one upsert of the row diskcache
writes (raw text, size 0, no file), and its triggers keep its count and size. Anything else (a value in a file,
a value this cache did not write, a delete) goes through diskcache.

Single flight's claims (keys ending in ``CLAIM_SUFFIX``) live in a table of their own in the same database,
``Claims`` (key, token, expiry; no rowid, no index beside its key), not in diskcache's: a claim is written and
deleted within one call, and a row of diskcache's touches three indexes and two triggers each time. Taking a
free or lapsed claim is one upsert, dropping it one delete; lapsed claims are deleted when the store culls.
The store's ``get`` of a claim's key reads that table. A claim that an SDK before 2026-12-06 wrote in
diskcache's table is not seen (the two versions do not single-flight each other) and is culled when it lapses.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import diskcache  # type: ignore[import-untyped]  # ships no type hints

from .._exceptions import CacheError, ConfigError
from .._logging import logger
from .._process import pid as this_pid
from .._sqlite import hold_over_fork, refuse_foreign
from ._flight import CLAIM_SUFFIX
from ._store import Change, Claim, ForeignValueError

CULL_EVERY_S = 60.0  # the longest a writing store goes between culls
CULL_EVERY_WRITES = 256  # ... or this many writes, whichever comes first
_FILE_PATTERN = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")
_OWN_NAMES = re.compile(r"cache\.db(-wal|-shm|-journal)?|[0-9a-f]{2}")  # what diskcache puts in its folder
_DISKCACHE_TABLES = {"Settings": frozenset({"key", "value"}), "Cache": frozenset({"key", "raw", "mode", "filename", "value"})}
_OWN_KEY_LENGTHS = (64, 64 + len(CLAIM_SUFFIX))  # the text keys this cache writes there: a bucket's (SHA-256 hex), and an older SDK's claims
# The rows diskcache itself writes for a text key and a small text value (raw, size 0, no file): see the module docstring.
_UPSERT = (
    "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
    f" VALUES (?, 1, ?, ?, ?, 0, NULL, 0, {diskcache.core.MODE_RAW}, NULL, ?)"
    " ON CONFLICT (key, raw) DO UPDATE SET store_time = excluded.store_time, expire_time = excluded.expire_time,"
    " access_time = excluded.access_time, access_count = 0, tag = NULL, size = 0, mode = excluded.mode, filename = NULL,"
    " value = excluded.value"
)
_ROW = "SELECT mode, filename, value, expire_time FROM Cache WHERE key = ? AND raw = 1"
# Single flight's claims: a small table of this cache's own beside diskcache's (see the module docstring).
_CLAIMS = "CREATE TABLE IF NOT EXISTS Claims (key TEXT PRIMARY KEY, token TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID"
_TAKE = (
    "INSERT INTO Claims (key, token, expires) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET token = excluded.token, expires = excluded.expires WHERE Claims.expires <= ?"
)
_HELD = "SELECT token FROM Claims WHERE key = ? AND expires > ?"
_DROP = "DELETE FROM Claims WHERE key = ? AND token = ?"
_LAPSED = "DELETE FROM Claims WHERE expires <= ?"


class _JSONTextDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache ships no type hints
    """A diskcache Disk that stores only ``str`` keys and JSON text values, and decodes nothing else."""

    def get(self, key: Any, raw: bool) -> str:
        """A stored key, only when it is raw text (diskcache would unpickle the others)."""
        if not raw or not isinstance(key, str):
            raise ForeignValueError("stored key is not text")
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
            try:
                return str(super().fetch(mode, filename, value, read))
            except UnicodeDecodeError as exc:
                raise ForeignValueError(f"stored value file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        raise ForeignValueError(f"stored value has mode {mode} and is not JSON text")

    def remove(self, file_path: str) -> None:
        """Delete a value file, but only one shaped like diskcache's own names inside the cache folder."""
        if _is_own_file(file_path):
            super().remove(file_path)


class _ClosingCache(diskcache.Cache):  # type: ignore[misc]  # diskcache ships no type hints
    """diskcache's Cache that remembers the connection each thread opens, so a dropped store closes every one: diskcache
    keeps them in thread-locals, which close none, and Python 3.13 warns (ResourceWarning) at each one collected open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """diskcache's Cache (which connects), its connections remembered from the first."""
        self._opened: dict[sqlite3.Connection, threading.Thread] = {}  # each open connection and the thread that opened it
        self._opened_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def _con(self) -> sqlite3.Connection:
        """This thread's connection, opened now if it has none (diskcache's own steps), remembered, and shareable
        (``check_same_thread=False``) so that another thread may close it; in a forked child, the inherited one closed first."""
        pid = this_pid()
        if getattr(self._local, "pid", None) != pid:
            self.close()
            self._local.pid = pid
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None or con not in self._opened:  # none yet, or closed by `close_all` (the store closed from another thread)
            path = os.path.join(self._directory, diskcache.core.DBNAME)
            con = self._local.con = sqlite3.connect(path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            self._remember(con)
            try:  # diskcache's per-connection pragmas, from its Settings table (absent while the cache is first made)
                settings = con.execute("SELECT key, value FROM Settings").fetchall()
            except sqlite3.OperationalError:
                settings = []
            for key, value in settings:
                if key.startswith("sqlite_"):
                    self.reset(key, value, update=False)
        return con

    def _remember(self, con: sqlite3.Connection) -> None:
        """Keep ``con`` to close, and close those of threads that have ended (their thread-locals are gone)."""
        with self._opened_lock:
            ended = [old for old, thread in self._opened.items() if not thread.is_alive()]
            for old in ended:
                del self._opened[old]
            self._opened[con] = threading.current_thread()
        for old in ended:
            old.close()

    def close(self) -> None:
        """Close this thread's connection, as diskcache does, and forget it."""
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        super().close()
        if con is not None:
            with self._opened_lock:
                self._opened.pop(con, None)

    def close_all(self) -> None:
        """Close every connection, whichever thread opened it (a dropped store: no thread uses them)."""
        with self._opened_lock:
            opened, self._opened = list(self._opened), {}
        for con in opened:
            con.close()

    def forked(self) -> None:
        """In a forked child: close the inherited connections, idle, before this process opens its own (an ended thread's
        would otherwise close later, dropping the locks the child's own connection holds); the lock is made anew, as
        another thread may have held it at the fork."""
        self._opened_lock = threading.Lock()
        self.close_all()

    def __del__(self) -> None:
        """Close every connection of a store dropped without ``close()``: Python 3.13 warns at each one left open."""
        try:
            self.close_all()
        except Exception:  # noqa: BLE001 - a finalizer must not raise: ``__init__`` may not have run to the end, and at exit module globals may be gone
            pass


def _is_own_file(filename: str | None) -> bool:
    """Whether a stored file name is one diskcache generates (``ab/cd/<28 hex>.val``), not a planted path."""
    return filename is not None and _FILE_PATTERN.fullmatch(filename) is not None


def _refuse_foreign(directory: Path, timeout: float) -> None:
    """ConfigError, before anything is written, for a folder another application uses: a ``cache.db`` that is not
    diskcache's, or other files and no ``cache.db`` (dot files such as ``.gitkeep`` are no one's); OSError or sqlite3.Error for one that can't be read."""
    database = directory / diskcache.core.DBNAME
    if database.exists():
        refuse_foreign(database, _DISKCACHE_TABLES, "response cache", timeout, own="folder")
        foreign = _foreign_key(database, timeout)
        if foreign is not None:
            raise ConfigError(f"{directory} is another application's diskcache: it holds the key {foreign}, which the response cache "
                              "never writes; it was left as it was: give the cache its own folder")
        return
    if not directory.is_dir():
        return
    others = sorted(entry.name for entry in directory.iterdir() if not _OWN_NAMES.fullmatch(entry.name) and not entry.name.startswith("."))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(f"{directory} holds other files and no response cache: {shown}; it was left as it was: give the cache its own folder")


def _foreign_key(database: Path, timeout: float) -> str | None:
    """A key in a diskcache database that this cache never writes (not text of a bucket's or claim's length),
    shown short, or None: read-only, one pass over diskcache's key index (about 35 ms per 200,000 keys)."""
    with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Cache'").fetchone() is None:
            return None
        row = conn.execute("SELECT key FROM Cache WHERE raw = 0 OR typeof(key) != 'text' OR length(key) NOT IN (?, ?) LIMIT 1",
                           _OWN_KEY_LENGTHS).fetchone()
    return None if row is None else repr(row[0])[:40]


class DiskStore:
    """A diskcache folder as a :class:`~blackbox_sdk.cache.CacheStore`, with its errors raised as CacheError."""

    def __init__(self, directory: Path, *, timeout: float) -> None:
        """Open (creating) the diskcache at ``directory`` (ConfigError for another application's folder); ``timeout``
        bounds waits for its lock."""
        self.directory = directory
        self.location = str(directory)
        try:
            _refuse_foreign(directory, timeout)
            self._disk = _ClosingCache(str(directory), timeout=timeout, disk=_JSONTextDisk, cull_limit=0)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(
                f"can't open the response cache at {directory} ({exc}): the folder must be creatable and "
                "writable (not read-only, not under a file) and not held locked by another process"
            ) from exc
        with self._guard("open the claims table"):
            self._disk._con.execute(_CLAIMS)
        self._cull_lock = threading.Lock()
        self.lock = threading.RLock()  # held by every write in this process, and by a fork (``hold_over_fork``)
        hold_over_fork(self)
        self._writes, self._cull_at = 0, 0.0  # the first write culls: a short-lived process still does

    def forked(self) -> None:
        """In a forked child, under the store's lock: close the inherited connections before diskcache opens the child's
        own (a fork waits for this store's writes, and a child inheriting a connection mid-transaction would find
        SQLite's write lock taken for good)."""
        self._disk.forked()

    def get(self, key: str) -> str | None:
        """The text stored at ``key`` (a live claim's token for a claim's key), None on a miss; ForeignValueError for a
        row this cache did not write."""
        try:
            if key.endswith(CLAIM_SUFFIX):
                row = self._disk._con.execute(_HELD, (key, time.time())).fetchone()
                return None if row is None else str(row[0])
            value = self._disk.get(key)
        except sqlite3.Error as exc:
            raise CacheError(f"can't read the response cache at {self.directory}: {exc}") from exc
        return value if isinstance(value, str) else None

    def update(self, key: str, change: Change, *, expire: float | None, action: str, discard: Claim | None = None) -> None:
        """Apply ``change`` to the text at ``key`` (and drop the ``discard`` claim) in one write transaction (``BEGIN IMMEDIATE``)."""
        with self._guard(action), self.lock, self._disk.transact():
            con, now = self._disk._con, time.time()
            row = con.execute(_ROW, (key,)).fetchone()
            current = self._text(key, row, now)
            new = change(current)
            if new is not None and (row is None or row[1] is None) and self._inline(new):
                if new != current:  # no value file to remove: one upsert, as diskcache's ``set`` would store it
                    con.execute(_UPSERT, (key, now, None if expire is None else now + expire, now, new))
            elif new is None:
                self._disk.delete(key)  # also removes a foreign row read as None
            elif new != current:
                self._disk.set(key, new, expire=expire)
            if discard is not None:
                con.execute(_DROP, discard)
        self._wrote()

    def _text(self, key: str, row: tuple[int, str | None, Any, float | None] | None, now: float) -> str | None:
        """The live text of a row read with ``_ROW`` (None: absent, expired or foreign); a value file is read by diskcache."""
        if row is None or (row[3] is not None and row[3] <= now):
            return None
        mode, filename, value, _ = row
        if mode == diskcache.core.MODE_RAW and filename is None and type(value) is str:
            return value
        try:
            return self.get(key)
        except ForeignValueError:
            return None  # overwritten by the caller; diskcache removes only its own value files

    def _inline(self, text: str) -> bool:
        """Whether diskcache would keep ``text`` in the database (raw, size 0) rather than in a value file."""
        return type(text) is str and len(text) < self._disk.disk.min_file_size

    def delete(self, key: str) -> None:
        """Remove ``key`` (and its value file) if it is stored."""
        with self._guard("delete a bucket"), self.lock:
            self._disk.delete(key)

    def claim(self, key: str, token: str, *, expire: float, bucket: str) -> tuple[bool, str | None]:
        """Store ``token`` at the claim ``key`` unless a live claim holds it (one upsert into ``Claims``), then read the
        text at ``bucket``, in one write transaction."""
        with self._guard("take a claim"), self.lock, self._disk.transact():
            con, now = self._disk._con, time.time()
            added = con.execute(_TAKE, (key, token, now + expire, now)).rowcount == 1
            text = self._text(bucket, con.execute(_ROW, (bucket,)).fetchone(), now)
        self._wrote()
        return added, text

    def discard(self, key: str, text: str) -> None:
        """Remove ``key`` only while it still holds ``text``, in one write transaction."""
        with self._guard("release a claim"), self.lock, self._disk.transact():
            self._disk._con.execute(_DROP, (key, text))

    def clear(self) -> None:
        """Remove every key and value file."""
        with self._guard("clear the cache"), self.lock:
            self._disk.clear()
            self._disk._con.execute("DELETE FROM Claims")

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Lock timeouts, disk errors and text that can't be encoded raised as CacheError naming ``action``."""
        try:
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
        except UnicodeEncodeError as exc:  # SQLite and value files take UTF-8 only: a lone surrogate can't be written
            raise CacheError(f"can't {action} in the response cache at {self.directory}: its text is not valid Unicode ({exc.reason})") from exc

    def _wrote(self) -> None:
        """Count a write; cull (expired rows, then past the size limit) when one is due, never failing the write."""
        with self._cull_lock:
            self._writes += 1
            due = self._writes >= CULL_EVERY_WRITES or time.monotonic() >= self._cull_at
            if due:
                self._writes, self._cull_at = 0, time.monotonic() + CULL_EVERY_S
        if due:
            try:
                with self.lock:
                    self._disk.cull()
                    self._disk._con.execute(_LAPSED, (time.time(),))
            except (diskcache.Timeout, sqlite3.Error, OSError) as exc:
                logger.debug("cache: culling %s skipped; the next write tries again (%s)", self.directory, exc)
                with self._cull_lock:
                    self._cull_at = 0.0

    def size(self) -> tuple[int, int]:
        """How many keys are stored, and diskcache's estimate of the folder's size in bytes."""
        try:
            return len(self._disk), int(self._disk.volume())
        except sqlite3.Error as exc:
            raise CacheError(f"can't read the response cache at {self.directory}: {exc}") from exc

    def close(self) -> None:
        """Close the database connections, whichever thread opened them; a later use reopens them."""
        self._disk.close_all()
