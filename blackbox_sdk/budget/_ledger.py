"""A budget ledger in SQLite that several threads and processes share: reservations, spends, totals.

Money is stored as integer nano-dollars (1e-9 USD) so sums are exact and a cap admits exactly
the calls that fit. Check-and-reserve runs in one `BEGIN IMMEDIATE` transaction, so writers
from every process are serialised by SQLite's write lock (WAL mode keeps readers unblocked;
`busy_timeout` makes waiters queue instead of failing). Settled spends are added to a `totals`
table in the same transaction, so a cap check reads a handful of rows however long the history.

Crash safety: each reservation records its host, process id and that process's start time. A
process that dies mid-call leaves its reservations behind; they are released whenever a ledger
is opened and inside every reserve transaction, once the process is gone (a reused pid is told
apart by its start time). A transaction interrupted by a crash is rolled back by SQLite.
The file must live on a local disk: SQLite locking is unreliable over network file systems.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .._exceptions import ConfigError
from .._sqlite import connect, immediate
from ._prices import snapshot_base

NANO_PER_USD = 1_000_000_000
DEFAULT_BUSY_TIMEOUT_S = 60.0

Scope = Literal["total", "per_call", "per_day", "per_key", "per_model"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, call_id TEXT NOT NULL, model TEXT NOT NULL, family TEXT NOT NULL, key TEXT,
    day TEXT NOT NULL, usd_nano INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    pid_start INTEGER, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reservation_id TEXT NOT NULL, call_id TEXT NOT NULL,
    model TEXT NOT NULL, key TEXT, day TEXT NOT NULL, usd_nano INTEGER NOT NULL,
    reserved_nano INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT NOT NULL, value TEXT NOT NULL, usd_nano INTEGER NOT NULL, calls INTEGER NOT NULL,
    PRIMARY KEY (scope, value)
) WITHOUT ROWID;
"""


def usd_to_nano(usd: float, *, round_up: bool) -> int:
    """USD as integer nano-dollars; float noise below a thousandth of a nano-dollar is dropped first."""
    scaled = round(usd * NANO_PER_USD, 3)
    return math.ceil(scaled) if round_up else math.floor(scaled)


def nano_to_usd(nano: int) -> float:
    """Integer nano-dollars as USD."""
    return nano / NANO_PER_USD


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


def _totals_row(cap: Cap) -> tuple[str, str]:
    """The `totals` row holding a cap's settled spend."""
    value = cap.value or ""
    if cap.scope == "per_model":
        return ("family", value) if snapshot_base(value) == value else ("model", value)
    return cap.scope, value


def _reservations_filter(cap: Cap) -> tuple[str, tuple[str | None, ...]]:
    """SQL condition and parameters selecting the outstanding reservations under a cap."""
    if cap.scope == "per_day":
        return "day = ?", (cap.value,)
    if cap.scope == "per_key":
        return "key IS ?", (cap.value,)
    if cap.scope == "per_model":
        column, value = _totals_row(cap)
        return f"{column} = ?", (value,)
    return "1", ()


def _process_state(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks since boot) from /proc; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields 3.. of proc(5); the command name may hold spaces
    return fields[0], int(fields[19])


def _process_alive(pid: int, started: int | None) -> bool:
    """Whether the process that made a reservation still runs (and is not a zombie or a reused pid)."""
    try:
        with contextlib.suppress(PermissionError):  # it exists but belongs to another user
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = _process_state(pid)
    if started is None or state is None:
        return True  # no /proc to tell a reused pid apart: keep the reservation, the safe side
    letter, now_started = state
    return letter not in ("Z", "X") and now_started == started


class LedgerTransaction:
    """An open write transaction: read cap usage and add reservations while holding the lock."""

    def __init__(self, connection: sqlite3.Connection, ledger: Ledger) -> None:
        """Wrap the connection that holds the ledger's write lock."""
        self._connection = connection
        self._ledger = ledger

    def usage(self, cap: Cap) -> CapUsage:
        """Settled and outstanding spend under `cap` (per-call caps have neither)."""
        if cap.scope == "per_call":
            return CapUsage(cap, 0, 0)
        row = self._connection.execute(
            "SELECT usd_nano FROM totals WHERE scope = ? AND value = ?", _totals_row(cap)
        ).fetchone()
        condition, parameters = _reservations_filter(cap)
        (reserved,) = self._connection.execute(
            f"SELECT COALESCE(SUM(usd_nano), 0) FROM reservations WHERE {condition}", parameters
        ).fetchone()
        return CapUsage(cap, row[0] if row else 0, reserved)

    def add_reservation(self, *, call_id: str, model: str, key: str | None, day: str, usd_nano: int) -> str:
        """Record a reservation for this process and return its id."""
        reservation_id = uuid.uuid4().hex
        self._connection.execute(
            "INSERT INTO reservations (id, call_id, model, family, key, day, usd_nano, host, pid, pid_start, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                reservation_id,
                call_id,
                model,
                snapshot_base(model),
                key,
                day,
                usd_nano,
                *self._ledger.owner(),
                time.time(),
            ),
        )
        return reservation_id


