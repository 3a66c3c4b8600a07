"""The call log's PostgreSQL tables: their schema, records as rows, a batch insert in one statement, and reads.

Tables (in the connection's ``search_path``, prefixed so they sit beside an application's own):
``blackbox_calls``, ``blackbox_candidates``, ``blackbox_feedback`` and ``blackbox_meta``, the
same columns as the SQLite log's. JSON columns are ``json`` (kept as written, key order and all),
text columns compare in code-point order (``COLLATE "C"``), so reads and exports come back in
the SQLite log's order, byte for byte. Rows are built by ``_tables.call_values``: one redaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._exceptions import CallLogError
from ._known import stored_log_id
from ._paging import Cursor, Page, paged
from ._records import CallRecord, Feedback, valid_text
from ._stats import COST_DAMAGE, IN_DAYS, TIME_DAMAGE, DayModelRow, damaged_call, finite_cost
from ._tables import (
    CALL_COLUMNS,
    FEEDBACK_COLUMNS,
    JSON_COLUMNS,
    SCHEMA_VERSION,
    call_values,
    check_schema_version,
    feedback_from,
    feedback_values,
    latest_feedback,
    record_from,
    repeats,
    stored_chosen,
)

if TYPE_CHECKING:
    from psycopg import Connection

PgRow = tuple[tuple[Any, ...], list[str]]  # the calls-table values in CALL_COLUMNS order, and the candidate texts

_LOCK_ID = 0x626C61636B626F78  # "blackbox": the advisory lock that serialises schema set-up between processes
_INT8_MAX = 2**63 - 1
_TABLES = ("blackbox_meta", "blackbox_calls", "blackbox_candidates", "blackbox_feedback")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blackbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    (
        'CREATE TABLE IF NOT EXISTS blackbox_calls (call_id TEXT COLLATE "C" PRIMARY KEY,'
        ' created DOUBLE PRECISION NOT NULL, endpoint_host TEXT COLLATE "C" NOT NULL, model TEXT COLLATE "C" NOT NULL,'
        ' route TEXT COLLATE "C" NOT NULL, request JSON NOT NULL, chosen JSON NOT NULL, scores JSON, usage JSON,'
        " usage_counted BOOLEAN NOT NULL, cost_usd DOUBLE PRECISION NOT NULL, latency_s DOUBLE PRECISION NOT NULL,"
        ' cache_hit BOOLEAN NOT NULL, error TEXT, retries BIGINT NOT NULL, key TEXT COLLATE "C", extra JSON NOT NULL)'
    ),
    (
        'CREATE TABLE IF NOT EXISTS blackbox_candidates (call_id TEXT COLLATE "C" NOT NULL'
        " REFERENCES blackbox_calls (call_id) ON DELETE CASCADE, idx INTEGER NOT NULL, text TEXT NOT NULL,"
        " PRIMARY KEY (call_id, idx))"
    ),
    (
        "CREATE TABLE IF NOT EXISTS blackbox_feedback (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        ' call_id TEXT COLLATE "C" NOT NULL REFERENCES blackbox_calls (call_id) ON DELETE CASCADE,'
        " created DOUBLE PRECISION NOT NULL, reward DOUBLE PRECISION, label TEXT, preferred BIGINT, reference TEXT,"
        " note TEXT, candidate BIGINT)"
    ),
    "CREATE INDEX IF NOT EXISTS blackbox_calls_created ON blackbox_calls (created, call_id)",
    "CREATE INDEX IF NOT EXISTS blackbox_feedback_call ON blackbox_feedback (call_id)",
)
_INDEXES = ("blackbox_calls_created", "blackbox_feedback_call")
_MISSING = "SELECT name FROM unnest(%s::text[]) WITH ORDINALITY AS t (name, n) WHERE to_regclass(name) IS NULL ORDER BY n"
_TYPES = {"created": "float8", "cost_usd": "float8", "latency_s": "float8", "usage_counted": "bool", "cache_hit": "bool", "retries": "int8"}
_INSERT_BATCH = (
    f"WITH new AS (INSERT INTO blackbox_calls ({', '.join(CALL_COLUMNS)})"
    f" SELECT {', '.join(c + '::json' if c in JSON_COLUMNS else c for c in CALL_COLUMNS)}"
    f" FROM unnest({', '.join('%s::' + _TYPES.get(c, 'text') + '[]' for c in CALL_COLUMNS)}) AS r ({', '.join(CALL_COLUMNS)})"
    " ON CONFLICT (call_id) DO NOTHING RETURNING call_id),"
    " texts AS (INSERT INTO blackbox_candidates (call_id, idx, text) SELECT c.call_id, c.idx, c.text"
    " FROM unnest(%s::text[], %s::int4[], %s::text[]) AS c (call_id, idx, text) JOIN new USING (call_id))"
    " SELECT call_id FROM new"
)
_SELECT_CALLS = f"SELECT {', '.join(c + '::text' if c in JSON_COLUMNS else c for c in CALL_COLUMNS)} FROM blackbox_calls"
# Why a row can't be counted (NULL for one the SDK could have written: see ``_stats``); its day is NULL then, as
# to_timestamp fails on a time past its range and gives no day for an infinite one.
_FINITE_COST = finite_cost("'Infinity'::float8")  # NaN, above Infinity in PostgreSQL, fails it too
_DAMAGE = f"CASE WHEN NOT ({IN_DAYS}) THEN '{TIME_DAMAGE}' WHEN NOT ({_FINITE_COST}) THEN '{COST_DAMAGE}' END"
_DAMAGED = f"SELECT call_id, damage FROM (SELECT call_id, {_DAMAGE} AS damage FROM blackbox_calls) AS c WHERE damage IS NOT NULL ORDER BY call_id LIMIT 1"
# A call's day from its second, floored as SQLite's stats floor it (to_timestamp rounds to the microsecond).
_BY_DAY_AND_MODEL = (
    f"SELECT (CASE WHEN {IN_DAYS} THEN to_char(to_timestamp(floor(created)) AT TIME ZONE 'UTC', 'YYYY-MM-DD') END) COLLATE \"C\" AS day,"
    f" model, COUNT(*), COUNT(error), COUNT(*) FILTER (WHERE cache_hit), SUM(cost_usd), bool_or(({_DAMAGE}) IS NOT NULL)"
    " FROM blackbox_calls GROUP BY day, model ORDER BY day, model"
)


def prepare(conn: Connection[Any], where: str, *, create: bool = True) -> None:
    """Create the tables if missing (one process at a time), or without ``create`` refuse a database that lacks them; refuse a
    newer schema. ``where``: the log's URL without its password, which every refusal names.

    No DDL runs when every table and index is there: PostgreSQL checks CREATE on the schema even for ``CREATE ... IF NOT
    EXISTS``, and an application's role may only read and insert into tables its DBA made."""
    with conn.transaction():
        missing = [row[0] for row in conn.execute(_MISSING, ([*_TABLES, *_INDEXES],)).fetchall()]
        if create and missing:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO blackbox_meta (key, value) VALUES ('schema_version', %s) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),))
        elif not create and (tables := [name for name in missing if name in _TABLES]):
            raise CallLogError(f"the database {where} holds no call log: no table {', '.join(tables)} in its search_path")
        row = conn.execute("SELECT value FROM blackbox_meta WHERE key = 'schema_version'").fetchone()
    check_schema_version(row[0] if row else None, where)


