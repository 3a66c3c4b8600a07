"""The call log's SQLite tables: their schema, how records become rows and back, and batched reads.

Tables: ``calls`` (one row per call, JSON columns for the structured fields), ``candidates``
(``call_id``, ``idx``, ``text``), ``feedback`` (any number of rows per call), ``meta`` (schema
version). Requests, errors and extras are redacted on their way into a row.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._exceptions import CallLogError, ConfigError
from .._redact import redact
from .._sqlite import immediate
from .._text import checked_text
from ._records import CallRecord, Feedback, config_errors

_COLUMN_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # made once: json.dumps with options makes one a call

SCHEMA_VERSION = 1
LOG_TABLES = ("meta", "calls", "candidates", "feedback")
CREATED_RANGE = (-62135596800.0, 253402300799.0)  # 0001-01-01 to 9999-12-31 UTC: the times SQLite's date() puts on a day

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS calls ("
    " call_id TEXT PRIMARY KEY, created REAL NOT NULL, endpoint_host TEXT NOT NULL, model TEXT NOT NULL,"
    " route TEXT NOT NULL, request TEXT NOT NULL, chosen TEXT NOT NULL, scores TEXT, usage TEXT,"
    " usage_counted INTEGER NOT NULL, cost_usd REAL NOT NULL, latency_s REAL NOT NULL,"
    " cache_hit INTEGER NOT NULL, error TEXT, retries INTEGER NOT NULL, key TEXT, extra TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS candidates ("
    " call_id TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE, idx INTEGER NOT NULL,"
    " text TEXT NOT NULL, PRIMARY KEY (call_id, idx))",
    "CREATE TABLE IF NOT EXISTS feedback ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL REFERENCES calls(call_id) ON DELETE CASCADE,"
    " created REAL NOT NULL, reward REAL, label TEXT, preferred INTEGER, reference TEXT, note TEXT, candidate INTEGER)",
    "CREATE INDEX IF NOT EXISTS calls_created ON calls(created, call_id)",
    "CREATE INDEX IF NOT EXISTS feedback_call ON feedback(call_id)",
)
CALL_COLUMNS = (
    "call_id", "created", "endpoint_host", "model", "route", "request", "chosen", "scores", "usage",
    "usage_counted", "cost_usd", "latency_s", "cache_hit", "error", "retries", "key", "extra",
)
_NUMBER_COLUMNS = ("created", "cost_usd", "latency_s", "reward")  # the REAL / DOUBLE PRECISION columns of calls and feedback
FEEDBACK_COLUMNS = ("call_id", "created", "reward", "label", "preferred", "reference", "note", "candidate")
JSON_COLUMNS = ("request", "chosen", "scores", "usage", "extra")


@dataclass(frozen=True)
class CallFilter:
    """Which calls to read: one model or route, and ``since <= created < until``; None matches all.

    Checked when made (ConfigError), so every store reads a bad value the same way: a model or route that is not
    text, or a time that is not a Unix time in seconds (a datetime, a string, NaN), would otherwise match nothing on
    SQLite and be refused by PostgreSQL. An integer past a float's range is a time at either end of the line.
    """

    model: str | None = None
    route: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        """Check each value; times become floats."""
        for name in ("model", "route"):
            if getattr(self, name) is not None:
                checked_text(getattr(self, name), name)
        for name in ("since", "until"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _seconds(name, getattr(self, name)))

    def stored_as(self, text: Callable[[str], str]) -> CallFilter:
        """The same filter with its model and route as a store keeps text (PostgreSQL: a NUL as U+FFFD)."""
        return replace(self, model=None if self.model is None else text(self.model), route=None if self.route is None else text(self.route))

    def where(self, mark: str = "?") -> tuple[list[str], list[Any]]:
        """SQL conditions on the calls table and their arguments, with ``mark`` as the placeholder ("?" or "%s")."""
        pairs = (("model = ", self.model), ("route = ", self.route), ("created >= ", self.since), ("created < ", self.until))
        chosen = [(clause + mark, value) for clause, value in pairs if value is not None]
        return [clause for clause, _ in chosen], [value for _, value in chosen]


def _seconds(name: str, value: Any) -> float:
    """A filter's time as a float; ConfigError for one that is not a number of seconds (a datetime, a string, NaN)."""
    if isinstance(value, bool) or not _is_real(value) or value != value:
        raise ConfigError(f"{name} must be a Unix time in seconds (a number), got {value!r:.80}")
    try:
        return float(value)
    except OverflowError:  # an integer past a float's range
        return math.inf if value > 0 else -math.inf


