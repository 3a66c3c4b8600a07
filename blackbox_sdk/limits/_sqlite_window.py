"""SQLiteWindow: sliding windows in one SQLite file, shared by every process on a host.

Each admission is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock serialises threads and
processes): drop the events that have left, count the scope's live requests and tokens, and
record the call if it fits. The time is read inside the transaction, so the events' times follow
the order in which they were admitted. The file must live on a local disk.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .._closing import Closing
from .._exceptions import StoreUnavailableError
from .._sqlite import SHARED_TABLES, ProcessConnection, connect, immediate, refuse_foreign
from ._store import Clock
from ._window import Verdict, Window, judge

BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_events (
    id TEXT PRIMARY KEY, scope TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL, tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_events_scope ON rate_events (scope, at);
CREATE INDEX IF NOT EXISTS rate_events_expires ON rate_events (expires);
"""


class SQLiteWindow(Closing):
    """Sliding windows in the SQLite file at ``path``; StoreUnavailableError when it can't be opened or written,
    ConfigError for another application's SQLite file (left as it was)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        with self._unavailable("open"):
            refuse_foreign(path, SHARED_TABLES, "rate-limit store", busy_timeout_s)  # ConfigError, the file unchanged
            connection = connect(path, busy_timeout_s)
            try:
                connection.executescript(_SCHEMA)
            except sqlite3.Error:
                connection.close()
                raise
        self._db = ProcessConnection(functools.partial(connect, path, busy_timeout_s), connection=connection)  # one per process

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        """SQLite and file-system errors as StoreUnavailableError: a limit never silently goes off."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"the rate-limit store {self.path} can't {action}: {exc}") from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One immediate transaction under this process's lock."""
        with self._db.lock, self._unavailable(action), immediate(self._db.get()) as connection:
            yield connection

    def try_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """Admit and record the event if it fits, in one immediate transaction."""
        with self._transaction("admit a call") as db:
            now = (clock or time.time)()
            db.execute("DELETE FROM rate_events WHERE expires <= ?", (now,))
            # events recorded after now (the clock went back) count as admitted now: they leave within one window
            db.execute("UPDATE rate_events SET expires = ? + (expires - at), at = ? WHERE scope = ? AND at > ?", (now, now, scope, now))
            if db.execute("SELECT 1 FROM rate_events WHERE id = ?", (event_id,)).fetchone() is not None:
                return Verdict(True, now)
            count, total, newest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens), 0), MAX(at) FROM rate_events WHERE scope = ?", (scope,)
            ).fetchone()
            verdict = judge(window, count=count, total=total, tokens=tokens, now=now, newest=newest, ordered=lambda: db.execute(
                "SELECT at, tokens FROM rate_events WHERE scope = ? ORDER BY at, rowid", (scope,)))
            if verdict.admitted:
                db.execute("INSERT INTO rate_events (id, scope, at, expires, tokens) VALUES (?, ?, ?, ?, ?)",
                           (event_id, scope, now, now + window.window_s, tokens))
            return verdict

    async def atry_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """``try_admit`` in a worker thread: waiting for SQLite's lock must not block the loop."""
        return await asyncio.to_thread(self.try_admit, scope, event_id, tokens, window, clock)

    def correct(self, scope: str, event_id: str, tokens: int) -> bool:
        """Replace a live event's token amount."""
        with self._transaction("correct a call's tokens") as db:
            return db.execute("UPDATE rate_events SET tokens = ? WHERE id = ? AND scope = ?", (tokens, event_id, scope)).rowcount > 0

    async def acorrect(self, scope: str, event_id: str, tokens: int) -> bool:
        """``correct`` in a worker thread."""
        return await asyncio.to_thread(self.correct, scope, event_id, tokens)

    def release(self, scope: str, event_id: str) -> bool:
        """Drop a live event."""
        with self._transaction("release a call") as db:
            return db.execute("DELETE FROM rate_events WHERE id = ? AND scope = ?", (event_id, scope)).rowcount > 0

    async def arelease(self, scope: str, event_id: str) -> bool:
        """``release`` in a worker thread."""
        return await asyncio.to_thread(self.release, scope, event_id)

    def close(self) -> None:
        """Close this process's connection for good; the file stays for the others."""
        self._db.close(final=True)

    async def aclose(self) -> None:
        """``close``."""
        self.close()
