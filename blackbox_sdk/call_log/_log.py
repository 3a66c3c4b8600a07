"""The call log: every call's request, candidates, choice, cost and outcome, plus feedback, in SQLite.

One file, WAL journal, one ``BEGIN IMMEDIATE`` transaction per write, so several threads and
processes can record into the same log at once and every record lands whole or not at all.
Requests, errors and extras are passed through :func:`~blackbox_sdk._redact.redact` before they
are written (see ``_tables``), so no API key or auth header reaches the file. ``export_jsonl``
writes the format the adapter trainer reads (see ``_export`` and ``docs/call-log.md``).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .._closing import Closing
from .._exceptions import CallLogError, ConfigError
from .._logging import logger
from .._sqlite import connect, immediate
from ._export import export_jsonl
from ._paging import Cursor, Page, check_limit, paged
from ._records import CallRecord, Feedback, Label, feedback_fields, feedback_on
from ._stats import summarize
from ._tables import (
    CALL_COLUMNS,
    CallFilter,
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

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Open (creating) the log at ``path``; ``timeout`` bounds waits for another writer's lock."""
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn = _open(self._path, timeout)

    def __repr__(self) -> str:
        """Where the log is."""
        return f"CallLog({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def record(self, rec: CallRecord) -> None:
        """Write one call with its candidates in one transaction (all or nothing), secrets redacted."""
        if not isinstance(rec, CallRecord):
            raise ConfigError(f"record() takes a CallRecord, not {type(rec).__name__}")
        with self._write(f"record call {rec.call_id}") as conn:
            insert_call(conn, rec)
        logger.debug("call log: recorded %s (%s, %d candidates)", rec.call_id, rec.model, len(rec.candidates))

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
        fields = feedback_fields(reward, label, preferred, reference, note)
        with self._write(f"add feedback to {call_id}") as conn:
            count, chosen = candidates_of(conn, call_id)
            insert_feedback(conn, feedback_on(call_id, count, chosen, fields))

    def get(self, call_id: str) -> CallRecord:
        """One logged call; ConfigError when the id is unknown."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {', '.join(CALL_COLUMNS)} FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                raise ConfigError(f"no call {call_id!r} in the log {self._path}")
            return record_from(row, candidate_texts(conn, [call_id]).get(call_id, []))

    def feedback_for(self, call_id: str) -> list[Feedback]:
        """All feedback on one call, oldest first (empty when there is none)."""
        with self._read() as conn:
            return feedback_by_call(conn, [call_id]).get(call_id, [])

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

    def export_jsonl(self, out: str | Path | TextIO) -> int:
        """Write one JSON line per call (its record, candidates and all feedback); returns the number of lines."""
        pages = self._pages(CallFilter(), None)
        return export_jsonl((pair for page in pages for pair in page), out)

    def stats(self) -> dict[str, Any]:
        """Calls, errors, cache hits and hit rate, spend, and feedback count: in total, by model, by UTC day."""
        with self._read() as conn:
            return summarize(conn)

    def _pages(self, filters: CallFilter, limit: int | None) -> Iterator[Page]:
        """Calls with their feedback, oldest first, a page per read so writers are never blocked for long."""
        where, args = filters.where()
        return paged(lambda after, size: self._page(where, args, after, size), limit)

    def _page(self, where: list[str], args: list[Any], after: Cursor | None, size: int) -> Page:
        """One page of calls after the (created, call_id) cursor, with candidates and feedback."""
        clauses = where + (["(created, call_id) > (?, ?)"] if after else [])
        sql = f"SELECT {', '.join(CALL_COLUMNS)} FROM calls"
        sql += f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql += " ORDER BY created, call_id LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, [*args, *(after or ()), size]).fetchall()
            ids = [row[0] for row in rows]
            texts, feedback = candidate_texts(conn, ids), feedback_by_call(conn, ids)
        return [(record_from(row, texts.get(row[0], [])), feedback.get(row[0], [])) for row in rows]

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """An immediate write transaction under the lock, with database errors raised as CallLogError."""

        def locked(exc: sqlite3.Error) -> CallLogError:
            return CallLogError(f"can't {action}: the call log {self._path} is locked or unwritable ({exc})")

        with self._lock:
            try:
                with immediate(self._conn, locked) as conn:
                    yield conn
            except sqlite3.Error as exc:
                raise CallLogError(f"can't {action} in the call log {self._path}: {exc}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, with database errors raised as CallLogError."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise CallLogError(f"can't read the call log {self._path}: {exc}") from exc


def _open(path: Path, timeout: float) -> sqlite3.Connection:
    """A WAL connection to the log with the schema in place; ConfigError for a bad timeout, CallLogError if it fails."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"call log timeout must be a positive number of seconds; got {timeout!r}")
    try:
        conn = connect(path, timeout)
    except OSError as exc:
        raise CallLogError(f"can't open the call log {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise _not_a_log(path, exc) from exc
    try:
        prepare(conn)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _not_a_log(path, exc) from exc
        raise
    return conn


def _not_a_log(path: Path, exc: sqlite3.Error) -> CallLogError:
    """The error for a file SQLite can't open or set up as a call log."""
    return CallLogError(f"can't open the call log {path}: {exc}; is it an SQLite file this SDK wrote, and writable?")

