"""The seam between a Budget and its ledger: what a backend implements (SQLite on one host, Redis for a fleet).

The Budget keeps the policy: which caps apply to a call and its worst case. The store keeps the
money and does one thing atomically: hold that amount only if, under every cap, settled + held +
amount stays within the limit. When it refuses it returns each cap's usage, so the Budget can
shrink the call and try once more, or refuse with the numbers. Reservations carry a lease: a hold
whose lease lapsed (its process died or hung) stops counting. Settle and release are idempotent
by reservation id, so a retry after a lost reply never charges twice. Money is integer nano-dollars.
Settled spends are kept, with the process that settled them and the call log the call was meant
for, so that a call log can be repaired from the ledger when a process ended between charging a
call and logging it (``settled_since``), exactly: only with its own calls, however widely the
ledger is shared.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._logging import logger
from ._caps import Cap, CapUsage
from ._owners import process_alive

NO_LOG = ""  # a spend's log_id when the call was recorded in no call log (None: the settle did not say)


@dataclass(frozen=True)
class Hold:
    """A call's worst case to hold under its caps until it is settled, released, or its lease lapses."""

    reservation_id: str
    call_id: str
    model: str
    key: str | None
    day: str
    usd_nano: int
    lease_s: float


def warn_unheld(call_id: str, reservation_id: str) -> None:
    """The one warning a ledger logs when it charges a paid call whose reservation it no longer held."""
    logger.warning(
        "call %s was paid, but its reservation %s was no longer held (released, or its lapsed record deleted); its spend "
        "was recorded all the same, from the call's own hold", call_id, reservation_id,
    )


@dataclass(frozen=True)
class LedgerSnapshot:
    """One consistent read of a ledger: each cap's usage, what is held now, and settled totals."""

    usages: list[CapUsage]
    reserved_nano: int
    outstanding: int  # reservations held now (lapsed leases excluded)
    totals: dict[str, dict[str, tuple[int, int]]]  # scope -> value -> (settled nano-dollars, calls)


@dataclass(frozen=True)
class SettledSpend:
    """One settled call as the ledger keeps it: what was charged, for which tokens, when, and by which process."""

    call_id: str
    model: str
    key: str | None
    day: str
    usd_nano: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    settled: float  # seconds since the epoch (the Redis server's clock for a Redis ledger)
    host: str = ""  # the settling process: host name, pid and start time ("", 0, None when not recorded)
    pid: int = 0
    pid_start: int | None = None
    log_id: str | None = None  # the call log it was meant for (its `log_id`); NO_LOG: none; None: not said (an older ledger)

    def meant_for(self, log_id: str | None) -> bool:
        """Whether the call log with this id (None: a log that has none) should hold this call: it was settled
        for that log, or without saying for which (an older ledger, or a settle not made by the client)."""
        return self.log_id is None or (log_id is not None and self.log_id == log_id)

    def may_still_be_logged(self, now: float, grace_s: float, alive: dict[tuple[int, int | None], bool] | None = None) -> bool:
        """Whether its process may yet write the call's log record: it runs on this host, or ran on another
        host (or an unrecorded one) and settled less than `grace_s` seconds before `now`. `alive` keeps what was
        found of each process, so that one repair looks at each process once, not once for each of its calls."""
        if self.host and self.host == socket.gethostname():
            owner = (self.pid, self.pid_start)
            if alive is None:
                return process_alive(*owner)
            if owner not in alive:
                alive[owner] = process_alive(*owner)
            return alive[owner]
        return self.settled > now - grace_s


@runtime_checkable
class CapTransaction(Protocol):
    """The SQLite ledger's open check-and-reserve transaction: read what each cap holds, then hold a worst case."""

    def usage(self, cap: Cap) -> CapUsage:
        """Settled and outstanding spend under ``cap``."""
        ...

    def add_reservation(self, *, call_id: str, model: str, key: str | None, day: str, usd_nano: int) -> str:
        """Hold ``usd_nano`` for a call until it is settled or released; returns the reservation's id."""
        ...


@runtime_checkable
class LedgerStore(Protocol):
    """What a Budget needs from its ledger: an atomic capped hold, idempotent settle and release, reports."""

    def reserve(self, hold: Hold, caps: Sequence[Cap]) -> list[CapUsage] | None:
        """Hold ``hold.usd_nano`` if it fits every cap (None), else each cap's usage with nothing held.

        Lapsed leases are released first. Reserving the same reservation id again holds nothing more.
        """
        ...

    def settle(
        self, reservation_id: str, *, usd_nano: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
        hold: Hold | None = None, log_id: str | None = None,
    ) -> bool:
        """Replace a reservation by the real spend: True (charged); False when it was already settled.

        A reservation held or lapsed is charged under its own record. One the store no longer holds but never
        settled (released, its record deleted, or lost with a Redis restarted without persistence) is charged
        from ``hold``, the call's own, with a warning (``warn_unheld``): its answer was paid.
        ReservationNotHeldError when there is no ``hold`` to charge such a one from. ``log_id`` is the call
        log the call is recorded in (NO_LOG: none; None: not said), kept on the spend.
        """
        ...

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending; False if it was not held (already settled, released or lapsed)."""
        ...

    def renew(self, reservation_id: str, lease_s: float) -> bool:
        """Extend a held reservation's lease to ``lease_s`` from now; False when it is not held (a lapsed lease is never revived)."""
        ...

    def snapshot(self, caps: Sequence[Cap]) -> LedgerSnapshot:
        """Each cap's usage, what is held, and the settled totals, read at one moment."""
        ...

    def spent_nano(self, cap: Cap) -> int:
        """Settled spend under a cap's scope and value."""
        ...

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars held, and the number of reservations held (lapsed leases excluded)."""
        ...

    def settled_since(self, since: float) -> list[SettledSpend]:
        """The spends settled at or after `since` (seconds since the epoch), oldest first."""
        ...

    def close(self) -> None:
        """Let go of connections; the next use opens new ones."""
        ...

