"""The call log's summary: calls, errors, cache hits and spend, in total, by model and by UTC day.

A store supplies one row per (UTC day, model), ordered by day then model in code-point order,
and its feedback count; :func:`summary` shapes them, so every store's ``stats()`` has one form.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from typing import Any

from .._exceptions import CallLogError

_BY_DAY_AND_MODEL = (
    "SELECT date(created, 'unixepoch') AS day, model, COUNT(*), SUM(error IS NOT NULL),"
    " SUM(cache_hit), SUM(cost_usd) FROM calls GROUP BY day, model ORDER BY day, model"
)

_UNREADABLE = "SELECT call_id FROM calls WHERE date(created, 'unixepoch') IS NULL OR typeof(model) != 'text' LIMIT 1"

DayModelRow = tuple[str, str, int, "int | None", "int | None", "float | None"]  # day, model, calls, errors, hits, cost


def summarize(conn: sqlite3.Connection) -> dict[str, Any]:
    """The summary of an SQLite log (see :func:`summary`); CallLogError naming a call whose time or model is not one
    (a row edited by hand, a damaged file), which the SDK never writes and no day or model can group."""
    rows = conn.execute(_BY_DAY_AND_MODEL).fetchall()
    if any(not isinstance(day, str) or not isinstance(model, str) for day, model, *_ in rows):
        call_id = (conn.execute(_UNREADABLE).fetchone() or ("?",))[0]
        raise CallLogError(f"call {call_id!r} in the call log can't be read: its created time is not a Unix time or its model is not text")
    return summary(rows, conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])


def summary(rows: Iterable[DayModelRow], feedback: int) -> dict[str, Any]:
    """Counters of every logged call from its (day, model) groups, with the feedback count and hit rate, grouped three ways."""
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
