"""The call log: every call's request, candidates, choice, cost and outcome, plus feedback, in SQLite.

One file, WAL journal, one ``BEGIN IMMEDIATE`` transaction per write, so several threads and
processes can record into the same log at once and every record lands whole or not at all.
Requests, errors and extras are passed through :func:`~blackbox_sdk.redact.redact` before they
are written, so no API key or auth header reaches the file. ``export_jsonl`` writes the format
the adapter trainer reads (documented field by field in ``docs/call-log.md``).

Tables: ``calls`` (one row per call, JSON columns for the structured fields), ``candidates``
(``call_id``, ``idx``, ``text``), ``feedback`` (any number of rows per call), ``meta`` (schema
version).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .errors import CallLogError, ConfigError
from .logs import logger
from .redact import redact

__all__ = ["CallLog", "CallRecord", "EXPORT_FORMAT", "Feedback", "SCHEMA_VERSION", "new_call_id"]

SCHEMA_VERSION = 1
EXPORT_FORMAT = "blackbox-calllog/1"
DEFAULT_TIMEOUT_S = 30.0
_PAGE = 500

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, strict=True)]

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
_CALL_COLUMNS = (
    "call_id", "created", "endpoint_host", "model", "route", "request", "chosen", "scores", "usage",
    "usage_counted", "cost_usd", "latency_s", "cache_hit", "error", "retries", "key", "extra",
)
_JSON_COLUMNS = frozenset({"request", "chosen", "scores", "usage", "extra"})
_FEEDBACK_COLUMNS = ("call_id", "created", "reward", "label", "preferred", "reference", "note", "candidate")


def new_call_id() -> str:
    """A unique, time-sortable call id: ``bb-<ms since epoch, hex>-<16 random hex>``."""
    return f"bb-{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}"


class CallRecord(BaseModel):
    """One call as the log keeps it; ``record()`` redacts ``request``, ``error`` and ``extra``."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(default_factory=new_call_id, min_length=1)
    created: FiniteFloat = Field(default_factory=time.time)  # seconds since the epoch
    endpoint_host: str  # host of the endpoint called ("api.openai.com", "127.0.0.1", "local")
    model: str
    route: str  # "chat", "completions", "embeddings", ...
    request: dict[str, Any]  # the caller's request arguments (JSON)
    candidates: list[str] = Field(default_factory=list)  # every answer gathered, in gathering order
    chosen: list[Count] = Field(default_factory=list)  # indices into candidates returned, best first
    scores: list[FiniteFloat] | None = None  # reranker score per candidate
    usage: dict[str, Any] | None = None  # token usage summed over the requests sent
    usage_counted: bool = False  # whether the usage was charged to a budget (not on cache hits)
    cost_usd: FiniteFloat = Field(default=0.0, ge=0.0)
    latency_s: FiniteFloat = Field(default=0.0, ge=0.0)
    cache_hit: bool = False  # every returned candidate came from the cache
    error: str | None = None  # "ErrorType: message" when the call failed
    retries: Count = 0
    key: str | None = None  # the caller's grouping key (the client stores its budget key here)
    extra: dict[str, Any] = Field(default_factory=dict)

    @pydantic.field_validator("request", "usage", "extra")
    @classmethod
    def _plain_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Only values that survive strict JSON encoding can be logged."""
        if value is not None:
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"must be plain JSON: {exc}") from exc
        return value

    @pydantic.model_validator(mode="after")
    def _indices_fit(self) -> CallRecord:
        """``chosen`` must index ``candidates``; ``scores`` must have one score per candidate."""
        if any(i >= len(self.candidates) for i in self.chosen):
            raise ValueError(f"chosen {self.chosen} must index the {len(self.candidates)} candidates")
        if self.scores is not None and len(self.scores) != len(self.candidates):
            raise ValueError(f"{len(self.scores)} scores for {len(self.candidates)} candidates")
        return self


class Feedback(BaseModel):
    """One piece of feedback on a logged call; ``candidate`` is the answer ``reward`` and ``label`` rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    call_id: str
    created: FiniteFloat
    reward: FiniteFloat | None = None  # any finite number; higher is better
    label: Literal["correct", "incorrect"] | None = None
    preferred: Count | None = None  # index of the candidate the rater preferred
    reference: str | None = None  # the correct answer, written by the rater
    note: str | None = None
    candidate: Count | None = None  # chosen[0] when reward or label is given: the answer they rate


