"""What a call log is asked before it is repaired from the budget ledger: its id, which call ids it holds, its latest call.

The same SQL serves the SQLite log (table ``calls``, ``?`` placeholders) and the PostgreSQL log
(``blackbox_calls``, ``%s``); both look ids up by primary key and the latest call by the
``(created, call_id)`` index, so either question costs a few index reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

IDS_PER_QUERY = 500  # call ids looked up per statement (well under SQLite's limit on parameters)


def logged_call_ids(conn: Any, call_ids: Iterable[str], *, table: str = "calls", mark: str = "?") -> set[str]:
    """Which of ``call_ids`` the log's ``table`` holds."""
    wanted, found = list(dict.fromkeys(call_ids)), set[str]()
    for start in range(0, len(wanted), IDS_PER_QUERY):
        chunk = wanted[start : start + IDS_PER_QUERY]
        query = f"SELECT call_id FROM {table} WHERE call_id IN ({', '.join([mark] * len(chunk))})"
        found.update(row[0] for row in conn.execute(query, chunk).fetchall())
    return found


def latest_created(conn: Any, *, table: str = "calls") -> float | None:
    """When the log's latest call was made (seconds since the epoch); None for an empty log."""
    row = conn.execute(f"SELECT MAX(created) FROM {table}").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def stored_log_id(conn: Any, *, table: str = "meta", mark: str = "?", create: bool = True) -> str:
    """The log's id from its meta ``table``, made (a random hex string) by whichever process asks first; without ``create``
    (a reader, which writes nothing) "" for an older log that has none yet."""
    select = f"SELECT value FROM {table} WHERE key = 'log_id'"
    row = conn.execute(select).fetchone()
    if row is None and not create:
        return ""
    if row is None:
        insert = f"INSERT INTO {table} (key, value) VALUES ('log_id', {mark}) ON CONFLICT (key) DO NOTHING"
        conn.execute(insert, (uuid.uuid4().hex,))
        row = conn.execute(select).fetchone()
    return str(row[0])
