"""The seam between a Budget and its ledger: small protocols a second backend implements.

Today's implementation is :class:`~blackbox_sdk.budget.Ledger` (one SQLite file shared by every
process on a host). A ledger keeps settled spend per cap scope and the reservations of calls in
flight; the Budget decides what to admit, inside the ledger's check-and-reserve transaction, so
processes sharing a ledger never overspend together. Money is integer nano-dollars throughout.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from ._ledger import Cap, CapUsage


@runtime_checkable
class CapTransaction(Protocol):
    """An open check-and-reserve transaction: read what each cap holds, then hold a call's worst case."""

    def usage(self, cap: Cap) -> CapUsage:
        """Settled and outstanding spend under ``cap``."""
        ...

    def add_reservation(self, *, call_id: str, model: str, key: str | None, day: str, usd_nano: int) -> str:
        """Hold ``usd_nano`` for a call until it is settled or released; returns the reservation's id."""
        ...


@runtime_checkable
class LedgerStore(Protocol):
    """What a Budget needs from its ledger: reserve under a lock, settle, release, and spend per scope."""

    def transaction(self) -> AbstractContextManager[CapTransaction]:
        """A transaction no other writer interleaves with (reads inside it see one state); committed when it ends cleanly."""
        ...

    def settle(
        self, reservation_id: str, *, usd_nano: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int
    ) -> None:
        """Replace a reservation by the real spend; ConfigError when it is not outstanding."""
        ...

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending; False if it was not outstanding."""
        ...

    def spent_nano(self, cap: Cap) -> int:
        """Settled spend under a cap's scope and value."""
        ...

    def totals(self, scope: str) -> dict[str, tuple[int, int]]:
        """Settled nano-dollars and call counts per value of a scope ("total", "per_day", "per_key", "model")."""
        ...

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars held, and the number of reservations not yet settled or released."""
        ...
