"""The call log on PostgreSQL, for a fleet: the SQLite log's records, candidates and feedback, shared by every host.

A database that can't be reached when the log opens is an outage like any other (records queue, the writer retries), so a process started
during one runs; one that refuses the URL (password, TLS, no such database or role) is a ConfigError. ``record()`` only checks and redacts
the record (the SQLite log's own code) and queues it; a background writer inserts queued records in batches, one transaction each
(``_batches``), so the call path never waits for the database. A record is dropped from memory only once committed: while the database is
down the writer retries with backoff, and past ``max_pending`` waiting records ``record()`` raises StoreUnavailableError instead of losing
one. ``close()``, and interpreter exit, flush. Reads and ``feedback()`` flush first, so a process sees its own calls. psycopg 3 with a
``psycopg_pool.ConnectionPool``; the ``[postgres]`` extra installs both.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

from .._closing import Closing
from .._exceptions import CallLogError, ConfigError, StoreUnavailableError
from .._logging import logger
from .._redact import redact_text
from .._text import checked_text
from . import _known
from ._batches import BatchWriter, when_collected
from ._export import export_jsonl
from ._paging import Page, check_limit, paged
from ._pg_tables import (
    PgRow,
    SetUp,
    candidates_of,
    day_model_rows,
    feedback_by_call,
    insert_batch,
    insert_feedback,
    pg_row,
    pg_text,
    read_call,
    read_page,
    read_snapshot,
)
from ._records import CallRecord, Feedback, Label, feedback_fields, feedback_on
from ._stats import summary
from ._tables import CallFilter, DamagedRowError
from ._urls import address_id, is_postgres_url, libpq_url, misread_password, refusal, scrub, unusable_host, url_without_password

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

EXTRA_HINT = "pip install 'blackbox-sdk[postgres]'"
DEFAULT_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout unless the URL sets one: a server that accepts and never answers fails in this
WRITER_WAIT_S = 5.0  # the writer's wait for a pooled connection before it backs off and retries
RECONNECT_S = 10.0  # the pool's reconnection attempts give up (and start afresh, from 1 s apart) after this


class PostgresCallLog(Closing):
    """A call log in a PostgreSQL database that many processes and hosts share; see the module docstring."""

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT_S, batch_size: int = 256, interval: float = 0.05,
        max_pending: int = 100_000, pool_size: int = 4, create: bool = True,
    ) -> None:
        """Connect to ``url``, create the tables if missing, start the writer; ConfigError for a URL the server refuses.

        A database out of reach (down, restarting, not answering) is, with ``create``, a warning: the tables and the log's
        id wait for the first write or read that reaches it; without, StoreUnavailableError.

        ``timeout`` bounds flushes, reads and waits for a connection; a batch holds at most ``batch_size`` records and
        waits at most ``interval`` s to fill; ``max_pending`` bounds the records kept in memory while the database is
        down. ``create=False`` runs no DDL (a read-only role can open the log) and raises CallLogError when the tables
        are not there.
        """
        if not is_postgres_url(url):
            raise ConfigError(f"PostgresCallLog takes a postgresql:// URL; got {url_without_password(str(url))!r}")
        _check_options(timeout, batch_size, interval, max_pending, pool_size)
        self._psycopg, pool_module = _drivers()
        url = libpq_url(url)
        self._where, self._timeout = url_without_password(url), float(timeout)
        options = _connect_options(self._psycopg, url, timeout)
        self.address_id = address_id(self._psycopg.conninfo.conninfo_to_dict(url))  # checked by _connect_options
        self._setup, self._connect = SetUp(self._where, create=create), functools.partial(self._psycopg.connect, url, **options)
        try:
            self._set_up("open")
        except StoreUnavailableError as exc:
            if not create:
                raise
            logger.warning("call log: %s; its records are kept in memory and written once it answers", exc)
        self._pool = _ProcessPool(functools.partial(
            pool_module.ConnectionPool, url, min_size=1, max_size=pool_size, kwargs=options, open=True, timeout=self._timeout,
            check=functools.partial(_checked, min(self._timeout, CONNECT_TIMEOUT_S)), reconnect_timeout=RECONNECT_S, name="blackbox-call-log",
        ))
        write = functools.partial(_write_batch, self._pool, self._setup, min(WRITER_WAIT_S, self._timeout), self._where)
        self._writer: BatchWriter[PgRow] = BatchWriter(write, where=self._where, batch_size=batch_size, interval=interval, max_pending=max_pending, exit_wait=self._timeout)
        shut_down = functools.partial(_shut_down, self._writer, self._pool, self._where, self._timeout)
        self._finalizer = weakref.finalize(self, when_collected, shut_down, self._where)

    def __repr__(self) -> str:
        """Where the log is (without a password)."""
        return f"PostgresCallLog({self._where!r})"

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self._where

    @property
    def log_id(self) -> str:
        """This log's id, made with its tables and kept in the database: the budget ledger notes it on each call's spend;
        ``address_id`` until the log has reached its database (it opened during an outage), which ``repair_log`` knows too."""
        return self._setup.log_id if self._setup.log_id is not None else self.address_id

    @property
    def pending(self) -> int:
        """How many records wait in memory to be written."""
        return self._writer.pending

    def record(self, rec: CallRecord) -> None:
        """Queue one call for the writer, secrets redacted; StoreUnavailableError when too many already wait."""
        if not isinstance(rec, CallRecord):
            raise ConfigError(f"record() takes a CallRecord, not {type(rec).__name__}")
        self._writer.put(pg_row(rec), self._timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every call recorded so far is in the database; StoreUnavailableError after ``timeout`` s."""
        self._writer.flush(self._timeout if timeout is None else timeout)

    def close(self) -> None:
        """Write what waits (up to ``timeout`` s), stop the writer, close the pool; StoreUnavailableError if records were left."""
        if self._finalizer.detach() is not None:
            _shut_down(self._writer, self._pool, self._where, self._timeout, raise_lost=True)

    def feedback(
        self, call_id: str, *, reward: float | None = None, label: Label | None = None, preferred: int | None = None,
        reference: str | None = None, note: str | None = None,
    ) -> None:
        """Attach feedback to a logged call (after a flush); ConfigError for an unknown call, a bad index or no feedback."""
        fields = feedback_fields(call_id, reward, label, preferred, reference, note)
        with self._connection(f"add feedback to {call_id}") as conn, conn.transaction():
            found = candidates_of(conn, pg_text(call_id))  # a NUL was stored as U+FFFD
            if found is None:
                raise ConfigError(f"no call {call_id!r} in the log: feedback needs the call_id of a logged call")
            insert_feedback(conn, feedback_on(call_id, *found, fields))

    def get(self, call_id: str) -> CallRecord:
        """One logged call; ConfigError when the id is unknown."""
        checked_text(call_id, "call_id")
        with self._connection("read") as conn:
            found = read_call(conn, pg_text(call_id))
        if found is None:
            raise ConfigError(f"no call {call_id!r} in the log {self._where}")
        return found

    def feedback_for(self, call_id: str) -> list[Feedback]:
        """All feedback on one call, oldest first (empty when there is none)."""
        stored = pg_text(checked_text(call_id, "call_id"))
        with self._connection("read") as conn:
            return feedback_by_call(conn, [stored]).get(stored, [])

    def logged_call_ids(self, call_ids: Iterable[str]) -> set[str]:
        """Which of these call ids the log holds, after a flush (asked by ``repair_log``)."""
        with self._connection("read") as conn:
            return _known.logged_call_ids(conn, call_ids, table="blackbox_calls", mark="%s")

    def latest_created(self) -> float | None:
        """When the latest logged call was made, after a flush; None for an empty log (asked by ``repair_log``)."""
        with self._connection("read") as conn:
            return _known.latest_created(conn, table="blackbox_calls")

    def calls(
        self, *, model: str | None = None, route: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> Iterator[CallRecord]:
        """Logged calls oldest first, optionally one model or route, ``since <= created < until``, at most ``limit``."""
        check_limit(limit)
        filters = CallFilter(model=model, route=route, since=since, until=until)
        self.flush()
        pages = self._pages(filters.stored_as(pg_text), limit)
        return (record for page in pages for record, _ in page)

    def export_jsonl(self, out: str | Path | TextIO, *, replace: bool = False) -> int:
        """Write one JSON line per call (its record, candidates and all feedback); the number of lines; unless ``replace``,
        ConfigError for a file that exists (before a call is read, or when the export is renamed into place)."""
        with contextlib.closing(self._snapshot()) as pairs:
            return export_jsonl(pairs, out, replace=replace)

    def _snapshot(self) -> Generator[tuple[CallRecord, list[Feedback]], None, None]:
        """Every call with its feedback as the log stood at the first read, on one pooled connection (``read_snapshot``)."""
        with self._connection("read") as conn:
            yield from read_snapshot(conn)

    def stats(self) -> dict[str, Any]:
        """Calls, errors, cache hits and hit rate, spend, and feedback count: in total, by model, by UTC day."""
        with self._connection("read") as conn:
            return summary(*day_model_rows(conn))

    def _pages(self, filters: CallFilter, limit: int | None) -> Iterator[Page]:
        """Calls with their feedback, oldest first, a page per query."""
        where, args = filters.where("%s")

        def read(after: tuple[float, str] | None, size: int) -> Page:
            self._check_open()
            self._set_up("read")
            with self._errors("read"), self._pool.get().connection(timeout=self._timeout) as conn:
                return read_page(conn, where, args, after, size)

        return paged(read, limit)

    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[Connection[Any]]:
        """A pooled connection after a flush (so this process's calls are there), errors raised as the SDK's."""
        self._check_open()
        self.flush()
        self._set_up(action)
        with self._errors(action), self._pool.get().connection(timeout=self._timeout) as conn:
            yield conn

    def _check_open(self) -> None:
        """CallLogError once closed: its closed pool would say StoreUnavailableError, an outage that a retry outlasts."""
        if not self._finalizer.alive:
            raise CallLogError(f"the call log {self._where} is closed")

    def _set_up(self, action: str) -> None:
        """Unless done, make or check the tables and read the log's id on a connection of its own (one attempt, so that
        a read while the database has been down since the log opened fails as fast as it can, not after ``timeout``)."""
        if not self._setup.done:
            with self._errors(action, self._connect.args[0]), self._connect() as conn:  # the URL: its password scrubbed
                self._setup.ensure(conn)

    @contextlib.contextmanager
    def _errors(self, action: str, url: str | None = None) -> Iterator[None]:
        """psycopg's errors as StoreUnavailableError (can't reach the database) or CallLogError (it refused); ``url``'s password scrubbed."""
        try:
            yield
        except DamagedRowError as exc:
            raise exc.named(self._where) from None
        except self._psycopg.Error as exc:
            detail = redact_text(str(exc).strip()) if url is None else scrub(redact_text(str(exc).strip()), url)
            kind = StoreUnavailableError if isinstance(exc, self._psycopg.OperationalError) else CallLogError  # includes the pool's timeouts
            meaning = refusal(detail) if url is not None else None
            if meaning is not None:  # at open, a password or TLS setting that no retry mends: the URL's fault, not an outage
                raise ConfigError(f"can't {action} the call log {self._where}: {meaning}, which no retry mends ({detail})") from None
            if isinstance(exc, self._psycopg.errors.ConnectionTimeout):
                detail += f" (no answer within its connect_timeout, {CONNECT_TIMEOUT_S} s unless the URL sets one)"
            raise kind(f"can't {action} the call log {self._where}: {detail}") from (exc if url is None else None)  # a chained driver error would print unscrubbed


class _ProcessPool:
    """The log's connection pool in this process: a forked child makes its own on first use, as the pooled
    connections are the parent's sessions (psycopg never closes them from a child) and the pool's threads stayed there."""

    def __init__(self, make: Callable[[], ConnectionPool[Any]]) -> None:
        self._make, self._lock = make, threading.Lock()
        self._pool, self._pid = make(), os.getpid()

    def get(self) -> ConnectionPool[Any]:
        """This process's pool."""
        if self._pid != os.getpid():
            with self._lock:  # only ever taken here, in a child: the parent never holds it at a fork
                if self._pid != os.getpid():
                    self._pool, self._pid = self._make(), os.getpid()
        return self._pool

    def close(self) -> None:
        """Close this process's pool (a child leaves the parent's alone)."""
        if self._pid == os.getpid():
            self._pool.close()


def _checked(seconds: float, conn: Connection[Any]) -> None:
    """The pool's check of a connection before it hands it out, bounded: libpq has no read timeout, so on a server that
    stopped answering (a paused host) the check, and the read, feedback or write after it, would wait forever. Past
    ``seconds`` the socket is shut down, the check fails as a lost connection, and the pool drops it (then
    StoreUnavailableError once ``timeout`` is up, as for a server that is down). A query itself is not bounded:
    a long one on a large log is not a stall."""
    from psycopg_pool import ConnectionPool

    timer = threading.Timer(seconds, _cut, (conn,))
    timer.daemon = True
    timer.start()
    try:
        ConnectionPool.check_connection(conn)
    finally:
        timer.cancel()


def _cut(conn: Connection[Any]) -> None:
    """Shut down ``conn``'s socket (through a duplicate of its descriptor), so a thread blocked reading it fails at once."""
    with contextlib.suppress(Exception):  # closed meanwhile: nothing to cut
        with socket.socket(fileno=os.dup(conn.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)


def _write_batch(pool: _ProcessPool, setup: SetUp, wait: float, where: str, rows: list[PgRow]) -> None:
    """The writer's one transaction: insert a batch, noting ids that were already logged (kept as first written); first,
    for a log opened while its database was out of reach, its set-up.

    A batch the server refuses for a record's data (a value past a limit, such as a call id too long for the primary key's
    index) would fail every retry and hold up every record behind it: it is written again record by record, and the
    record refused is dropped with an error logged."""
    import psycopg

    if not setup.done:
        with pool.get().connection(timeout=wait) as conn:
            setup.ensure(conn)
    try:
        with pool.get().connection(timeout=wait) as conn, conn.transaction():
            sent, inserted = insert_batch(conn, rows)
    except psycopg.Error as exc:
        if not _refuses_data(exc):
            raise
        sent, inserted = _write_each(pool, wait, where, rows)
    if inserted < sent:
        logger.warning("call log: %d of %d records were already in the log (a retried batch or a repeated call_id); the first copy is kept", sent - inserted, sent)


def _refuses_data(error: Exception) -> bool:
    """Whether the server refused a statement for the data it was given (SQLSTATE classes 22 data exception, 23 integrity,
    54 program limit), which no retry mends, rather than for the connection, a permission or its load."""
    return (getattr(error, "sqlstate", None) or "")[:2] in ("22", "23", "54")


def _write_each(pool: _ProcessPool, wait: float, where: str, rows: list[PgRow]) -> tuple[int, int]:
    """``insert_batch`` one record at a time, each in a savepoint of one transaction; a record the server refuses for its
    data is dropped with an error logged. (records written or already logged, records inserted)."""
    import psycopg

    sent = inserted = 0
    with pool.get().connection(timeout=wait) as conn, conn.transaction():
        for row in rows:
            try:
                with conn.transaction():
                    done, added = insert_batch(conn, [row])
            except psycopg.Error as exc:
                if not _refuses_data(exc):
                    raise
                logger.error("call log: call %.80r can't be written to %s and is dropped: %s", row[0][0], where, str(exc).splitlines()[0])
                continue
            sent, inserted = sent + done, inserted + added
    return sent, inserted


def _shut_down(writer: BatchWriter[PgRow], pool: _ProcessPool, where: str, timeout: float, *, raise_lost: bool = False) -> None:
    """Flush and stop the writer, close the pool; records left unwritten are named in an error (raised from close())."""
    try:
        lost = writer.close(timeout)
    finally:
        pool.close()
    if lost:
        ids = ", ".join(row[0][0] for row in lost[:20]) + (", ..." if len(lost) > 20 else "")
        message = f"the call log {where} was closed with {len(lost)} records it could not write: {ids}"
        logger.error("call log: %s", message)
        if raise_lost:
            raise StoreUnavailableError(message)


def _drivers() -> tuple[ModuleType, ModuleType]:
    """psycopg and psycopg_pool; ConfigError naming the extra when they are missing."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ConfigError(f"a PostgreSQL call log needs psycopg 3 and psycopg_pool: {EXTRA_HINT} ({exc})") from exc
    return psycopg, psycopg_pool


def _connect_options(psycopg: ModuleType, url: str, timeout: float) -> dict[str, Any]:
    """Connection keywords: a connect timeout (CONNECT_TIMEOUT_S, or ``timeout`` if shorter; libpq waits 2 s at least)
    unless the URL sets one; ConfigError for a URL libpq can't parse, or whose password it would read otherwise."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigError(f"bad PostgreSQL URL {url_without_password(url)!r}: {scrub(redact_text(str(exc).strip()), url)}") from None
    except UnicodeDecodeError:  # psycopg decodes each value libpq unescaped: a %-escape of bytes that are not UTF-8
        raise ConfigError(f"bad PostgreSQL URL {url_without_password(url)!r}: a %-escape in it is not UTF-8") from None
    if (host := unusable_host(given)) is not None:
        raise ConfigError(f"bad PostgreSQL URL {url_without_password(url)!r}: its host name {host[:80]!r} can't be looked up (an empty or too long label)")
    if misread_password(url, given):
        raise ConfigError(f"bad PostgreSQL URL {url_without_password(url)!r}: libpq reads its password otherwise; percent-encode an @ as %40, a / as %2F")
    return {} if "connect_timeout" in given else {"connect_timeout": max(2, math.ceil(min(timeout, CONNECT_TIMEOUT_S)))}


def _check_options(timeout: float, batch_size: int, interval: float, max_pending: int, pool_size: int) -> None:
    """ConfigError for a setting that can't work."""
    for name, value, zero_ok in (("timeout", timeout, False), ("interval", interval, True)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= sys.float_info.max or (value == 0 and not zero_ok):
            bound = "0 or more" if zero_ok else "more than 0"
            raise ConfigError(f"PostgresCallLog {name} must be a finite number of seconds, {bound}; got {value!r}")
    for name, count in (("batch_size", batch_size), ("max_pending", max_pending), ("pool_size", pool_size)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"PostgresCallLog {name} must be a positive integer; got {count!r}")
