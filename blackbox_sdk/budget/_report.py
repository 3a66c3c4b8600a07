"""What a budget reports: the ledger's totals by day, key and model, and each cap's headroom."""

from __future__ import annotations

from pydantic import BaseModel

from ._ledger import CapUsage, nano_to_usd
from ._store import LedgerStore

REPORTED_SCOPES = ("total", "per_day", "per_key", "model")  # the ledger's totals scopes a report shows


class CapStatus(BaseModel):
    """One cap's limit, what is settled and reserved under it, and what remains."""

    scope: str
    value: str | None
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    remaining_usd: float


class BudgetReport(BaseModel):
    """Totals of the whole ledger (every process sharing it) and the state of this budget's caps."""

    spent_usd: float
    reserved_usd: float
    outstanding_reservations: int
    calls: int
    by_day: dict[str, float]
    by_key: dict[str, float]  # "" holds calls made without a key
    by_model: dict[str, float]
    caps: list[CapStatus]


def read_report(ledger: LedgerStore, usages: list[CapUsage]) -> BudgetReport:
    """The ledger's totals with the given cap usages; call it inside the transaction that read them."""
    reserved, outstanding = ledger.outstanding()
    totals = {scope: ledger.totals(scope) for scope in REPORTED_SCOPES}
    by = {scope: {value: nano_to_usd(nano) for value, (nano, _) in rows.items()} for scope, rows in totals.items()}
    spent_nano, calls = totals["total"].get("", (0, 0))
    return BudgetReport(
        spent_usd=nano_to_usd(spent_nano),
        reserved_usd=nano_to_usd(reserved),
        outstanding_reservations=outstanding,
        calls=calls,
        by_day=by["per_day"],
        by_key=by["per_key"],
        by_model=by["model"],
        caps=[_cap_status(usage) for usage in usages],
    )


def _cap_status(usage: CapUsage) -> CapStatus:
    """The status of the cap `usage` was read for, in USD."""
    return CapStatus(
        scope=usage.cap.scope,
        value=usage.cap.value,
        limit_usd=nano_to_usd(usage.cap.limit_nano),
        spent_usd=nano_to_usd(usage.spent_nano),
        reserved_usd=nano_to_usd(usage.reserved_nano),
        remaining_usd=nano_to_usd(usage.headroom_nano),
    )
