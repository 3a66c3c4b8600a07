"""Owed settles: a paid call's charge that its ledger could not take is kept and tried again until it lands.

An answer the server sent is paid for whatever the ledger says. When the settle can't reach the
ledger (a Redis restarting, an SQLite file locked past its timeout), the client does not fail the
paid call, which would lose the answer (or pay for it twice where the cache shares the ledger's
Redis); it owes the charge instead. One daemon thread per process tries every owed settle again
every few seconds until the ledger takes it (settles are idempotent by reservation id, so one whose
reply was lost counts once), and once more at exit. Each is also kept on disk (``_journal``) until
it lands, so that a charge still owed when its process exits or dies is settled by the next Budget
that opens the same ledger on this host. Meanwhile the call's hold lapses at its lease, as a hold does whose process stopped renewing it, and
the late settle charges the call in full all the same (docs/budgets.md, "Leases").
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .._exceptions import ReservationNotHeldError, StoreUnavailableError
from .._logging import logger
from . import _journal
from ._caps import nano_to_usd, usd_to_nano
from ._journal import OwedCharge
from ._owners import this_process
from ._policy import Reservation, charged_usage
from ._store import LedgerStore

RETRY_S = 2.0  # how often an owed settle is tried again


@dataclass(frozen=True)
class _Debt:
    """One owed settle: its reservation and call, how to settle it, what it charges (for the warnings), its journal file."""

    reservation_id: str
    call_id: str
    usd: float
    settle: Callable[[], object]
    journal: Path | None = None


class OwedSettles:
    """The settles this process owes its ledgers, retried from one daemon thread started on first use."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start empty, with no thread (in a forked child too: the parent's debts are the parent's to settle)."""
        self._wake = threading.Condition()
        self._debts: dict[str, _Debt] = {}
        self._started = False

    def owe(self, debt: _Debt, error: StoreUnavailableError) -> None:
        """Keep ``debt`` (a paid call's settle, which failed with ``error``) to be tried again until it lands."""
        logger.warning(
            "call %s: the ledger can't be reached to charge its $%.6f (%s); the charge is kept and settled when it can be",
            debt.call_id, debt.usd, error,
        )
        self.keep(debt)

    def keep(self, debt: _Debt) -> None:
        """Try ``debt`` again every RETRY_S from the daemon thread (started here on first use) until it lands."""
        with self._wake:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="blackbox-sdk-owed-settles", daemon=True).start()
            self._debts[debt.reservation_id] = debt
            self._wake.notify()

    @property
    def owed_usd(self) -> float:
        """What the settles still owed charge in all, in USD."""
        with self._wake:
            return sum(debt.usd for debt in self._debts.values())

    def settle_now(self) -> int:
        """Try every owed settle once; how many are still owed (their ledger still out of reach)."""
        with self._wake:
            debts = list(self._debts.values())
        for debt in debts:
            if self._paid(debt):
                _journal.remove(debt.journal)
                with self._wake:
                    self._debts.pop(debt.reservation_id, None)
        with self._wake:
            return len(self._debts)

    def _paid(self, debt: _Debt) -> bool:
        """Whether ``debt`` is settled now (or needs no settling: the ledger had it already); False while out of reach."""
        try:
            debt.settle()
        except StoreUnavailableError:
            return False
        except ReservationNotHeldError:  # settled already (a reply lost after the charge): nothing more owed
            return True
        except Exception as error:  # noqa: BLE001 - a daemon thread must go on; this debt can't be settled
            logger.warning("call %s: its owed charge of $%.6f could not be settled: %s", debt.call_id, debt.usd, error)
            return True
        logger.info("call %s: its owed charge of $%.6f was settled", debt.call_id, debt.usd)
        return True

    def _run(self) -> None:
        """Try the owed settles every RETRY_S while there are any, forever (a daemon thread)."""
        while True:
            with self._wake:
                while not self._debts:
                    self._wake.wait()
                self._wake.wait(RETRY_S)
            self.settle_now()

    def at_exit(self) -> None:
        """Try once more at exit; name what is still owed (its spend will be missing from the ledger)."""
        if self._debts and self.settle_now():
            with self._wake:
                count, usd = len(self._debts), sum(debt.usd for debt in self._debts.values())
            logger.warning(
                "paid calls whose charge is still owed at exit: %d ($%.6f in all); the ledger stayed out of reach, so their spend is "
                "missing from it until the next Budget on this host that opens it settles them from %s", count, usd, _journal.journal_dir(),
            )


OWED = OwedSettles()
os.register_at_fork(after_in_child=OWED.forget)
atexit.register(OWED.at_exit)


def owe_settle(
    reservation: Reservation, counts: tuple[object, object, object, tuple[object, object]], settle: Callable[[], object], error: StoreUnavailableError,
    *, ledger: str | None, lease_s: float, log_id: str | None,
) -> float:
    """Owe a paid call's settle that failed with ``error`` (its usage's prompt, completion, cached and audio counts as
    given to it), journaled under ``ledger`` (None: a private ledger, kept in memory only); what it charges in USD."""
    nano, prompt, completion, cached = charged_usage(reservation, *counts)
    journal = None
    if ledger is not None:
        host, pid, started = this_process()
        journal = _journal.write(OwedCharge(
            ledger, reservation.id, reservation.call_id, reservation.model, reservation.key, reservation.day,
            usd_to_nano(reservation.worst_case_usd, round_up=True), lease_s, nano, prompt, completion, cached, log_id, host, pid, started,
        ))
    OWED.owe(_Debt(reservation.id, reservation.call_id, nano_to_usd(nano), settle, journal), error)
    return nano_to_usd(nano)


def adopt_owed(store: LedgerStore, ledger: str | None) -> int:
    """Take over the charges that processes of this host which no longer run owed ``ledger``; how many."""
    found = [] if ledger is None else _journal.orphans(ledger)
    for path, charge in found:
        logger.info("call %s: settling the $%.6f its process (no longer running) owed this ledger", charge.call_id, nano_to_usd(charge.usd_nano))
        OWED.keep(_Debt(charge.reservation_id, charge.call_id, nano_to_usd(charge.usd_nano), partial(charge.settle, store), path))
    return len(found)


def owed_usd() -> float:
    """What this process's owed settles charge in all, in USD: paid calls its ledger has yet to record."""
    return OWED.owed_usd


def settle_owed() -> int:
    """Try every owed settle now (a graceful shutdown's step); how many are still owed."""
    return OWED.settle_now()
