"""SQLite as the SDK's stores use it: one autocommit connection per file in WAL mode, and
``BEGIN IMMEDIATE`` write transactions, so threads and processes sharing a file serialise their
writes on SQLite's lock while readers go on. The budget ledger, the call log, the rate limits' window
and the proxy's key store build on it, and each first refuses a file of another application
(``refuse_foreign``): it never adds its tables to a database it did not make.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

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


def table_columns(path: Path, timeout: float = 5.0) -> dict[str, set[str]]:
    """The tables of the SQLite file at ``path`` and their columns (SQLite's own ``sqlite_*`` left out), read
    read-only, so a file another application owns is left as it was; sqlite3.Error for a file SQLite can't read."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)) as conn:
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