class Ledger:
    """The shared SQLite ledger; one connection per process, shared by its threads under a lock."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        """Open (creating) the ledger at `path` (`~` expanded) and release what crashed processes left."""
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._pid = -1
        self._host = socket.gethostname()
        self._pid_start: int | None = None
        self.release_dead()

    def owner(self) -> tuple[str, int, int | None]:
        """This process's host, pid and start time, as recorded on its reservations."""
        return self._host, self._pid, self._pid_start

    def _connect(self) -> sqlite3.Connection:
        """The process's connection, opened (again after a fork) with WAL, busy timeout and schema."""
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        try:
            connection = connect(self.path, self._busy_timeout_s)
            connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"can't open the budget ledger {self.path}: {error}") from error
        self._connection, self._pid = connection, os.getpid()
        state = _process_state(self._pid)
        self._pid_start = state[1] if state else None
        return connection

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: the write lock is taken first, so processes serialise."""

        def locked(error: sqlite3.Error) -> ConfigError:
            return ConfigError(f"can't lock the budget ledger {self.path}: {error}")

        with self._lock, immediate(self._connect(), locked) as connection:
            yield connection

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """A check-and-reserve transaction; reservations of dead processes are released first."""
        with self._immediate() as connection:
            self._release_dead(connection)
            yield LedgerTransaction(connection, self)

    def _release_dead(self, connection: sqlite3.Connection) -> int:
        """Delete the reservations of processes on this host that no longer run; return how many."""
        owners = connection.execute(
            "SELECT DISTINCT pid, pid_start FROM reservations WHERE host = ? AND NOT (pid = ? AND pid_start IS ?)",
            (self._host, self._pid, self._pid_start),
        ).fetchall()
        released = 0
        for pid, started in owners:
            if not _process_alive(pid, started):
                released += connection.execute(
                    "DELETE FROM reservations WHERE host = ? AND pid = ? AND pid_start IS ?", (self._host, pid, started)
                ).rowcount
        return released

    def release_dead(self) -> int:
        """Release reservations left by crashed processes; return how many were released."""
        with self._immediate() as connection:
            return self._release_dead(connection)

    def settle(
        self, reservation_id: str, *, usd_nano: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int
    ) -> None:
        """Replace a reservation by the real spend, and add it to the totals, in one transaction."""
        with self._immediate() as connection:
            row = connection.execute(
                "SELECT call_id, model, family, key, day, usd_nano FROM reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            if row is None:
                raise ConfigError(
                    f"reservation {reservation_id} is not outstanding: it was already settled or released"
                )
            call_id, model, family, key, day, reserved = row
            connection.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
            connection.execute(
                "INSERT INTO spends (reservation_id, call_id, model, key, day, usd_nano, reserved_nano, prompt_tokens,"
                " completion_tokens, cached_tokens, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reservation_id,
                    call_id,
                    model,
                    key,
                    day,
                    usd_nano,
                    reserved,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                    time.time(),
                ),
            )
            rows = [("total", ""), ("per_day", day), ("per_key", key or ""), ("model", model), ("family", family)]
            connection.executemany(
                "INSERT INTO totals (scope, value, usd_nano, calls) VALUES (?, ?, ?, 1) ON CONFLICT (scope, value)"
                " DO UPDATE SET usd_nano = usd_nano + excluded.usd_nano, calls = calls + 1",
                [(scope, value, usd_nano) for scope, value in rows],
            )

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending (the call failed); False if it was not outstanding."""
        with self._immediate() as connection:
            return connection.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount > 0

    def spent_nano(self, cap: Cap) -> int:
        """Settled spend under a cap's scope and value."""
        with self._lock:
            row = (
                self._connect()
                .execute("SELECT usd_nano FROM totals WHERE scope = ? AND value = ?", _totals_row(cap))
                .fetchone()
            )
        return row[0] if row else 0

    def totals(self, scope: str) -> dict[str, tuple[int, int]]:
        """Settled nano-dollars and call counts per value of a totals scope (per_day, per_key, model, ...)."""
        with self._lock:
            rows = (
                self._connect()
                .execute("SELECT value, usd_nano, calls FROM totals WHERE scope = ?", (scope,))
                .fetchall()
            )
        return {value: (usd_nano, calls) for value, usd_nano, calls in rows}

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars and number of reservations not yet settled or released."""
        with self._lock:
            total, count = (
                self._connect().execute("SELECT COALESCE(SUM(usd_nano), 0), COUNT(*) FROM reservations").fetchone()
            )
        return total, count

    def close(self) -> None:
        """Close this process's connection; the next use opens a new one."""
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
