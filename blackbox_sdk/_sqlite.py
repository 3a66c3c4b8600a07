"""SQLite as the SDK's stores use it: one autocommit connection per file in WAL mode, and
``BEGIN IMMEDIATE`` write transactions, so threads and processes sharing a file serialise their
writes on SQLite's lock while readers go on. The budget ledger and the call log both build on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


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
