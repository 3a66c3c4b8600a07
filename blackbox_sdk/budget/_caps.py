"""Money and caps as every ledger sees them: integer nano-dollars, a cap, what is spent and held under it.

Money is integer nano-dollars (1e-9 USD) so sums are exact and a cap admits exactly the calls
that fit. Spend is counted per "row": the whole ledger, a UTC day, a key, a model and its family
(the model without a dated snapshot suffix); a cap reads the row it names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ._prices import snapshot_base

NANO_PER_USD = 1_000_000_000
EXACT_LIMIT = 2**53  # a call's token counts and nano-dollars stay below this: Redis Lua's doubles hold them exactly
MAX_CAP_USD = float((2**63 - 1) // NANO_PER_USD)  # the largest cap (about $9.2 billion): its nano-dollars fit an int64
REPORTED_SCOPES = ("total", "per_day", "per_key", "model")  # the totals rows a report shows, by scope

Scope = Literal["total", "per_call", "per_day", "per_key", "per_model"]


def usd_to_nano(usd: float, *, round_up: bool) -> int:
    """USD as integer nano-dollars; float noise below a thousandth of a nano-dollar is dropped first."""
    scaled = round(usd * NANO_PER_USD, 3)
    return math.ceil(scaled) if round_up else math.floor(scaled)


def bounded_nano(usd: float) -> int | None:
    """`usd` as nano-dollars rounded up; None when it is beyond what every ledger counts exactly (or not a number)."""
    if not usd * NANO_PER_USD < EXACT_LIMIT:  # NaN and infinity fail too
        return None
    return usd_to_nano(usd, round_up=True)


def nano_to_usd(nano: int) -> float:
    """Integer nano-dollars as USD."""
    return nano / NANO_PER_USD


def usd_text(usd: float) -> str:
    """An amount as a message shows it: to the micro-dollar at least, and to the nano-dollar the ledger keeps where
    that shows more (a cap of $0.0000005 is not "$0.000000")."""
    text = f"{usd:.9f}"
    return f"${text[:-3]}{text[-3:].rstrip('0')}"


@dataclass(frozen=True)
class Cap:
    """A spending limit: its scope, its limit, and the day, key or model it is for."""

    scope: Scope
    limit_nano: int
    value: str | None = None


@dataclass(frozen=True)
class CapUsage:
    """What is already settled and reserved under a cap."""

    cap: Cap
    spent_nano: int
    reserved_nano: int

    @property
    def headroom_nano(self) -> int:
        """What a new reservation may still take under this cap."""
        return self.cap.limit_nano - self.spent_nano - self.reserved_nano


def totals_row(cap: Cap) -> tuple[str, str]:
    """The (scope, value) row holding a cap's spend; a per-model cap on a base name reads its family."""
    value = cap.value or ""
    if cap.scope == "per_model":
        return ("family", value) if snapshot_base(value) == value else ("model", value)
    return cap.scope, value


def charged_rows(model: str, key: str | None, day: str) -> list[tuple[str, str]]:
    """Every row a call of `model` for `key` on `day` counts in (calls without a key share the "" row)."""
    return [("total", ""), ("per_day", day), ("per_key", key or ""), ("model", model), ("family", snapshot_base(model))]
