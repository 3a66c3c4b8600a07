"""What a budget reports: the ledger's totals by day, key and model, and each cap's headroom."""

from __future__ import annotations

from pydantic import BaseModel

from ._caps import REPORTED_SCOPES, CapUsage, nano_to_usd
from ._store import LedgerSnapshot


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


def read_report(snapshot: LedgerSnapshot) -> BudgetReport:
    """A report from one consistent snapshot of the ledger (totals, what is held, each cap's usage)."""
    by = {
        scope: {value: nano_to_usd(nano) for value, (nano, _) in snapshot.totals.get(scope, {}).items()}
        for scope in REPORTED_SCOPES
    }
    spent_nano, calls = snapshot.totals.get("total", {}).get("", (0, 0))
    return BudgetReport(
        spent_usd=nano_to_usd(spent_nano),
        reserved_usd=nano_to_usd(snapshot.reserved_nano),
        outstanding_reservations=snapshot.outstanding,
        calls=calls,
        by_day=by["per_day"],
        by_key=by["per_key"],
        by_model=by["model"],
        caps=[_cap_status(usage) for usage in snapshot.usages],
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