class CallLog:
    """An SQLite call log that several threads and processes can write at once; see the module docstring."""

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Open (creating) the log at ``path``; ``timeout`` bounds waits for another writer's lock."""
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn = _connect(self._path, timeout)

    def __repr__(self) -> str:
        """Where the log is."""
        return f"CallLog({str(self._path)!r})"

    def __enter__(self) -> CallLog:
        """Use as a context manager that closes the connection."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the connection."""
        self.close()

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
        row = _call_row(rec)
        with self._write(f"record call {rec.call_id}") as conn:
            if conn.execute("SELECT 1 FROM calls WHERE call_id = ?", (rec.call_id,)).fetchone():
                raise ConfigError(f"call {rec.call_id!r} is already in the log")
            conn.execute(f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
            conn.executemany(
                "INSERT INTO candidates (call_id, idx, text) VALUES (?, ?, ?)",
                [(rec.call_id, idx, text) for idx, text in enumerate(rec.candidates)],
            )
        logger.debug("call log: recorded %s (%s, %d candidates)", rec.call_id, rec.model, len(rec.candidates))

    def feedback(
        self,
        call_id: str,
        *,
        reward: float | None = None,
        label: Literal["correct", "incorrect"] | None = None,
        preferred: int | None = None,
        reference: str | None = None,
        note: str | None = None,
    ) -> None:
        """Attach feedback to a logged call; ConfigError for an unknown call, a bad index or no feedback at all."""
        if reward is None and label is None and preferred is None and reference is None and note is None:
            raise ConfigError("feedback() needs at least one of reward, label, preferred, reference, note")
        with self._write(f"add feedback to {call_id}") as conn:
            count, chosen = _candidates_of(conn, call_id)
            rated = reward is not None or label is not None
            if rated and not chosen:
                raise ConfigError(f"call {call_id!r} returned no answer, so reward and label have nothing to rate")
            if preferred is not None and not (isinstance(preferred, int) and 0 <= preferred < count):
                raise ConfigError(f"preferred={preferred!r} must index the {count} candidates of call {call_id!r}")
            item = _validated_feedback(
                call_id=call_id, created=time.time(), reward=reward, label=label, preferred=preferred,
                reference=reference, note=note, candidate=chosen[0] if rated else None,
            )
            values = item.model_dump()
            conn.execute(
                f"INSERT INTO feedback ({', '.join(_FEEDBACK_COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values[c] for c in _FEEDBACK_COLUMNS),
            )

    def get(self, call_id: str) -> CallRecord:
        """One logged call; ConfigError when the id is unknown."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                raise ConfigError(f"no call {call_id!r} in the log {self._path}")
            return _record_from(row, _candidate_texts(conn, [call_id]).get(call_id, []))

    def feedback_for(self, call_id: str) -> list[Feedback]:
        """All feedback on one call, oldest first (empty when there is none)."""
        with self._read() as conn:
            return _feedback_by_call(conn, [call_id]).get(call_id, [])

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
        _check_limit(limit)
        pages = self._pages(model=model, route=route, since=since, until=until, limit=limit)
        return (record for page in pages for record, _ in page)

    def export_jsonl(self, out: str | Path | TextIO) -> int:
        """Write one JSON line per call (its record, candidates and all feedback); returns the number of lines."""
        if isinstance(out, (str, Path)):
            target = Path(out)
            partial = target.with_name(target.name + ".partial")
            try:
                with partial.open("w", encoding="utf-8") as sink:
                    count = self._export_to(sink)
                partial.replace(target)
            except OSError as exc:
                raise CallLogError(f"can't write the export {target}: {exc}") from exc
            return count
        return self._export_to(out)

    def stats(self) -> dict[str, Any]:
        """Calls, errors, cache hits and hit rate, spend, and feedback count: in total, by model, by UTC day."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT date(created, 'unixepoch') AS day, model, COUNT(*), SUM(error IS NOT NULL),"
                " SUM(cache_hit), SUM(cost_usd) FROM calls GROUP BY day, model ORDER BY day, model"
            ).fetchall()
            feedback = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        by_day_model = [
            {"day": day, "model": model, **_tally(calls, errors, hits, cost)} for day, model, calls, errors, hits, cost in rows
        ]
        totals = _sum_tallies(by_day_model)
        return {
            **totals,
            "cache_hit_rate": totals["cache_hits"] / totals["calls"] if totals["calls"] else 0.0,
            "feedback": int(feedback),
            "by_model": _group(by_day_model, "model"),
            "by_day": _group(by_day_model, "day"),
            "by_day_model": by_day_model,
        }

    def _export_to(self, sink: TextIO) -> int:
        """Write the export lines to an open text stream."""
        count = 0
        for page in self._pages():
            for record, feedback in page:
                line = {"format": EXPORT_FORMAT, **record.model_dump(mode="json"),
                        "feedback": [item.model_dump(mode="json", exclude={"call_id"}) for item in feedback]}
                sink.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
        return count

    def _pages(
        self,
        *,
        model: str | None = None,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> Iterator[list[tuple[CallRecord, list[Feedback]]]]:
        """Calls with their feedback, oldest first, a page per read so writers are never blocked for long."""
        where, args = _filters(model=model, route=route, since=since, until=until)
        after: tuple[float, str] | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = _PAGE if remaining is None else min(_PAGE, remaining)
            page = self._page(where, args, after, size)
            if not page:
                return
            yield page
            after = (page[-1][0].created, page[-1][0].call_id)
            remaining = None if remaining is None else remaining - len(page)

    def _page(self, where: list[str], args: list[Any], after: tuple[float, str] | None, size: int) -> list[tuple[CallRecord, list[Feedback]]]:
        """One page of calls after the (created, call_id) cursor, with candidates and feedback."""
        clauses = where + (["(created, call_id) > (?, ?)"] if after else [])
        sql = f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls"
        sql += f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql += " ORDER BY created, call_id LIMIT ?"
        with self._read() as conn:
            rows = conn.execute(sql, [*args, *(after or ()), size]).fetchall()
            ids = [row[0] for row in rows]
            texts, feedback = _candidate_texts(conn, ids), _feedback_by_call(conn, ids)
        return [(_record_from(row, texts.get(row[0], [])), feedback.get(row[0], [])) for row in rows]

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """An immediate write transaction: committed on success, rolled back on any error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise CallLogError(f"can't {action}: the call log {self._path} is locked or unwritable ({exc})") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise CallLogError(f"can't {action} in the call log {self._path}: {exc}") from exc
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, with database errors raised as CallLogError."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise CallLogError(f"can't read the call log {self._path}: {exc}") from exc


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with the schema in place; CallLogError if that fails."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"call log timeout must be a positive number of seconds; got {timeout!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise CallLogError(f"can't open the call log {path}: {exc}") from exc
    try:
        _prepare(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise CallLogError(f"can't open the call log {path}: {exc}; is it an SQLite file this SDK wrote, and writable?") from exc
    except CallLogError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    """Switch to WAL, create the tables if missing, and refuse a log from a newer schema."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version > SCHEMA_VERSION:
        raise CallLogError(f"the call log has schema version {version}; this SDK reads up to {SCHEMA_VERSION}: upgrade blackbox-sdk")


def _call_row(rec: CallRecord) -> tuple[Any, ...]:
    """The calls-table row for a record: redacted, JSON columns encoded, booleans as integers."""
    values = rec.model_dump(exclude={"candidates"})
    values["request"] = redact(values["request"])
    values["extra"] = redact(values["extra"])
    values["error"] = redact(values["error"])
    return tuple(_encode(column, values[column]) for column in _CALL_COLUMNS)


def _encode(column: str, value: Any) -> Any:
    """One column value as SQLite stores it."""
    if column in _JSON_COLUMNS:
        return None if value is None else json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    if isinstance(value, bool):
        return int(value)
    return value


def _record_from(row: Sequence[Any], candidates: list[str]) -> CallRecord:
    """A CallRecord from a calls-table row and its candidate texts."""
    values = dict(zip(_CALL_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.loads(values[column])
    values["usage_counted"] = bool(values["usage_counted"])
    values["cache_hit"] = bool(values["cache_hit"])
    return CallRecord(candidates=candidates, **values)


def _candidates_of(conn: sqlite3.Connection, call_id: str) -> tuple[int, list[int]]:
    """How many candidates a call has and which it returned; ConfigError for an unknown call."""
    row = conn.execute("SELECT chosen FROM calls WHERE call_id = ?", (call_id,)).fetchone()
    if row is None:
        raise ConfigError(f"no call {call_id!r} in the log: feedback needs the call_id of a logged call")
    count = conn.execute("SELECT COUNT(*) FROM candidates WHERE call_id = ?", (call_id,)).fetchone()[0]
    return int(count), list(json.loads(row[0]))


def _validated_feedback(**fields: Any) -> Feedback:
    """A Feedback, with pydantic's complaints raised as ConfigError."""
    try:
        return Feedback(**fields)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"bad feedback: {exc}") from exc


def _candidate_texts(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[str]]:
    """Candidate texts per call id, in index order."""
    found: dict[str, list[str]] = {}
    if ids:
        marks = ", ".join("?" * len(ids))
        for call_id, text in conn.execute(f"SELECT call_id, text FROM candidates WHERE call_id IN ({marks}) ORDER BY call_id, idx", ids):
            found.setdefault(call_id, []).append(text)
    return found


def _feedback_by_call(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[Feedback]]:
    """Feedback per call id, oldest first."""
    found: dict[str, list[Feedback]] = {}
    if ids:
        marks = ", ".join("?" * len(ids))
        sql = f"SELECT {', '.join(_FEEDBACK_COLUMNS)} FROM feedback WHERE call_id IN ({marks}) ORDER BY id"
        for row in conn.execute(sql, ids):
            item = Feedback(**dict(zip(_FEEDBACK_COLUMNS, row, strict=True)))
            found.setdefault(item.call_id, []).append(item)
    return found


def _check_limit(limit: int | None) -> None:
    """ConfigError unless ``limit`` is None or a non-negative integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit must be a non-negative integer or None; got {limit!r}")


def _filters(*, model: str | None, route: str | None, since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    """SQL conditions and arguments for the calls() filters."""
    where: list[str] = []
    args: list[Any] = []
    for clause, value in (("model = ?", model), ("route = ?", route), ("created >= ?", since), ("created < ?", until)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return where, args


def _tally(calls: int, errors: int | None, hits: int | None, cost: float | None) -> dict[str, Any]:
    """One group's counters as plain numbers."""
    return {"calls": int(calls), "errors": int(errors or 0), "cache_hits": int(hits or 0), "cost_usd": float(cost or 0.0)}


def _sum_tallies(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The counters of several groups added up."""
    return {
        "calls": sum(r["calls"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "cache_hits": sum(r["cache_hits"] for r in rows),
        "cost_usd": math.fsum(r["cost_usd"] for r in rows),
    }


def _group(rows: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    """The day-by-model counters regrouped by one field ("model" or "day"), in sorted order."""
    names = sorted({r[field] for r in rows})
    return {name: _sum_tallies([r for r in rows if r[field] == name]) for name in names}

