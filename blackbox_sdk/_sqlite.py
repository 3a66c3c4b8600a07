"""SQLite as the SDK's stores use it: one autocommit connection per file in WAL mode, and
``BEGIN IMMEDIATE`` write transactions, so threads and processes sharing a file serialise their
writes on SQLite's lock while readers go on. The budget ledger, the call log, the rate limits' window
and the proxy's key store build on it, and each first refuses a file of another application
(``refuse_foreign``): it never adds its tables to a database it did not make.

Each store keeps its connection in a :class:`ProcessConnection`, which carries it across ``os.fork()``
(gunicorn ``--preload``, multiprocessing's fork start method): SQLite keeps every file's locks per process
in memory, so a connection must not cross a fork, and a new one beside an inherited one would take the
inherited lock state for its own (writes refused as "locked" forever, or written to a WAL file the
parent deletes when it closes). The fork waits until no store is inside a transaction; the child closes
the inherited connections, idle, before anything opens its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._exceptions import ConfigError

# The tables the SDK's stores that may share one file keep in SQLite (the budget ledger with its calibration, the
# call log, the rate limits' window), each with columns that tell it from another application's table of that name.
# The call log's ``meta`` is left out: too common a name, and always made with ``calls`` in one transaction.
SHARED_TABLES: Mapping[str, frozenset[str]] = {
    "reservations": frozenset({"id", "call_id", "usd_nano", "pid"}),
    "spends": frozenset({"reservation_id", "call_id", "usd_nano"}),
    "totals": frozenset({"scope", "value", "usd_nano", "calls"}),
    "calibration": frozenset({"endpoint", "model", "extra"}),
    "calibration_gates": frozenset({"endpoint", "model", "holder", "expires"}),
    "stored_context": frozenset({"key", "tokens", "expires"}),
    "calls": frozenset({"call_id", "request", "chosen", "cost_usd"}),
    "candidates": frozenset({"call_id", "idx", "text"}),
    "feedback": frozenset({"call_id", "reward", "label", "preferred"}),
    "rate_events": frozenset({"id", "scope", "at", "expires", "tokens"}),
}


def connect(path: Path, timeout: float, *, wal: bool = True) -> sqlite3.Connection:
    """An autocommit WAL connection to ``path`` (its folder created), shareable by threads under the caller's lock.

    ``timeout`` (seconds) is SQLite's busy timeout: writers queue for the lock instead of failing.
    ``wal=False`` leaves the file's journal mode as it is (a reader of a file it did not make).
    OSError and sqlite3.Error pass through, for the caller to word as its own error.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    if not wal:
        return connection
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            return connection
        except sqlite3.OperationalError as exc:  # a fresh file: another process may hold it while it turns on WAL
            if "locked" not in str(exc) or time.monotonic() > deadline:
                connection.close()
                raise
            time.sleep(0.02)
        except sqlite3.Error:
            connection.close()
            raise


