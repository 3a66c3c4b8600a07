"""The SQLite log's queued records: written in batches, one transaction each, by the shared ``BatchWriter``.

``CallLog.enqueue`` puts a validated :class:`CallRecord` in the writer's queue and returns; here
the writer's thread turns a batch into rows (redacted by ``_tables.call_values``, the same rows
``record`` writes) and inserts them in one ``BEGIN IMMEDIATE`` transaction. A call id already in
the log is skipped with a warning (the first copy is kept, as ``record`` refuses a second), and a
record SQLite can't take is dropped with an error, so neither can ever hold the queue up. The
writers of this process are registered per file, so that a read of that file through any
``CallLog`` writes what they hold first.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

from .._logging import logger
from .._sqlite import ProcessConnection, immediate
from ._batches import BatchWriter
from ._records import CallRecord
from ._tables import CALL_COLUMNS, call_values

_INSERT_CALL = f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))}) ON CONFLICT (call_id) DO NOTHING"
_INSERT_CANDIDATE = "INSERT INTO candidates (call_id, idx, text) VALUES (?, ?, ?)"

_Row = tuple[tuple[Any, ...], CallRecord]  # a record's calls-table row, and the record (for its candidates)

_writers: dict[str, weakref.WeakSet[BatchWriter[CallRecord]]] = {}
_writers_lock = threading.Lock()


def _new_writers_lock() -> None:
    """In a forked child: a fresh lock (a parent thread may have held the old one at the fork, and it never releases it here)."""
    global _writers_lock
    _writers_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_writers_lock)


def row_of(rec: CallRecord) -> tuple[Any, ...]:
    """A record's calls-table row as SQLite stores it (secrets redacted, JSON as text, booleans as integers)."""
    values = call_values(rec)
    return tuple(int(v) if isinstance(v, bool) else v for v in (values[column] for column in CALL_COLUMNS))


def write_batch(db: ProcessConnection, where: str, records: list[CallRecord]) -> None:
    """The writer's one transaction: insert a batch of calls with their candidates, skipping ids already logged.

    A record SQLite refuses to bind (an integer past 64 bits, text it can't encode) fails the
    batch with an error that is not an sqlite3.Error and would fail every retry of it: the batch
    is then written again record by record, and that record dropped with an error logged.
    """
    rows = [(row, rec) for rec in records if (row := _row_or_none(rec, where)) is not None]  # before the lock
    try:
        skipped = _insert(db, rows)
    except sqlite3.Error:
        raise
    except Exception:  # noqa: BLE001 - not the file's trouble but a record's: find it, write the rest
        skipped = _insert_each(db, rows, where)
    if skipped:
        logger.warning("call log: %d of %d queued records were already in %s (a repeated call_id); the first copy is kept", skipped, len(rows), where)


def _insert(db: ProcessConnection, rows: list[_Row]) -> int:
    """Insert rows in one transaction; how many ids were already logged."""
    with db.lock, immediate(db.get()) as connection:
        return sum(_insert_one(connection, row, rec) for row, rec in rows)


def _insert_each(db: ProcessConnection, rows: list[_Row], where: str) -> int:
    """``_insert`` with each record in a savepoint: one whose insert raises anything but an sqlite3.Error
    is dropped with an error logged, the others written."""
    skipped = 0
    with db.lock, immediate(db.get()) as connection:
        for row, rec in rows:
            connection.execute("SAVEPOINT record")
            try:
                skipped += _insert_one(connection, row, rec)
            except sqlite3.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - the record SQLite can't take, whatever it raised
                connection.execute("ROLLBACK TO record")
                logger.error("call log: call %s can't be written to %s and is dropped: %s: %s", rec.call_id, where, type(exc).__name__, exc)
            connection.execute("RELEASE record")
    return skipped


def _insert_one(connection: sqlite3.Connection, row: tuple[Any, ...], rec: CallRecord) -> int:
    """Insert one call and its candidates; 1 when its id was already logged (nothing inserted), else 0."""
    if connection.execute(_INSERT_CALL, row).rowcount == 0:
        return 1
    connection.executemany(_INSERT_CANDIDATE, [(rec.call_id, idx, text) for idx, text in enumerate(rec.candidates)])
    return 0


def _row_or_none(rec: CallRecord, where: str) -> tuple[Any, ...] | None:
    """A queued record's row; None, with an error logged, for one changed after it was queued into
    something JSON can't hold: it could never be written, and must not hold up the records behind it."""
    try:
        return row_of(rec)
    except (TypeError, ValueError) as exc:
        logger.error("call log: call %s can't be written to %s and is dropped: %s", rec.call_id, where, exc)
        return None


def register(path: Path, writer: BatchWriter[CallRecord]) -> None:
    """Note a writer of the log at ``path`` in this process, for ``flush_all``."""
    with _writers_lock:
        _writers.setdefault(_file_key(path), weakref.WeakSet()).add(writer)


def flush_all(path: Path, timeout: float) -> None:
    """Write what every writer of this process holds for the log at ``path``; StoreUnavailableError after ``timeout`` s."""
    with _writers_lock:
        writers = list(_writers.get(_file_key(path), ()))
    for writer in writers:
        writer.flush(timeout)


def _file_key(path: Path) -> str:
    """One name per file, however it was spelled."""
    return str(path.expanduser().resolve())
