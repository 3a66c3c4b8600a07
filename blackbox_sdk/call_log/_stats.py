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
from .._sqlite import snapshot
from ._tables import CREATED_RANGE, DamagedRowError

# What makes a calls row one a store's stats can count, in SQL both stores run: a time some UTC day of the years 1 to
# 9999 holds (PostgreSQL's NaN, SQLite's text fail it), and a finite cost of 0 or more (``inf``: the dialect's infinity).
IN_DAYS = f"created >= {CREATED_RANGE[0]!r} AND created < {CREATED_RANGE[1] + 1!r}"
TIME_DAMAGE = "its created time is not a Unix time in seconds in the years 1 to 9999"
COST_DAMAGE = "its cost_usd is not a finite number of dollars, 0 or more"


def finite_cost(inf: str) -> str:
    """The SQL condition of a cost the SDK could have written, with ``inf`` the dialect's infinity."""
    return f"cost_usd >= 0 AND cost_usd < {inf}"


# Why a calls row can't be counted (NULL for one the SDK could have written): each summed or grouped value checked as a
# read of the row checks it, so a row edited by hand never counts as 0 (SUM reads text as 0, or "1,5" as 1) or less.
_DAMAGE = (
    f"CASE WHEN typeof(created) NOT IN ('integer', 'real') OR NOT ({IN_DAYS}) THEN '{TIME_DAMAGE}'"
    " WHEN typeof(model) != 'text' THEN 'its model is not text'"
    f" WHEN typeof(cost_usd) NOT IN ('integer', 'real') OR NOT ({finite_cost('9e999')}) THEN '{COST_DAMAGE}'"
    " WHEN typeof(cache_hit) != 'integer' OR cache_hit NOT IN (0, 1) THEN 'its cache_hit is not 0 or 1' END"
)
# The UTC day of a call's second, floored (date() rounds to the millisecond: a call in a day's last half millisecond
# went on the next day, where PostgreSQL's and Python's clocks keep it).
_DAY = "date(CAST(created AS INTEGER) - (created < CAST(created AS INTEGER)), 'unixepoch')"
_BY_DAY_AND_MODEL = (
    f"SELECT {_DAY} AS day, model, COUNT(*), SUM(error IS NOT NULL),"
    f" SUM(cache_hit), SUM(cost_usd), MAX(({_DAMAGE}) IS NOT NULL) FROM calls GROUP BY day, model ORDER BY day, model"
)
_DAMAGED = f"SELECT call_id, damage FROM (SELECT call_id, {_DAMAGE} AS damage FROM calls) WHERE damage IS NOT NULL ORDER BY call_id LIMIT 1"

DayModelRow = tuple[str, str, int, "int | None", "int | None", "float | None"]  # day, model, calls, errors, hits, cost


def summarize(conn: sqlite3.Connection) -> dict[str, Any]:
    """The summary of an SQLite log (see :func:`summary`); CallLogError naming a call whose time, model, cost or cache hit is
    not one (a row edited by hand, a damaged file), which the SDK never writes and which a read of the call refuses too.
    One read transaction: the calls and the feedback are counted as they stood at one moment, whatever another writer adds."""
    with snapshot(conn):
        rows = conn.execute(_BY_DAY_AND_MODEL).fetchall()
        if any(damaged for *_, damaged in rows):
            call_id, damage = conn.execute(_DAMAGED).fetchone() or ("?", "it is damaged")
            raise damaged_call(call_id, damage)
        feedback = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    return summary([row[:-1] for row in rows], feedback)


def damaged_call(call_id: str, damage: str) -> DamagedRowError:
    """The error of a stats read that met a row the SDK could not have written, naming its call and what is wrong."""
    return DamagedRowError(call_id, damage)


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
