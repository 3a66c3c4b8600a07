"""A budget ledger in SQLite that several threads and processes on one host share: reservations, spends, totals.

Money is stored as integer nano-dollars (1e-9 USD) so sums are exact and a cap admits exactly
the calls that fit. Check-and-reserve runs in one `BEGIN IMMEDIATE` transaction, so writers
from every process are serialised by SQLite's write lock (WAL mode keeps readers unblocked;
`busy_timeout` makes waiters queue instead of failing). Settled spends are added to a `totals`
table in the same transaction, so a cap check reads a handful of rows however long the history.

Crash safety: each reservation records its host, process id and that process's start time. A
process that dies mid-call leaves its reservations behind; their holds lapse once the process is
gone (a reused pid is told apart by its start time): whenever a ledger is opened, inside a reserve
transaction at most once every ``DEAD_CHECK_S`` per process (a dead process's hold only holds
money back, so a later release is on the safe side), and at once inside any reserve that would
otherwise be refused, so a refusal never comes from a dead process's hold. A reservation also
carries a lease: once it lapses the hold stops counting (a hung process), though a late settle
still records the spend (a charge a dead process owed, from the owed-charge journal); lapsed
records are deleted after ``LAPSED_KEPT_S``. A settle of a reservation no longer recorded (released,
or its lapsed record deleted) but never settled still records the spend, from the call's own hold,
with a warning: the answer was paid, and the cap must count it. A transaction interrupted by a
crash is rolled back by SQLite. The file must live on a local disk: SQLite locking is unreliable
over network file systems. Each spend
keeps the process that settled it and the call log it was meant for, so a call charged by a
process that died before logging it can be found, and given to its own log (``settled_since``).

The call path costs few statements: a reserve reads every cap's settled and held spend in one
statement and inserts (or finds) its reservation in one more; a settle moves the reservation to
``spends`` and adds it to every totals row in four.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._exceptions import ConfigError, ReservationNotHeldError, StoreUnavailableError
from .._process import random_hex
from .._redact import url_without_password
from .._sqlite import SHARED_TABLES, ProcessConnection, connect, immediate, refuse_foreign
from ._caps import REPORTED_SCOPES, Cap, CapUsage, charged_rows, totals_row
from ._owners import process_alive, this_process
from ._prices import snapshot_base
from ._store import Hold, LedgerSnapshot, SettledSpend, warn_unheld

DEFAULT_BUSY_TIMEOUT_S = 60.0
LAPSED_KEPT_S = 7 * 86400.0  # a lapsed hold's record is kept this long for a late settle, then deleted
DEAD_CHECK_S = 1.0  # a reserve looks for dead processes' reservations at most this often per process (and on refusal)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, call_id TEXT NOT NULL, model TEXT NOT NULL, family TEXT NOT NULL, key TEXT,
    day TEXT NOT NULL, usd_nano INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    pid_start INTEGER, created REAL NOT NULL, expires REAL
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reservation_id TEXT NOT NULL, call_id TEXT NOT NULL,
    model TEXT NOT NULL, key TEXT, day TEXT NOT NULL, usd_nano INTEGER NOT NULL,
    reserved_nano INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, created REAL NOT NULL, host TEXT, pid INTEGER, pid_start INTEGER, log_id TEXT
);
CREATE TABLE IF NOT EXISTS totals (
    scope TEXT NOT NULL, value TEXT NOT NULL, usd_nano INTEGER NOT NULL, calls INTEGER NOT NULL,
    PRIMARY KEY (scope, value)
) WITHOUT ROWID;
"""
_LIVE = "(expires IS NULL OR expires > ?)"  # a reservation whose lease has not lapsed
_ADDED_COLUMNS = (("reservations", "expires", "REAL"), ("spends", "host", "TEXT"), ("spends", "pid", "INTEGER"),
                  ("spends", "pid_start", "INTEGER"), ("spends", "log_id", "TEXT"))  # log_id NULL: not said (settled before it was kept)