class SetUp:
    """The log's tables made (or checked) and its id read, once: when the log opens, or, if the database could not be
    reached then, by the first write or read that reaches it (so a process started during an outage keeps its records)."""

    def __init__(self, where: str, *, create: bool) -> None:
        """``where``: the log's URL without its password, named by its errors; ``create``: make the tables if missing."""
        self._where, self._create = where, create
        self.log_id: str | None = None  # None until done; "" for an older log read without ``create``

    @property
    def done(self) -> bool:
        """Whether the tables are known to be there and the log's id is read."""
        return self.log_id is not None

    def ensure(self, conn: Connection[Any]) -> None:
        """Set up on ``conn`` unless done; CallLogError for a database that can't hold the log. Threads (the writer, a read)
        may both do it: it is idempotent, and needs no lock that a fork mid set-up would leave held in the child."""
        if self.log_id is None:
            prepare(conn, self._where, create=self._create)
            with conn.transaction():
                self.log_id = stored_log_id(conn, table="blackbox_meta", mark="%s", create=self._create)


def pg_row(rec: CallRecord) -> PgRow:
    """A record as the batch insert takes it, redacted; CallLogError for a count PostgreSQL can't hold.

    PostgreSQL text can't contain NUL: a NUL in a text column or a candidate becomes U+FFFD (JSON
    columns escape it as ``\\u0000`` and keep it), and so does a lone surrogate (half an emoji),
    which isn't valid UTF-8. Done here, on the caller's thread, so that a batch never fails for one
    bad record.
    """
    values = call_values(rec)
    if values["retries"] > _INT8_MAX:
        raise CallLogError(f"call {rec.call_id!r}: retries={values['retries']} is too large to log")
    row = tuple(pg_text(values[c]) if isinstance(values[c], str) else values[c] for c in CALL_COLUMNS)
    return row, [pg_text(text) for text in rec.candidates]


def pg_text(value: str) -> str:
    """A string PostgreSQL text can hold: NUL and lone surrogates replaced by U+FFFD (what is stored, and so what is looked up)."""
    value = valid_text(value)
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def insert_batch(conn: Connection[Any], rows: list[PgRow]) -> tuple[int, int]:
    """Insert calls and their candidates in one statement, skipping ids already logged; (records sent, inserted)."""
    first: dict[str, PgRow] = {}
    for row in rows:
        first.setdefault(row[0][0], row)  # one id twice in a batch: the first is kept, as across batches
    columns = [list(values) for values in zip(*(row for row, _ in first.values()), strict=True)]
    texts = [(call_id, idx, text) for call_id, (_, candidates) in first.items() for idx, text in enumerate(candidates)]
    ids, indices, bodies = ([list(v) for v in zip(*texts, strict=True)] if texts else ([], [], []))
    inserted = conn.execute(_INSERT_BATCH, [*columns, ids, indices, bodies]).fetchall()
    return len(rows), len(inserted)


