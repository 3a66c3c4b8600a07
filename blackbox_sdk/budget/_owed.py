"""Owed ledger writes: a paid call's charge its ledger could not take, and a hold or a calibration gate it could
not give back, each kept and tried again until the ledger takes it.

An answer the server sent is paid for whatever the ledger says. When the settle can't reach the
ledger (a Redis restarting, an SQLite file locked past its timeout), the client does not fail the
paid call, which would lose the answer (or pay for it twice where the cache shares the ledger's
Redis); it owes the charge instead. One daemon thread per process tries every owed write again
every few seconds until the ledger takes it (settles are idempotent by reservation id, so one whose
reply was lost counts once), and once more at exit. A charge is also kept on disk (``_journal``) until
it lands, so that a charge still owed when its process exits or dies is settled by the next Budget
that opens the same ledger on this host. Meanwhile the call's hold lapses at its lease, as a hold does whose process stopped renewing it, and
the late settle charges the call in full all the same (docs/budgets.md, "Leases").

A release, or a calibration gate given back, that can't reach the ledger is owed the same way (in memory only: a
process that dies leaves them to their leases), and so is the release of a hold whose reserve failed, since the
ledger may have run it with its reply lost: either would otherwise hold a cap's room, or keep an endpoint's calls
waiting, until its lease lapsed, five minutes on. Those are idempotent too, and at most MAX_UNDOS are kept.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from ._store import Hold, LedgerStore

RETRY_S = 2.0  # how often an owed write is tried again
MAX_UNDOS = 10_000  # owed releases and gates kept at most (a long outage's refused calls): the rest wait for their leases


@dataclass(frozen=True)
class _Debt:
    """One owed write: its reservation (or gate) and call, how to write it, what it charges (for the warnings), its
    journal file, the ledger it goes to (tried once a round while out of reach), and what it gives back (None: a charge)."""

    reservation_id: str
    call_id: str
    usd: float
    settle: Callable[[], object]
    journal: Path | None = None
    ledger: object = None
    undoes: str | None = None
    until: float = math.inf  # time.monotonic() past which a release or gate needs no giving back: its lease has lapsed


class OwedSettles:
    """The writes this process owes its ledgers, retried from one daemon thread started on first use."""

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

    def keep(self, debt: _Debt) -> bool:
        """Try ``debt`` again every RETRY_S from the daemon thread (started here on first use) until it lands; False
        (not kept) for a release or gate beyond MAX_UNDOS."""
        with self._wake:
            if debt.undoes is not None and sum(other.undoes is not None for other in self._debts.values()) >= MAX_UNDOS:
                return False
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="blackbox-sdk-owed-settles", daemon=True).start()
            self._debts[debt.reservation_id] = debt
            self._wake.notify()
        return True

    @property
    def owed_usd(self) -> float:
        """What the settles still owed charge in all, in USD."""
        with self._wake:
            return sum(debt.usd for debt in self._debts.values())

    def settle_now(self) -> int:
        """Try every owed write once (one a ledger out of reach, not each of its others); how many charges are still owed."""
        with self._wake:
            debts = list(self._debts.values())
        down: list[object] = []
        for debt in debts:
            lapsed = time.monotonic() > debt.until  # nothing left to give back
            if not lapsed and any(debt.ledger is ledger for ledger in down):
                continue
            if lapsed or self._paid(debt):
                _journal.remove(debt.journal)
                with self._wake:
                    self._debts.pop(debt.reservation_id, None)
            elif debt.ledger is not None:
                down.append(debt.ledger)
        with self._wake:
            return sum(debt.undoes is None for debt in self._debts.values())

    def _paid(self, debt: _Debt) -> bool:
        """Whether ``debt`` is written now (or needs no writing: the ledger had it already); False while out of reach."""
        what, done = (f"its owed charge of ${debt.usd:.6f}", "settled") if debt.undoes is None else (f"its {debt.undoes}", "given back")
        try:
            debt.settle()
        except StoreUnavailableError:
            return False
        except ReservationNotHeldError:  # settled already (a reply lost after the charge): nothing more owed
            return True
        except Exception as error:  # noqa: BLE001 - a daemon thread must go on; this debt can't be settled
            logger.warning("call %s: %s could not be %s: %s", debt.call_id, what, done, error)
            return True
        logger.info("call %s: %s was %s", debt.call_id, what, done)
        return True

    def _run(self) -> None:
        """Try the owed writes every RETRY_S while there are any, forever (a daemon thread)."""
        while True:
            with self._wake:
                while not self._debts:
                    self._wake.wait()
                self._wake.wait(RETRY_S)
            self.settle_now()

    def at_exit(self) -> None:
        """Try once more at exit; name the charges still owed (their spend will be missing from the ledger)."""
        if self._debts and self.settle_now():
            with self._wake:
                charges = [debt for debt in self._debts.values() if debt.undoes is None]
            logger.warning(
                "paid calls whose charge is still owed at exit: %d ($%.6f in all); the ledger stayed out of reach, so their spend is "
                "missing from it until the next Budget on this host that opens it settles them from %s",
                len(charges), sum(debt.usd for debt in charges), _journal.journal_dir(),
            )


OWED = OwedSettles()
os.register_at_fork(after_in_child=OWED.forget)
atexit.register(OWED.at_exit)


def owe_settle(
    reservation: Reservation, counts: tuple[object, object, object, tuple[object, object]], settle: Callable[[], object], error: StoreUnavailableError,
    *, ledger: str | None, store: object, lease_s: float, log_id: str | None,
) -> float:
    """Owe a paid call's settle that failed with ``error`` (its usage's prompt, completion, cached and audio counts as
    given to it), journaled under ``ledger`` (None: a private ledger, kept in memory only) and tried on ``store``; what it charges in USD."""
    nano, prompt, completion, cached = charged_usage(reservation, *counts)
    journal = None
    if ledger is not None:
        host, pid, started = this_process()
        journal = _journal.write(OwedCharge(
            ledger, reservation.id, reservation.call_id, reservation.model, reservation.key, reservation.day,
            usd_to_nano(reservation.worst_case_usd, round_up=True), lease_s, nano, prompt, completion, cached, log_id, host, pid, started,
        ))
    OWED.owe(_Debt(reservation.id, reservation.call_id, nano_to_usd(nano), settle, journal, store), error)
    return nano_to_usd(nano)


def owe_undo(
    key: str, call_id: str, what: str, undo: Callable[[], object], store: object, lease_s: float, error: StoreUnavailableError | None = None,
) -> None:
    """Owe ``undo``, which gives ``what`` back to ``store`` (a hold, a calibration gate; ``key`` names it), until the
    ledger takes it or its ``lease_s`` lapses. ``error``: it failed so, and a warning says so; None: a write that failed
    may have left it (a reserve, a gate taken), and the caller's error says what failed."""
    kept = OWED.keep(_Debt(f"{what}:{key}", call_id, 0.0, undo, None, store, what, time.monotonic() + lease_s))
    if error is not None:
        tail = "it is given back once the ledger answers" if kept else f"{MAX_UNDOS} are owed already, so it waits for its lease"
        logger.warning("call %s: its %s could not be given back now (%s); %s", call_id, what, error, tail)