_SPEND_COLUMNS = (
    "call_id, model, key, day, usd_nano, prompt_tokens, completion_tokens, cached_tokens, created,"
    " COALESCE(host, ''), COALESCE(pid, 0), pid_start, log_id"  # an older ledger's rows have no process
)
_INSERT_SPEND = (
    "INSERT INTO spends (reservation_id, call_id, model, key, day, usd_nano, reserved_nano, prompt_tokens,"
    " completion_tokens, cached_tokens, created, host, pid, pid_start, log_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _reservations_filter(cap: Cap) -> tuple[str, tuple[str | None, ...]]:
    """SQL condition and parameters selecting the reservations under a cap."""
    if cap.scope == "per_day":
        return "day = ?", (cap.value,)
    if cap.scope == "per_key":
        return "key IS ?", (cap.value,)
    if cap.scope == "per_model":
        column, value = totals_row(cap)
        return f"{column} = ?", (value,)
    return "1", ()


@functools.lru_cache(maxsize=64)
def _usages_query(conditions: tuple[str, ...]) -> str:
    """One statement reading, per cap, its settled totals row and the live reservations under its condition
    (parameters: each cap's totals row, then each condition's, then the time leases are judged at)."""
    spent = ["(SELECT usd_nano FROM totals WHERE scope = ? AND value = ?)"] * len(conditions)
    held = [f"COALESCE(SUM(CASE WHEN {condition} THEN usd_nano END), 0)" for condition in conditions]
    return f"SELECT {', '.join(spent + held)} FROM reservations WHERE {_LIVE}"


def _totals_upsert(rows: int) -> str:
    """An upsert adding one spend to `rows` totals rows in one statement."""
    return (
        f"INSERT INTO totals (scope, value, usd_nano, calls) VALUES {', '.join(['(?, ?, ?, 1)'] * rows)}"
        " ON CONFLICT (scope, value) DO UPDATE SET usd_nano = usd_nano + excluded.usd_nano, calls = calls + 1"
    )


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring an older ledger file up to date: leases, the settling process on spends, the spends indexes."""
    for table, column, kind in _ADDED_COLUMNS:
        if column not in {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}:
            try:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):  # another process added it first
                    raise
    connection.execute("CREATE INDEX IF NOT EXISTS spends_reservation ON spends (reservation_id)")
    connection.execute("CREATE INDEX IF NOT EXISTS spends_created ON spends (created)")


def _unheld_row(reservation_id: str, hold: Hold | None) -> tuple[str, str, str | None, str, int]:
    """What to charge a paid call whose reservation is no longer recorded (released, or its lapsed record deleted):
    its own hold, with a warning; ReservationNotHeldError when there is none to say what the call was."""
    if hold is None:
        raise ReservationNotHeldError(
            f"reservation {reservation_id} is not outstanding: it was released, or is unknown, and no hold was given to charge it from"
        )
    warn_unheld(hold.call_id, reservation_id)
    return hold.call_id, hold.model, hold.key, hold.day, hold.usd_nano


class LedgerTransaction:
    """An open write transaction: read cap usage and add reservations while holding the lock."""

    def __init__(self, connection: sqlite3.Connection, ledger: Ledger) -> None:
        """Wrap the connection that holds the ledger's write lock; leases are judged at this moment."""
        self._connection = connection
        self._ledger = ledger
        self._now = time.time()

    def usage(self, cap: Cap) -> CapUsage:
        """Settled and held spend under `cap` (per-call caps have neither; lapsed leases hold nothing)."""
        return self.usages([cap])[0]

    def usages(self, caps: Sequence[Cap]) -> list[CapUsage]:
        """Settled and held spend under each cap, all read in one statement."""
        counted = [cap for cap in caps if cap.scope != "per_call"]
        if not counted:
            return [CapUsage(cap, 0, 0) for cap in caps]
        filters = [_reservations_filter(cap) for cap in counted]
        parameters: list[str | None] = [part for cap in counted for part in totals_row(cap)]
        parameters += [parameter for _, given in filters for parameter in given]
        query = _usages_query(tuple(condition for condition, _ in filters))
        row = self._connection.execute(query, (*parameters, self._now)).fetchone()
        found = iter(zip(row[: len(counted)], row[len(counted) :], strict=True))
        usages = []
        for cap in caps:
            spent, held = (0, 0) if cap.scope == "per_call" else next(found)
            usages.append(CapUsage(cap, spent or 0, held))
        return usages

    def add_reservation(
        self,
        *,
        call_id: str,
        model: str,
        key: str | None,
        day: str,
        usd_nano: int,
        reservation_id: str | None = None,
        lease_s: float | None = None,
    ) -> str:
        """Record a reservation for this process (leased for `lease_s`, else until settled) and return its id; an id
        recorded already (a retried reserve) holds nothing more."""
        reservation_id = reservation_id or random_hex(16)
        expires = None if lease_s is None else self._now + lease_s
        self._connection.execute(  # only a recorded id is passed over: any other constraint still fails
            "INSERT INTO reservations (id, call_id, model, family, key, day, usd_nano, host, pid, pid_start, created,"
            " expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (reservation_id, call_id, model, snapshot_base(model), key, day, usd_nano, *self._ledger.owner(),
             self._now, expires),
        )
        return reservation_id

    def has_reservation(self, reservation_id: str) -> bool:
        """Whether a reservation with this id is recorded (held or lapsed)."""
        query = "SELECT 1 FROM reservations WHERE id = ?"
        return self._connection.execute(query, (reservation_id,)).fetchone() is not None

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars and number of reservations whose lease has not lapsed."""
        return self._connection.execute(
            f"SELECT COALESCE(SUM(usd_nano), 0), COUNT(*) FROM reservations WHERE {_LIVE}", (self._now,)
        ).fetchone()


class Ledger:
    """The shared SQLite ledger; one connection per process, shared by its threads under a lock."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        """Open (creating) the ledger at `path` (`~` expanded) and release what crashed processes left; another
        application's SQLite file is a ConfigError, left as it was."""
        if isinstance(path, str) and "://" in path:  # Path() would fold the URL into a file named after it
            raise ConfigError(f"Ledger is an SQLite file, not a URL ({url_without_password(path)!r}); Budget(ledger=...) opens a redis:// URL")
        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._db = ProcessConnection(self._open_connection, threading.RLock())  # this process's, opened again after a fork
        self._lock = self._db.lock
        self._owner: tuple[str, int, int | None] = ("", -1, None)
        self._next_dead_check = 0.0  # time.monotonic() from which a reserve looks for dead processes again
        try:
            refuse_foreign(self.path, SHARED_TABLES, "budget ledger", busy_timeout_s)  # once, before the first write
            self.release_dead()
        except (OSError, sqlite3.Error, StoreUnavailableError) as error:
            raise ConfigError(f"can't open the budget ledger {self.path}: {error}") from error

    def owner(self) -> tuple[str, int, int | None]:
        """This process's host, pid and start time, as recorded on its reservations."""
        return self._owner

    def _connect(self) -> sqlite3.Connection:
        """This process's connection (call under the lock)."""
        return self._db.get()

    def _open_connection(self) -> sqlite3.Connection:
        """A connection with WAL, busy timeout and schema, and this process as the owner of the holds it makes."""
        try:
            connection = connect(self.path, self._busy_timeout_s)
            connection.executescript(_SCHEMA)
            _migrate(connection)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"can't open the budget ledger {self.path}: {error}") from error
        self._owner = this_process()
        return connection

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: the write lock is taken first, so processes serialise. A file out of reach
        (locked past the busy timeout, read-only, a disk I/O error) is StoreUnavailableError, as a Redis ledger's is,
        so a paid call's settle is owed rather than lost and a reserve sends nothing."""
        try:
            with self._lock, immediate(self._connect()) as connection:
                yield connection
        except sqlite3.OperationalError as error:
            raise StoreUnavailableError(f"the budget ledger {self.path} can't be written: {error}") from error

    @contextmanager
    def transaction(self) -> Iterator[LedgerTransaction]:
        """A check-and-reserve transaction; reservations of dead processes are released first."""
        with self._immediate() as connection:
            self._release_dead(connection)
            yield LedgerTransaction(connection, self)

    def reserve(self, hold: Hold, caps: Sequence[Cap]) -> list[CapUsage] | None:
        """Hold `hold.usd_nano` if it fits every cap (None), else every cap's usage; one transaction.

        A reservation id recorded already (a retried reserve) holds nothing more and is not refused.
        Dead processes' reservations are released first every DEAD_CHECK_S, and always before a refusal.
        """
        with self._immediate() as connection:
            checked = time.monotonic() >= self._next_dead_check
            if checked:
                self._release_dead(connection)
            transaction = LedgerTransaction(connection, self)
            usages = transaction.usages(caps)
            if any(hold.usd_nano > usage.headroom_nano for usage in usages):
                if transaction.has_reservation(hold.reservation_id):
                    return None  # a retried reserve: held already (its own hold is in the usages)
                if checked or not self._release_dead(connection):
                    return usages
                transaction = LedgerTransaction(connection, self)  # judged from now, after those holds lapsed
                usages = transaction.usages(caps)  # a dead process held some of it: read again
                if any(hold.usd_nano > usage.headroom_nano for usage in usages):
                    return usages
            transaction.add_reservation(
                call_id=hold.call_id, model=hold.model, key=hold.key, day=hold.day, usd_nano=hold.usd_nano,
                reservation_id=hold.reservation_id, lease_s=hold.lease_s,
            )
        return None

    def _release_dead(self, connection: sqlite3.Connection) -> int:
        """Lapse the holds of processes on this host that no longer run (their records stay for a late settle from
        the owed-charge journal, for LAPSED_KEPT_S); return how many stopped holding."""
        self._next_dead_check = time.monotonic() + DEAD_CHECK_S
        host, pid, started = self._owner
        now = time.time()
        connection.execute("DELETE FROM reservations WHERE expires < ?", (now - LAPSED_KEPT_S,))
        owners = connection.execute(
            f"SELECT DISTINCT pid, pid_start FROM reservations WHERE host = ? AND NOT (pid = ? AND pid_start IS ?) AND {_LIVE}",
            (host, pid, started, now),
        ).fetchall()
        released = 0
        for other, other_started in owners:
            if not process_alive(other, other_started):
                released += connection.execute(
                    f"UPDATE reservations SET expires = ? WHERE host = ? AND pid = ? AND pid_start IS ? AND {_LIVE}",
                    (now, host, other, other_started, now),
                ).rowcount
        return released

    def release_dead(self) -> int:
        """Release reservations left by crashed processes; return how many were released."""
        with self._immediate() as connection:
            return self._release_dead(connection)

    def settle(
        self, reservation_id: str, *, usd_nano: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
        hold: Hold | None = None, log_id: str | None = None,
    ) -> bool:
        """Replace a reservation by the real spend and add it to the totals, in one transaction: True (charged).

        A reservation held or lapsed is charged under its own record; one released (or whose lapsed record was
        deleted) is charged from `hold`, the call's own, with a warning: its answer was paid. False (nothing
        charged) when it was already settled; ReservationNotHeldError when it is not recorded and no `hold` says
        what to charge. `log_id` is the call log the call is recorded in (NO_LOG: none; None, stored NULL: not
        said), kept on the spend.
        """
        with self._immediate() as connection:
            row = connection.execute(
                "SELECT call_id, model, key, day, usd_nano FROM reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            if row is None:
                if connection.execute("SELECT 1 FROM spends WHERE reservation_id = ?", (reservation_id,)).fetchone():
                    return False
                row = _unheld_row(reservation_id, hold)
            call_id, model, key, day, reserved = row
            connection.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
            connection.execute(_INSERT_SPEND, (
                reservation_id, call_id, model, key, day, usd_nano, reserved, prompt_tokens, completion_tokens,
                cached_tokens, time.time(), *self._owner, log_id,
            ))
            charged = charged_rows(model, key, day)
            connection.execute(_totals_upsert(len(charged)), [part for pair in charged for part in (*pair, usd_nano)])
        return True

    def renew(self, reservation_id: str, lease_s: float) -> bool:
        """Hold a reservation for `lease_s` more seconds from now; False (nothing changed) once its lease lapsed
        or it was settled or released: a lapsed hold stopped counting, so it is never revived."""
        with self._immediate() as connection:
            now = time.time()
            query = "UPDATE reservations SET expires = ? WHERE id = ? AND expires > ?"
            return connection.execute(query, (now + lease_s, reservation_id, now)).rowcount == 1

    def release(self, reservation_id: str) -> bool:
        """Drop a reservation without spending (the call failed); False if it was not held."""
        with self._immediate() as connection:
            row = connection.execute("SELECT expires FROM reservations WHERE id = ?", (reservation_id,)).fetchone()
            if row is None:
                return False
            connection.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))  # a lapsed one too
            return row[0] is None or row[0] > time.time()

    def snapshot(self, caps: Sequence[Cap]) -> LedgerSnapshot:
        """Each cap's usage, what is held, and the settled totals, read in one transaction."""
        with self.transaction() as transaction:
            usages = [transaction.usage(cap) for cap in caps]
            reserved, outstanding = transaction.outstanding()
            totals = {scope: self.totals(scope) for scope in REPORTED_SCOPES}
        return LedgerSnapshot(usages=usages, reserved_nano=reserved, outstanding=outstanding, totals=totals)

    def spent_nano(self, cap: Cap) -> int:
        """Settled spend under a cap's scope and value."""
        with self._lock:
            query = "SELECT usd_nano FROM totals WHERE scope = ? AND value = ?"
            row = self._connect().execute(query, totals_row(cap)).fetchone()
        return row[0] if row else 0

    def totals(self, scope: str) -> dict[str, tuple[int, int]]:
        """Settled nano-dollars and call counts per value of a totals scope (per_day, per_key, model, ...)."""
        with self._lock:
            query = "SELECT value, usd_nano, calls FROM totals WHERE scope = ?"
            rows = self._connect().execute(query, (scope,)).fetchall()
        return {value: (usd_nano, calls) for value, usd_nano, calls in rows}

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars and number of reservations held (not settled, released, or past their lease)."""
        with self._lock:
            query = f"SELECT COALESCE(SUM(usd_nano), 0), COUNT(*) FROM reservations WHERE {_LIVE}"
            total, count = self._connect().execute(query, (time.time(),)).fetchone()
        return total, count

    def settled_since(self, since: float) -> list[SettledSpend]:
        """The spends settled at or after `since` (seconds since the epoch), oldest first, with their processes."""
        with self._lock:
            query = f"SELECT {_SPEND_COLUMNS} FROM spends WHERE created >= ? ORDER BY created, id"
            rows = self._connect().execute(query, (since,)).fetchall()
        return [SettledSpend(*row) for row in rows]

    def close(self) -> None:
        """Close this process's connection; the next use opens a new one."""
        self._db.close()