def read_page(conn: Connection[Any], where: list[str], args: list[Any], after: Cursor | None, size: int) -> Page:
    """One page of calls after the (created, call_id) cursor, with candidates and feedback."""
    clauses = where + (["(created, call_id) > (%s, %s)"] if after else [])
    sql = _SELECT_CALLS + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + " ORDER BY created, call_id LIMIT %s"
    rows = conn.execute(sql, [*args, *(after or ()), size]).fetchall()
    ids = [row[0] for row in rows]
    texts, feedback = candidate_texts(conn, ids), feedback_by_call(conn, ids)
    return [(record_from(row, texts.get(row[0], [])), feedback.get(row[0], [])) for row in rows]


def read_snapshot(conn: Connection[Any]) -> Iterator[tuple[CallRecord, list[Feedback]]]:
    """Every call with its feedback, oldest first, a page per query in one REPEATABLE READ transaction (``conn`` has run
    nothing yet): the log as it stood at the first query, whatever is committed meanwhile, never held whole in memory."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    for page in paged(functools.partial(read_page, conn, [], []), None):
        yield from page


def read_call(conn: Connection[Any], call_id: str) -> CallRecord | None:
    """One logged call, or None."""
    row = conn.execute(_SELECT_CALLS + " WHERE call_id = %s", (call_id,)).fetchone()
    return None if row is None else record_from(row, candidate_texts(conn, [call_id]).get(call_id, []))


def candidate_texts(conn: Connection[Any], ids: list[str]) -> dict[str, list[str]]:
    """Candidate texts per call id, in index order."""
    found: dict[str, list[str]] = {}
    for call_id, text in conn.execute("SELECT call_id, text FROM blackbox_candidates WHERE call_id = ANY(%s) ORDER BY call_id, idx", (ids,)):
        found.setdefault(call_id, []).append(text)
    return found


def feedback_by_call(conn: Connection[Any], ids: list[str]) -> dict[str, list[Feedback]]:
    """Feedback per call id, oldest first."""
    found: dict[str, list[Feedback]] = {}
    sql = f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM blackbox_feedback WHERE call_id = ANY(%s) ORDER BY id"
    for row in conn.execute(sql, (ids,)):
        item = feedback_from(row)
        found.setdefault(item.call_id, []).append(item)
    return found


def candidates_of(conn: Connection[Any], call_id: str) -> tuple[int, list[int]] | None:
    """How many candidates a call has and which it returned, the call's row locked against deletion and against another
    feedback on it (so a repeat is seen: ``insert_feedback``), not against new candidates or feedback rows; None if unknown."""
    sql = (
        "SELECT chosen::text, (SELECT COUNT(*) FROM blackbox_candidates WHERE call_id = %s) FROM blackbox_calls"
        " WHERE call_id = %s FOR NO KEY UPDATE"
    )
    row = conn.execute(sql, (call_id, call_id)).fetchone()
    return None if row is None else (int(row[1]), stored_chosen(call_id, row[0], int(row[1])))


def insert_feedback(conn: Connection[Any], item: Feedback) -> None:
    """Insert one feedback row, unless it repeats the call's latest (a retried request: counted once, as on SQLite);
    the call's row is locked (``candidates_of``), so two copies sent at once are compared one after the other."""
    values = feedback_values(item)  # its note redacted
    row = tuple(pg_text(values[c]) if isinstance(values[c], str) else values[c] for c in FEEDBACK_COLUMNS)
    if not repeats(conn.execute(latest_feedback("blackbox_feedback", "%s"), (row[0],)).fetchone(), row):
        sql = f"INSERT INTO blackbox_feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join(['%s'] * len(FEEDBACK_COLUMNS))})"
        conn.execute(sql, row)


def day_model_rows(conn: Connection[Any]) -> tuple[list[DayModelRow], int]:
    """The stats' (day, model) groups and the feedback count; CallLogError naming a call whose time or cost the SDK could not
    have written (edited by hand), which would otherwise be summed into the spend, or fail the query, or make no day.
    One REPEATABLE READ transaction (``conn`` has run nothing yet): every count is of the log as it stood at one moment."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    rows = conn.execute(_BY_DAY_AND_MODEL).fetchall()
    if any(damaged for *_, damaged in rows):
        call_id, damage = conn.execute(_DAMAGED).fetchone() or ("?", "it is damaged")
        raise damaged_call(call_id, damage)
    rows = [row[:-1] for row in rows]
    feedback = conn.execute("SELECT COUNT(*) FROM blackbox_feedback").fetchone()
    return rows, int(feedback[0]) if feedback else 0
