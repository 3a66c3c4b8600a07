"""The call log: every call's request, candidates, choice, cost and outcome, plus feedback, in SQLite.

One file, WAL journal, one ``BEGIN IMMEDIATE`` transaction per write, so several threads and
processes can record into the same log at once and every record lands whole or not at all.
``record()`` writes at once and raises what went wrong. The client's calls go through
``enqueue()`` instead: the record is checked and queued, and a background writer (``_batches``,
shared with the PostgreSQL log) inserts queued records in batches, one transaction each, off the
call path. A queued record leaves memory only once committed; past ``max_pending`` waiting,
``enqueue()`` raises StoreUnavailableError rather than drop one. ``flush()``, ``close()`` and
interpreter exit write what waits, and every read and ``feedback()`` flushes first (every writer
of the same file in this process), so a process always sees its own calls.
Requests, errors and extras are passed through :func:`~blackbox_sdk._redact.redact` before they
are written (see ``_tables``), so no API key or auth header reaches the file. ``export_jsonl``
writes the format the adapter trainer reads (see ``_export`` and ``docs/call-log.md``).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import sys
import weakref
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .._closing import Closing
from .._exceptions import CallLogError, ConfigError, StoreUnavailableError
from .._logging import logger
from .._redact import url_without_password
from .._sqlite import (
    SHARED_TABLES, ProcessConnection, connect, connect_read_only, immediate, refuse_foreign, snapshot, table_columns, unreadable,
)
from .._text import checked_path, checked_text
from . import _known
from ._batches import BatchWriter, when_collected
from ._export import export_jsonl
from ._paging import Cursor, Page, check_limit, paged
from ._records import CallRecord, Feedback, Label, feedback_fields, feedback_on
from ._sqlite_batches import flush_all, register, write_batch
from ._stats import summarize
from ._tables import (
    CALL_COLUMNS,
    LOG_TABLES,
    CallFilter,
    DamagedRowError,
    candidate_texts,
    candidates_of,
    feedback_by_call,
    insert_call,
    insert_feedback,
    prepare,
    record_from,
)

DEFAULT_TIMEOUT_S = 30.0


class CallLog(Closing):
    """An SQLite call log that several threads and processes can write at once; see the module docstring."""

    def __init__(
        self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S, batch_size: int = 256, interval: float = 0.05,
        max_pending: int = 100_000, create: bool = True,
    ) -> None:
        """Open (creating) the log at ``path`` and start its background writer.

        ``timeout`` bounds waits for another writer's lock, and flushes; a batch of queued records
        holds at most ``batch_size`` and waits at most ``interval`` s to fill; ``max_pending``
        bounds the records kept in memory while the file can't be written. ``create=False`` opens
        only an existing call log: a missing file, or one without the log's tables, raises
        CallLogError and is left as it was.
        """
        if isinstance(path, str) and "://" in path:  # Path() would fold the URL into a file named after it
            raise ConfigError(f"CallLog is an SQLite file, not a URL ({url_without_password(path)!r}); open_call_log() opens a postgresql:// URL")
        _check_batching(batch_size, interval, max_pending)
        self._path = checked_path(path, "the call log")
        conn, self._log_id = _open(self._path, timeout, create)
        self._db = ProcessConnection(functools.partial(_reopen, self._path, timeout, create), connection=conn)  # one per process
        self._timeout = float(timeout)
        write = functools.partial(write_batch, self._db, str(self._path))
        self._writer: BatchWriter[CallRecord] = BatchWriter(
            write, where=str(self._path), batch_size=batch_size, interval=interval, max_pending=max_pending, exit_wait=self._timeout,
        )
        register(self._path, self._writer)
        shut_down = functools.partial(_shut_down, self._writer, self._db, str(self._path), self._timeout)
        self._finalizer = weakref.finalize(self, when_collected, shut_down, str(self._path))

    def __repr__(self) -> str:
        """Where the log is."""
        return f"CallLog({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    @property
    def log_id(self) -> str:
        """This log's id, made with the file and kept in it: the budget ledger notes it on each call's spend."""
        return self._log_id

    def close(self) -> None:
        """Write what is queued (up to ``timeout`` s), stop the writer, close the connection; StoreUnavailableError if records were left."""
        if self._finalizer.detach() is not None:
            _shut_down(self._writer, self._db, str(self._path), self._timeout, raise_lost=True)

    def record(self, rec: CallRecord) -> None:
        """Write one call with its candidates now, in one transaction (all or nothing), secrets redacted."""
        if not isinstance(rec, CallRecord):
            raise ConfigError(f"record() takes a CallRecord, not {type(rec).__name__}")
        with self._write(f"record call {rec.call_id}") as conn:
            insert_call(conn, rec)
        logger.debug("call log: recorded %s (%s, %d candidates)", rec.call_id, rec.model, len(rec.candidates))

    def enqueue(self, rec: CallRecord) -> None:
        """Queue one call for the background writer and return (the client's path); StoreUnavailableError when too many wait."""
        if not isinstance(rec, CallRecord):
            raise ConfigError(f"enqueue() takes a CallRecord, not {type(rec).__name__}")
        self._writer.put(rec, self._timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Write every call queued so far in this process; StoreUnavailableError after ``timeout`` s."""
        flush_all(self._path, self._timeout if timeout is None else timeout)

    @property
    def pending(self) -> int:
        """How many of this log's queued records wait to be written."""
        return self._writer.pending

    def feedback(
        self,
        call_id: str,
        *,
        reward: float | None = None,
        label: Label | None = None,
        preferred: int | None = None,
        reference: str | None = None,
        note: str | None = None,
    ) -> None:
        """Attach feedback to a logged call; ConfigError for an unknown call, a bad index or no feedback at all."""
        fields = feedback_fields(call_id, reward, label, preferred, reference, note)
        self.flush()
        with self._write(f"add feedback to {call_id}") as conn:
            count, chosen = candidates_of(conn, call_id)
            insert_feedback(conn, feedback_on(call_id, count, chosen, fields))

    def get(self, call_id: str) -> CallRecord:
        """One logged call; ConfigError when the id is unknown."""
        checked_text(call_id, "call_id")
        with self._read() as conn:
            row = conn.execute(f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                raise ConfigError(f"no call {call_id!r} in the log {self._path}")
            return record_from(row, candidate_texts(conn, [call_id]).get(call_id, []))

    def feedback_for(self, call_id: str) -> list[Feedback]:
        """All feedback on one call, oldest first (empty when there is none)."""
        checked_text(call_id, "call_id")
        with self._read() as conn:
            return feedback_by_call(conn, [call_id]).get(call_id, [])

    def logged_call_ids(self, call_ids: Iterable[str]) -> set[str]:
        """Which of these call ids the log holds (asked by ``repair_log``)."""
        with self._read() as conn:
            return _known.logged_call_ids(conn, call_ids)

    def latest_created(self) -> float | None:
        """When the latest logged call was made; None for an empty log (asked by ``repair_log``)."""
        with self._read() as conn:
            return _known.latest_created(conn)

    def calls(
        self,
        *,
        model: str | None = None,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> Iterator[CallRecord]:
        """Logged calls oldest first, optionally one model or route, ``since <= created < until``, at most ``limit``."""
        check_limit(limit)
        pages = self._pages(CallFilter(model=model, route=route, since=since, until=until), limit)
        return (record for page in pages for record, _ in page)

    def export_jsonl(self, out: str | Path | TextIO, *, replace: bool = False) -> int:
        """Write one JSON line per call (with candidates and feedback) as the log stood when the export began; the count;
        ConfigError when ``out`` is this log's own file, or, unless ``replace``, a file that exists (before a call is read,
        or when the export is renamed into place)."""
        with contextlib.closing(self._snapshot()) as pairs:
            return export_jsonl(pairs, out, log=self._path, replace=replace)

    def stats(self) -> dict[str, Any]:
        """Calls, errors, cache hits and hit rate, spend, and feedback count: in total, by model, by UTC day."""
        with self._read() as conn:
            return summarize(conn)

    def _pages(self, filters: CallFilter, limit: int | None) -> Iterator[Page]:
        """Calls with their feedback, oldest first, a page per read so writers are never blocked for long."""
        where, args = filters.where()
        return paged(lambda after, size: self._page(where, args, after, size), limit)

    def _page(self, where: list[str], args: list[Any], after: Cursor | None, size: int) -> Page:
        """One page of calls after the (created, call_id) cursor, with candidates and feedback, in a read of its own."""
        with self._read() as conn:
            return read_page(conn, where, args, after, size)

    def _snapshot(self) -> Generator[tuple[CallRecord, list[Feedback]], None, None]:
        """Every call with its feedback, oldest first, read a page at a time in one read transaction on a connection of
        its own (opened at the first call asked for): what the log held when it began, whatever is committed meanwhile,
        without holding this log's lock (its writer goes on; WAL lets a reader and a writer work at once)."""
        self.flush()  # this process's calls are in it
        if not self._finalizer.alive:
            raise CallLogError(f"can't read the call log {self._path}: it is closed")
        with self._errors("can't read the call log"), contextlib.closing(_connect_existing(self._path, self._timeout)) as conn, snapshot(conn):
            for page in paged(functools.partial(read_page, conn, [], []), None):
                yield from page

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """An immediate write transaction under the lock, with database errors raised as CallLogError."""

        def locked(exc: sqlite3.Error) -> CallLogError:
            return CallLogError(f"can't {action}: the call log {self._path} is locked or unwritable ({exc})")

        with self._db.lock, self._errors(f"can't {action} in the call log"), immediate(self._db.get(), locked) as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock after a flush (so this process's calls are there), database errors as CallLogError."""
        self.flush()
        with self._db.lock, self._errors("can't read the call log"):
            yield self._db.get()

    @contextlib.contextmanager
    def _errors(self, failed: str) -> Iterator[None]:
        """Database errors as CallLogError (``failed``, then this log's file and the error), and a damaged row's error
        naming this log."""
        try:
            yield
        except sqlite3.Error as exc:
            raise CallLogError(f"{failed} {self._path}: {exc}") from exc
        except DamagedRowError as exc:
            raise exc.named(str(self._path)) from None


def read_page(conn: sqlite3.Connection, where: list[str], args: list[Any], after: Cursor | None, size: int) -> Page:
    """One page of calls after the (created, call_id) cursor, with candidates and feedback, read on ``conn``."""
    clauses = where + (["(created, call_id) > (?, ?)"] if after else [])
    sql = f"SELECT {', '.join(CALL_COLUMNS)} FROM calls"
    sql += f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql += " ORDER BY created, call_id LIMIT ?"
    rows = conn.execute(sql, [*args, *(after or ()), size]).fetchall()
    ids = [row[0] for row in rows]
    texts, feedback = candidate_texts(conn, ids), feedback_by_call(conn, ids)
    return [(record_from(row, texts.get(row[0], [])), feedback.get(row[0], [])) for row in rows]


def _shut_down(writer: BatchWriter[CallRecord], db: ProcessConnection, where: str, timeout: float, *, raise_lost: bool = False) -> None:
    """Write what is queued and stop the writer, close the connection; records left unwritten are named in an error."""
    try:
        lost = writer.close(timeout)
    finally:
        db.close(final=True)  # a closed log stays closed: a later use is a CallLogError, not a silent reopen
    if lost:
        ids = ", ".join(rec.call_id for rec in lost[:20]) + (", ..." if len(lost) > 20 else "")
        message = f"the call log {where} was closed with {len(lost)} records it could not write: {ids}"
        logger.error("call log: %s", message)
        if raise_lost:
            raise StoreUnavailableError(message)


def _check_batching(batch_size: int, interval: float, max_pending: int) -> None:
    """ConfigError for a batching setting that can't work."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= sys.float_info.max:  # an int no float holds is refused too
        raise ConfigError(f"call log interval must be a finite number of seconds, 0 or more; got {interval!r}")
    for name, count in (("batch_size", batch_size), ("max_pending", max_pending)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"call log {name} must be a positive integer; got {count!r}")


def _open(path: Path, timeout: float, create: bool) -> tuple[sqlite3.Connection, str]:
    """A WAL connection to the log with the schema in place (made unless not ``create``), and the log's id;
    ConfigError for a bad timeout, CallLogError if it fails."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= sys.float_info.max:
        raise ConfigError(f"call log timeout must be a positive number of seconds; got {timeout!r}")
    if path.is_dir():  # SQLite says only "unable to open database file", a reader "no call log at" it
        raise CallLogError(f"can't open the call log {path}: it is a folder; name a file in it, such as {path / 'calls.db'}")
    if not create:
        _check_is_log(path)
    try:
        if create:
            refuse_foreign(path, SHARED_TABLES, "call log", timeout)  # another application's database: ConfigError, unchanged
        conn = connect(path, timeout) if create else _connect_existing(path, timeout)  # an existing log keeps its journal mode
    except OSError as exc:
        raise CallLogError(f"can't open the call log {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise _not_a_log(path, exc, create) from exc
    try:
        prepare(conn, str(path), create=create)
        log_id = _known.stored_log_id(conn, create=create)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _not_a_log(path, exc, create) from exc
        raise
    return conn, log_id


def _reopen(path: Path, timeout: float, create: bool) -> sqlite3.Connection:
    """This process's own connection to a log opened before a fork; CallLogError if it can't be opened."""
    try:
        return connect(path, timeout) if create else _connect_existing(path, timeout)
    except (OSError, sqlite3.Error) as exc:
        raise CallLogError(f"can't open the call log {path}: {exc}") from exc


def _connect_existing(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection to an existing log, its journal mode left alone; read-only where this process can't write the file or
    its folder (a log copied off a server, a read-only mount), so a reader still reads it (and a write says it can't)."""
    conn = connect(path, timeout, wal=False)
    return conn if unreadable(conn) is None else connect_read_only(path, timeout)


def _check_is_log(path: Path) -> None:
    """CallLogError unless ``path`` is an SQLite file with the call log's tables; read-only, so any other file is left as it was."""
    if not path.is_file():
        raise CallLogError(f"no call log at {path}")
    if path.stat().st_size == 0:  # the SDK writes a log's tables as it makes it: never this, but a database nothing wrote to
        raise CallLogError(f"{path} is not a call log: it is an empty file (0 bytes), a database nothing has written to; it was left as it was")
    wal_beside = Path(f"{path}-wal").exists()  # looked at first: reading a WAL-mode file makes an empty one
    try:
        tables = table_columns(path)
    except sqlite3.Error as exc:
        raise _not_a_log(path, exc, False) from exc
    if missing := [name for name in LOG_TABLES if name not in tables]:
        copied = "" if tables or wal_beside else (
            f"; a log copied without its write-ahead file reads so: copy {path.name}-wal beside it too, or copy a log no process has open"
        )
        raise CallLogError(f"{path} is not a call log (it has no table {', '.join(missing)}){copied}; it was left as it was")


def _not_a_log(path: Path, exc: sqlite3.Error, create: bool) -> CallLogError:
    """The error for a file SQLite can't open or set up as a call log (a reader, not ``create``, needs no write access)."""
    needs = "an SQLite file this SDK wrote, writable by this process" if create else "an SQLite file this SDK wrote"
    return CallLogError(f"can't open the call log {path}: {exc}; a call log is {needs}")