def release_or_owe(store: LedgerStore, reservation_id: str, call_id: str, lease_s: float) -> None:
    """Release a hold on ``store`` now; one the ledger can't be reached to release is owed, and a warning says so."""
    try:
        store.release(reservation_id)
    except StoreUnavailableError as error:
        owe_undo(reservation_id, call_id, "hold", partial(store.release, reservation_id), store, lease_s, error)


@contextmanager
def released_if_unanswered(store: LedgerStore, hold: Hold) -> Iterator[None]:
    """Reserve ``hold`` in the body; when the ledger can't be reached, owe its release and raise: the ledger may have
    run the reserve with its reply lost, and nobody else would give that hold back."""
    try:
        yield
    except StoreUnavailableError:
        owe_undo(hold.reservation_id, hold.call_id, "hold", partial(store.release, hold.reservation_id), store, hold.lease_s)
        raise


def adopt_owed(store: LedgerStore, ledger: str | None) -> int:
    """Take over the charges that processes of this host which no longer run owed ``ledger``; how many."""
    found = [] if ledger is None else _journal.orphans(ledger)
    for path, charge in found:
        logger.info("call %s: settling the $%.6f its process (no longer running) owed this ledger", charge.call_id, nano_to_usd(charge.usd_nano))
        OWED.keep(_Debt(charge.reservation_id, charge.call_id, nano_to_usd(charge.usd_nano), partial(charge.settle, store), path, store))
    return len(found)


def owed_usd() -> float:
    """What this process's owed settles charge in all, in USD: paid calls its ledger has yet to record."""
    return OWED.owed_usd


def settle_owed() -> int:
    """Try every owed write now (a graceful shutdown's step: charges, holds and gates); how many charges are still owed."""
    return OWED.settle_now()
