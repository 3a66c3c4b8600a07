"""The SQLite log's queued records: written in batches, one transaction each, by the shared ``BatchWriter``.

``CallLog.enqueue`` puts a validated :class:`CallRecord` in the writer's queue and returns; here
the writer's thread turns a batch into rows (redacted by ``_tables.call_values``, the same rows
``record`` writes) and inserts them in one ``BEGIN IMMEDIATE`` transaction. A call id already in
the log is skipped with a warning (the first copy is kept, as ``record`` refuses a second), so one
repeated id can never hold the queue up. The writers of this process are registered per file, so
that a read of that file through any ``CallLog`` writes what they hold first.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

from .._logging import logger
from .._sqlite import immediate
from ._batches import BatchWriter
from ._records import CallRecord
from ._tables import CALL_COLUMNS, call_values

_INSERT_CALL = f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))}) ON CONFLICT (call_id) DO NOTHING"
_INSERT_CANDIDATE = "INSERT INTO candidates (call_id, idx, text) VALUES (?, ?, ?)"

_writers: dict[str, weakref.WeakSet[BatchWriter[CallRecord]]] = {}
_writers_lock = threading.Lock()


def row_of(rec: CallRecord) -> tuple[Any, ...]:
    """A record's calls-table row as SQLite stores it (secrets redacted, JSON as text, booleans as integers)."""
    values = call_values(rec)
    return tuple(int(v) if isinstance(v, bool) else v for v in (values[column] for column in CALL_COLUMNS))


def write_batch(conn: sqlite3.Connection, lock: threading.Lock, where: str, records: list[CallRecord]) -> None:
    """The writer's one transaction: insert a batch of calls with their candidates, skipping ids already logged."""
    rows = [(row, rec) for rec in records if (row := _row_or_none(rec, where)) is not None]  # before the lock
    skipped = 0
    with lock, immediate(conn) as connection:
        for row, rec in rows:
            if connection.execute(_INSERT_CALL, row).rowcount == 0:
                skipped += 1
                continue
            connection.executemany(_INSERT_CANDIDATE, [(rec.call_id, idx, text) for idx, text in enumerate(rec.candidates)])
    if skipped:
        logger.warning("call log: %d of %d queued records were already in %s (a repeated call_id); the first copy is kept", skipped, len(rows), where)


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