def _is_real(value: object) -> bool:
    """Whether ``value`` is a real number (an int, a float, numpy's scalars)."""
    return isinstance(value, numbers.Real)


def prepare(conn: sqlite3.Connection, where: str, *, create: bool = True) -> None:
    """Create the tables if missing (not without ``create``: the caller checked they are there), and refuse a log from a
    newer schema (``where``: the log's file, which the refusal names)."""
    conn.execute("PRAGMA foreign_keys=ON")
    if create:
        with immediate(conn):
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    check_schema_version(row[0] if row else None, where)


def check_schema_version(stored: object, where: str) -> None:
    """CallLogError naming the log (``where``: its file, or its URL without the password, so an operator of many logs
    knows which) for a log from a newer schema, or whose meta table holds no version number (another app's table)."""
    try:
        version = SCHEMA_VERSION if stored is None else int(str(stored))
    except ValueError:
        raise CallLogError(f"the call log {where}: its schema version is {str(stored)[:40]!r}, not a number: its meta table is not the SDK's") from None
    if version > SCHEMA_VERSION:
        raise CallLogError(f"the call log {where} has schema version {version}; this SDK reads up to {SCHEMA_VERSION}: upgrade blackbox-sdk")


def insert_call(conn: sqlite3.Connection, rec: CallRecord) -> None:
    """Insert one call and its candidates, secrets redacted; ConfigError when its id is already logged."""
    row = _call_row(rec)
    if conn.execute("SELECT 1 FROM calls WHERE call_id = ?", (rec.call_id,)).fetchone():
        raise ConfigError(f"call {rec.call_id!r} is already in the log")
    conn.execute(f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
    conn.executemany(
        "INSERT INTO candidates (call_id, idx, text) VALUES (?, ?, ?)",
        [(rec.call_id, idx, text) for idx, text in enumerate(rec.candidates)],
    )


def insert_feedback(conn: sqlite3.Connection, item: Feedback) -> None:
    """Insert one feedback row, its note redacted, unless it repeats the call's latest (a retried request: counted once)."""
    values = feedback_values(item)
    row = tuple(values[c] for c in FEEDBACK_COLUMNS)
    if not repeats(conn.execute(latest_feedback("feedback", "?"), (item.call_id,)).fetchone(), row):
        conn.execute(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)


def feedback_values(item: Feedback) -> dict[str, Any]:
    """A feedback row's values by column, its ``note`` redacted: free text, like a call's error, where a rater may paste a
    key or an auth header (``reference`` is an answer to train on, kept as written, as candidates are)."""
    values = item.model_dump()
    values["note"] = redact(values["note"])
    return _unsigned_zeros(values)


def latest_feedback(table: str, mark: str) -> str:
    """The query for what a call's latest feedback row says (FEEDBACK_COLUMNS but call_id and created); ``mark``: its id."""
    return f"SELECT {', '.join(FEEDBACK_COLUMNS[2:])} FROM {table} WHERE call_id = {mark} ORDER BY id DESC LIMIT 1"


def repeats(latest: Sequence[Any] | None, row: Sequence[Any]) -> bool:
    """Whether a feedback row (FEEDBACK_COLUMNS) says what the call's latest stored one (``latest_feedback``) says, its time
    aside: a client that retried a request whose answer it lost would otherwise count one rating twice in stats and
    every reference twice in training; a rating that changes the latest one (correct, incorrect, correct) is kept."""
    return latest is not None and tuple(latest) == tuple(row[2:])


def call_values(rec: CallRecord) -> dict[str, Any]:
    """A record's calls-table values by column, secrets redacted and JSON columns as text: what every store writes;
    ConfigError for a record changed after it was built into something JSON can't hold (NaN, an object), or whose time
    no store's stats can put on a day (one in milliseconds: a log holding it could no longer give its stats)."""
    if not CREATED_RANGE[0] <= rec.created <= CREATED_RANGE[1]:
        raise ConfigError(
            f"call {rec.call_id!r} can't be logged: its created time is not seconds since the epoch in the years 1 to 9999"
            " (a time in milliseconds is 1000 times too large)"
        )
    values = _unsigned_zeros(rec.model_dump(exclude={"candidates"}))
    values["request"] = redact(values["request"])
    values["extra"] = redact(values["extra"])
    values["error"] = redact(values["error"])
    for column in JSON_COLUMNS:
        if values[column] is not None:
            try:
                values[column] = _COLUMN_JSON.encode(values[column])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"call {rec.call_id!r} can't be logged: its {column} is not plain JSON ({exc})") from exc
    return values