class ProcessConnection:
    """A store's connection to one SQLite file in this process, opened on first use, and the lock its users hold.

    Use ``get()`` only under ``lock``: a fork waits for that lock, so the child inherits the connection idle,
    closes it, and opens its own on its first ``get()`` (see the module docstring).
    """

    def __init__(
        self, open_connection: Callable[[], sqlite3.Connection], lock: threading.Lock | threading.RLock | None = None,
        connection: sqlite3.Connection | None = None,
    ) -> None:
        """``open_connection`` opens it (again in a forked child); ``connection``: one opened already."""
        self.lock = threading.Lock() if lock is None else lock
        self._open = open_connection
        self._connection = connection
        self._final = False  # closed for good: ``get()`` raises as a closed sqlite3 connection does
        hold_over_fork(self)

    def get(self) -> sqlite3.Connection:
        """The connection, opened now if this process has none; call under ``lock``."""
        if self._final:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if self._connection is None:
            self._connection = self._open()
        return self._connection

    def close(self, *, final: bool = False) -> None:
        """Close the connection; the next ``get()`` opens another, or, ``final``, raises as a closed connection does."""
        with self.lock:
            self._drop()
            self._final = self._final or final

    def _drop(self) -> None:
        """Close the connection, if open (under the lock, or in a forked child holding it)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def forked(self) -> None:
        """In a forked child, under the lock: close the inherited connection, idle, before this process opens its own."""
        with contextlib.suppress(sqlite3.Error):
            self._drop()

    def __del__(self) -> None:
        """Close the connection of a store dropped without ``close()``: Python 3.13 warns (ResourceWarning) at each one."""
        try:
            self._drop()
        except Exception:  # noqa: BLE001 - a finalizer must not raise: ``__init__`` may not have run to the end, and at exit module globals may be gone
            pass


_held: weakref.WeakSet[Any] = weakref.WeakSet()
_forking: list[Any] = []  # the holders whose locks the forking thread holds


def hold_over_fork(holder: Any) -> None:
    """Make every fork wait for ``holder.lock`` (which the holder's writes hold) and keep it over the fork, so that no
    SQLite transaction is half done in the child; the child runs ``holder.forked()`` under it (``holder`` kept weakly)."""
    _held.add(holder)


def _before_fork() -> None:
    """Take every holder's lock, so no transaction is half done at the fork (a store busy writing is waited for)."""
    _forking[:] = list(_held)
    for held in _forking:
        held.lock.acquire()


def _after_fork_in_parent() -> None:
    """The parent goes on as it was."""
    for held in reversed(_forking):
        held.lock.release()
    _forking.clear()


def _after_fork_in_child() -> None:
    """Each holder's own step (the inherited connections closed, idle) before any is opened again."""
    for held in reversed(_forking):
        held.forked()
        held.lock.release()
    _forking.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


# What SQLite says when a read-only connection can't make a WAL file's -shm (or open its -wal) beside it: the error's
# name (Python 3.11+), or its message (3.10 has no name).
_CANT_MAKE_FILES = frozenset({
    "SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN", "SQLITE_READONLY",
    "attempt to write a readonly database", "unable to open database file",
})


def cant_make_files(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for want of a file it makes beside the database (a WAL file's -shm) or of write access."""
    return getattr(exc, "sqlite_errorname", str(exc)) in _CANT_MAKE_FILES


def connect_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-only connection to the existing SQLite file at ``path`` (shareable by threads under the caller's lock).

    SQLite reads a WAL file only beside its ``-shm`` file, which it can't make in a folder this process can't write
    (a log copied off a server, a read-only mount): such a file with no ``-wal`` of writes still to apply is read as it
    is (SQLite's ``immutable``), so a reader still sees every committed row. One whose ``-wal`` holds writes is an
    sqlite3.Error that says so (reading the file alone would miss them); so is any other failure to read it.
    """
    uri = path.resolve().as_uri()
    connection = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    failure = unreadable(connection)
    if failure is None:
        return connection
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise sqlite3.OperationalError(
            f"its {wal.name} file holds writes not yet in it, which SQLite reads only with a {path.name}-shm file beside it,"
            f" and that can't be made in {path.parent} ({failure}): copy the file with its {wal.name} to a folder you can write"
        ) from failure
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)


def unreadable(connection: sqlite3.Connection) -> sqlite3.Error | None:
    """None when ``connection`` reads its file; else, the connection closed, SQLite's error when it lacks a file it makes
    beside the database or write access (``cant_make_files``: a read-only connection may still do); any other error raised."""
    try:
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return None
    except sqlite3.Error as exc:
        connection.close()
        if not cant_make_files(exc):
            raise
        return exc


def table_columns(path: Path, timeout: float = 5.0) -> dict[str, set[str]]:
    """The tables of the SQLite file at ``path`` and their columns (SQLite's own ``sqlite_*`` left out), read
    read-only, so a file another application owns is left as it was; sqlite3.Error for a file SQLite can't read."""
    with contextlib.closing(connect_read_only(path, timeout)) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'")]
        return {name: {row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))} for name in names}


def refuse_foreign(path: Path, ours: Mapping[str, Collection[str]], what: str, timeout: float = 5.0, *, own: str = "file") -> None:
    """ConfigError, before anything is written, for an SQLite file with tables and none of ``ours`` (name -> columns it
    has at least): another application's database, read read-only and left as it was. A missing or empty file, or
    one with some of ``ours``, passes; sqlite3.Error (or OSError) for a file SQLite can't read, for the caller to word.
    ``own`` names what the store should have instead (its own "file", or "folder")."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    tables = table_columns(path, timeout)
    if tables and not any(set(columns) <= tables.get(name, set()) for name, columns in ours.items()):
        names = sorted(tables)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ConfigError(f"{path} has tables of another application: {shown}; it was left as it was: give the {what} its own {own}")


@contextmanager
def snapshot(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: the statements inside see the file as the first of them found it, whatever is written meanwhile."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("COMMIT")  # it only read: nothing to keep or undo, but its snapshot is let go


@contextmanager
def immediate(
    connection: sqlite3.Connection, locked: Callable[[sqlite3.Error], Exception] | None = None
) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` transaction, committed on success and rolled back on any error.

    The write lock is taken first, so concurrent writers serialise instead of deadlocking later.
    ``locked`` turns a failure to take it into the caller's error; without it the sqlite3.Error passes.
    """
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if locked is None:
            raise
        raise locked(exc) from exc
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
