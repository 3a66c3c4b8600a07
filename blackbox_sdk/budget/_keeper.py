"""Lease renewal: a reservation keeps its hold for as long as its process runs and holds it.

A reservation's lease (``Budget(lease_s=...)``) is how long a hold outlives the process that made
it (killed, frozen, or cut off from the ledger); it is not a bound on how long a call may take. One
daemon thread per process renews every reservation still held by someone in this process a third
of a lease before it lapses, so a stream read for an hour, or an answer slower than ``lease_s``,
keeps its worst case held until it is settled or released. The keeper holds reservations weakly:
one dropped without being settled or released (a bug in a caller of ``Budget.reserve``) is renewed
no more, and lapses after ``lease_s`` as before. A renewal that fails (the ledger can't be reached)
is tried again every few seconds until the lease lapses; one the ledger refuses (the lease lapsed
already, and its headroom may be spent elsewhere: a lapsed hold is never revived; or the ledger lost
the hold, as a Redis restarted without its data does) ends the keeping with a warning. The settle charges the call in full either way.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .._logging import logger
from ._policy import Reservation

RENEW_AT = 1 / 3  # renew when this fraction of the lease is left
RETRY_S = 2.0  # a failed renewal is tried again this often (sooner for a short lease) until the lease lapses
IDLE_S = 60.0  # with nothing to renew the thread looks again after this: a call's keep() then seldom has to wake it


@dataclass
class _Kept:
    """One kept reservation: how to renew it, its lease, when it lapses and when to renew it (time.monotonic())."""

    held: weakref.ReferenceType[Reservation]
    renew: Callable[[], bool]
    lease_s: float
    leased_until: float
    due: float = 0.0

    def renewed(self, at: float) -> None:
        """Its lease runs ``lease_s`` from ``at``; the next renewal is due a third of a lease before it lapses."""
        self.leased_until = at + self.lease_s
        self.due = self.leased_until - self.lease_s * RENEW_AT


class LeaseKeeper:
    """Renews the leases of this process's held reservations from one daemon thread, started on first use."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start empty, with no thread; in a forked child too, whose parent's reservations are the parent's to
        renew (a fresh lock: the parent's thread may have held the old one at the fork)."""
        self._wake = threading.Condition()
        self._kept: dict[str, _Kept] = {}
        self._started = False
        self._wakes_at = math.inf  # when the thread wakes by itself next (time.monotonic())

    def kept(self, reservation: Reservation, renew: Callable[[], bool], lease_s: float) -> Reservation:
        """``reservation``, renewed from now on with ``renew`` (True: renewed for ``lease_s`` from now) until it is dropped."""
        kept = _Kept(weakref.ref(reservation), renew, lease_s, reservation.leased_until)
        kept.due = kept.leased_until - lease_s * RENEW_AT
        with self._wake:
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="blackbox-sdk-leases", daemon=True).start()
            self._kept[reservation.id] = kept
            if kept.due < self._wakes_at:  # only then: waking the thread on every call would cost each call a thread switch
                self._wake.notify()
        return reservation

    def drop(self, reservation: Reservation) -> float:
        """Stop renewing ``reservation`` (settled or released); when its lease lapses, as last renewed."""
        with self._wake:
            kept = self._kept.pop(reservation.id, None)
        return reservation.leased_until if kept is None else max(kept.leased_until, reservation.leased_until)

    def _run(self) -> None:
        """Sleep until the next renewal is due, renew what is due, forever (a daemon thread)."""
        while True:
            with self._wake:
                due = [(rid, kept) for rid, kept in self._kept.items() if kept.due <= time.monotonic()]
                if not due:
                    self._wakes_at = min((kept.due for kept in self._kept.values()), default=time.monotonic() + IDLE_S)
                    self._wake.wait(max(0.0, self._wakes_at - time.monotonic()))
                    self._wakes_at = -math.inf  # awake: a keep() meanwhile needs no notify
                    continue
            for reservation_id, kept in due:
                self._renew(reservation_id, kept)

    def _renew(self, reservation_id: str, kept: _Kept) -> None:
        """Renew one reservation; stop keeping it once its holder dropped it, the ledger refused, or it lapsed."""
        at = time.monotonic()
        failed: Exception | None = None
        try:
            renewed = kept.held() is not None and kept.renew()
        except Exception as error:  # noqa: BLE001 - a ledger out of reach: tried again until the lease lapses
            renewed, failed = False, error
        retry_at = at + min(RETRY_S, kept.lease_s * RENEW_AT / 4)
        with self._wake:
            if self._kept.get(reservation_id) is not kept:
                return  # settled or released meanwhile
            if renewed:
                kept.renewed(at)
                return
            if failed is not None and retry_at < kept.leased_until:
                kept.due = retry_at
                return
            del self._kept[reservation_id]
        if failed is not None:
            logger.warning("reservation %s: its lease could not be renewed before it lapsed (%s); its hold stopped counting", reservation_id, failed)
        elif kept.held() is not None:
            logger.warning(
                "reservation %s: the ledger refused to renew its lease: it had lapsed, or the ledger no longer holds it (a "
                "store that lost its data, such as a Redis restarted without persistence); its hold stopped counting", reservation_id,
            )


KEEPER = LeaseKeeper()
os.register_at_fork(after_in_child=KEEPER.forget)