def _unsigned_zeros(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a -0.0 in a number column as 0.0, as SQLite stores it (PostgreSQL keeps the sign), so that both
    stores read, export and compare feedback alike."""
    for column in _NUMBER_COLUMNS:
        if isinstance(values.get(column), float) and values[column] == 0:
            values[column] = 0.0
    return values


def _call_row(rec: CallRecord) -> tuple[Any, ...]:
    """The calls-table row for a record as SQLite stores it: booleans as integers."""
    values = call_values(rec)
    return tuple(int(v) if isinstance(v, bool) else v for v in (values[column] for column in CALL_COLUMNS))


def record_from(row: Sequence[Any], candidates: list[str]) -> CallRecord:
    """A CallRecord from a calls-table row and its candidate texts; CallLogError naming the call for a row that isn't one."""
    values = dict(zip(CALL_COLUMNS, row, strict=True))
    with _stored(values["call_id"]):
        for column in JSON_COLUMNS:
            if values[column] is not None:
                try:
                    values[column] = json.loads(values[column])
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"its {column} is not JSON ({exc})") from None
        for column in ("usage_counted", "cache_hit"):  # bool() would read any text edited in ("no" too) as True
            if values[column] not in (0, 1):
                raise ConfigError(f"its {column} is not 0 or 1")
            values[column] = bool(values[column])
        return CallRecord(candidates=candidates, **values)


def feedback_from(row: Sequence[Any]) -> Feedback:
    """A Feedback from a feedback-table row (FEEDBACK_COLUMNS); CallLogError naming the call for a row that isn't one."""
    values = dict(zip(FEEDBACK_COLUMNS, row, strict=True))
    with _stored(values["call_id"]), config_errors("Feedback"):
        return Feedback(**values)


class DamagedRowError(CallLogError):
    """A stored row the SDK could not have written (edited by hand, a damaged file), named by its call; the store whose
    read met it raises ``named(where)``, so the error says which log too (the row's reader has no name of it)."""

    def __init__(self, call_id: Any, damage: str) -> None:
        """The call the row is of, and what is wrong with it."""
        super().__init__(f"call {call_id!r} in the call log can't be read: {damage}")
        self.call_id, self.damage = call_id, damage

    def named(self, where: str) -> CallLogError:
        """The error naming the log (its file, or its URL without the password)."""
        return CallLogError(f"call {self.call_id!r} in the call log {where} can't be read: {self.damage}")


@contextlib.contextmanager
def _stored(call_id: Any) -> Iterator[None]:
    """A stored row the SDK could not have written as DamagedRowError naming its call, so a read stops with one clear
    error; the ConfigError of a bad record names its fields, never their values."""
    try:
        yield
    except ConfigError as exc:
        raise DamagedRowError(call_id, str(exc)) from None


def candidates_of(conn: sqlite3.Connection, call_id: str) -> tuple[int, list[int]]:
    """How many candidates a call has and which it returned; ConfigError for an unknown call."""
    row = conn.execute("SELECT chosen FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    if row is None:
        raise ConfigError(f"no call {call_id!r} in the log: feedback needs the call_id of a logged call")
    count = int(conn.execute("SELECT COUNT(*) FROM candidates WHERE call_id = ?", (call_id,)).fetchone()[0])
    return count, stored_chosen(call_id, row[0], count)


def stored_chosen(call_id: str, text: Any, count: int) -> list[int]:
    """A call's stored ``chosen`` (JSON text) as indices into its ``count`` candidates; CallLogError naming the call for one
    the SDK could not have written (edited by hand), as a read of it raises, where feedback raised json's or a TypeError."""
    with _stored(call_id):
        try:
            chosen = json.loads(text)
        except (TypeError, ValueError):
            raise ConfigError("its chosen is not JSON") from None
        if not isinstance(chosen, list) or not all(type(i) is int and 0 <= i < count for i in chosen):
            raise ConfigError(f"its chosen is not a list of indices into its {count} candidates")
        return chosen


def candidate_texts(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[str]]:
    """Candidate texts per call id, in index order."""
    found: dict[str, list[str]] = {}
    if ids:
        marks = ", ".join("?" * len(ids))
        for call_id, text in conn.execute(f"SELECT call_id, text FROM candidates WHERE call_id IN ({marks}) ORDER BY call_id, idx", ids):
            found.setdefault(call_id, []).append(text)
    return found


def feedback_by_call(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[Feedback]]:
    """Feedback per call id, oldest first."""
    found: dict[str, list[Feedback]] = {}
    if ids:
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE call_id IN ({marks}) ORDER BY id"
        for row in conn.execute(sql, ids):
            item = feedback_from(row)
            found.setdefault(item.call_id, []).append(item)
    return found
