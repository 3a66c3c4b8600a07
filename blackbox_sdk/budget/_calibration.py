"""Calibration: the prompt tokens an endpoint adds that the SDK's own count can't see (a chat
template's hidden system prompt, a gateway's preamble), learnt from every answer's reported usage
and kept in the ledger's store so that every process sees it; and the gate that, until an endpoint
and model are calibrated, lets one call at a time through, so that its answer calibrates the rest.
Beside them, the stored context a Responses call may continue (a previous response, a conversation,
a stored prompt's template), learnt from the answers that made it, so that a continuation reserves it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from typing import Any, Protocol

from .._exceptions import StoreUnavailableError
from ._ledger import Ledger
from ._owed import owe_undo
from ._policy import is_count
from ._store import LedgerStore

UNCALIBRATED_ALLOWANCE = 64  # prompt tokens reserved on top of the count while an endpoint is uncalibrated (one call in flight)
GATE_LEASE_S = 300.0  # the gate frees itself if the calling process dies
CONTEXT_KEEP_S = 30 * 86400.0  # a stored context is forgotten after this (OpenAI keeps stored responses 30 days)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS calibration (endpoint TEXT, model TEXT, extra INTEGER NOT NULL, PRIMARY KEY (endpoint, model))",
    "CREATE TABLE IF NOT EXISTS calibration_gates"
    " (endpoint TEXT, model TEXT, holder TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (endpoint, model))",
    "CREATE TABLE IF NOT EXISTS stored_context (key TEXT PRIMARY KEY, tokens INTEGER NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS stored_context_expires ON stored_context (expires)",
)
_RAISE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
_KEEP = """
local current = redis.call('GET', KEYS[1])
if not current or tonumber(current) < tonumber(ARGV[1]) then current = ARGV[1] end
redis.call('SET', KEYS[1], current, 'EX', ARGV[2])
return 1
"""
_CLOSE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CalibrationStore(Protocol):
    """Where overheads and gates live: the ledger's own store."""

    def overhead(self, endpoint: str, model: str) -> int | None:
        """The learnt extra prompt tokens, None while uncalibrated."""
        ...

    def raise_overhead(self, endpoint: str, model: str, extra: int) -> None:
        """Keep the larger of the stored overhead and `extra`."""
        ...

    def open_gate(self, endpoint: str, model: str, holder: str) -> bool:
        """Take the gate of an uncalibrated endpoint and model (True), unless another holder has it."""
        ...

    def close_gate(self, endpoint: str, model: str, holder: str) -> None:
        """Give the gate back (a no-op for a holder that no longer has it)."""
        ...

    def context(self, key: str) -> int | None:
        """The tokens a stored context carries (a response's input and output, ...); None when unknown or forgotten."""
        ...

    def keep_context(self, key: str, tokens: int) -> None:
        """Keep the larger of the stored count and ``tokens`` for ``key``, for CONTEXT_KEEP_S from now."""
        ...


class SQLiteCalibration:
    """Calibration in the SQLite ledger's file, inside its immediate transactions."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._ready = False

    def _transaction(self) -> Any:
        """The ledger's immediate transaction, with the calibration tables in place."""
        if not self._ready:
            with self._ledger._immediate() as connection:
                for statement in _SCHEMA:
                    connection.execute(statement)
            self._ready = True
        return self._ledger._immediate()

    def overhead(self, endpoint: str, model: str) -> int | None:
        with self._transaction() as connection:
            row = connection.execute("SELECT extra FROM calibration WHERE endpoint = ? AND model = ?", (endpoint, model)).fetchone()
        return None if row is None else int(row[0])

    def raise_overhead(self, endpoint: str, model: str, extra: int) -> None:
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO calibration VALUES (?, ?, ?) ON CONFLICT (endpoint, model) DO UPDATE SET extra = MAX(extra, excluded.extra)",
                (endpoint, model, extra),
            )

    def open_gate(self, endpoint: str, model: str, holder: str) -> bool:
        now = time.time()
        with self._transaction() as connection:
            row = connection.execute("SELECT holder, expires FROM calibration_gates WHERE endpoint = ? AND model = ?", (endpoint, model)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            connection.execute("INSERT OR REPLACE INTO calibration_gates VALUES (?, ?, ?, ?)", (endpoint, model, holder, now + GATE_LEASE_S))
        return True

    def close_gate(self, endpoint: str, model: str, holder: str) -> None:
        with self._transaction() as connection:
            connection.execute("DELETE FROM calibration_gates WHERE endpoint = ? AND model = ? AND holder = ?", (endpoint, model, holder))

    def context(self, key: str) -> int | None:
        with self._transaction() as connection:
            row = connection.execute("SELECT tokens FROM stored_context WHERE key = ? AND expires > ?", (key, time.time())).fetchone()
        return None if row is None else int(row[0])

    def keep_context(self, key: str, tokens: int) -> None:
        now = time.time()
        with self._transaction() as connection:
            connection.execute("DELETE FROM stored_context WHERE expires <= ?", (now,))
            connection.execute(
                "INSERT INTO stored_context VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " tokens = CASE WHEN expires > ? THEN MAX(tokens, excluded.tokens) ELSE excluded.tokens END, expires = excluded.expires",
                (key, tokens, now + CONTEXT_KEEP_S, now),
            )


class RedisCalibration:
    """Calibration on the Redis ledger's server, under its key prefix; failures are StoreUnavailableError."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger
        self._raise = ledger._client.register_script(_RAISE)
        self._keep = ledger._client.register_script(_KEEP)
        self._close = ledger._client.register_script(_CLOSE)

    def _do(self, what: str, action: Any) -> Any:
        """One Redis operation, its failure raised as the ledger raises its own (fail closed)."""
        import redis

        try:
            return action()
        except redis.RedisError as error:
            raise self._ledger._unavailable(what, error) from error

    def _gate(self, endpoint: str, model: str) -> str:
        return f"{self._ledger.prefix}calibration-gate:{_field(endpoint, model)}"

    def overhead(self, endpoint: str, model: str) -> int | None:
        value = self._do("read the endpoint's calibration", lambda: self._ledger._client.hget(self._ledger.prefix + "calibration", _field(endpoint, model)))
        return None if value is None else int(value)

    def raise_overhead(self, endpoint: str, model: str, extra: int) -> None:
        self._do("store the endpoint's calibration", lambda: self._raise(keys=[self._ledger.prefix + "calibration"], args=[_field(endpoint, model), extra]))

    def open_gate(self, endpoint: str, model: str, holder: str) -> bool:
        key = self._gate(endpoint, model)
        taken = self._do("take the calibration gate", lambda: self._ledger._client.set(key, holder, nx=True, px=int(GATE_LEASE_S * 1000)))
        return bool(taken) or self._do("take the calibration gate", lambda: self._ledger._client.get(key)) == holder.encode()

    def close_gate(self, endpoint: str, model: str, holder: str) -> None:
        self._do("give the calibration gate back", lambda: self._close(keys=[self._gate(endpoint, model)], args=[holder]))

    def _context(self, key: str) -> str:
        return f"{self._ledger.prefix}context:{hashlib.sha256(key.encode()).hexdigest()}"

    def context(self, key: str) -> int | None:
        value = self._do("read the stored context", lambda: self._ledger._client.get(self._context(key)))
        return None if value is None else int(value)

    def keep_context(self, key: str, tokens: int) -> None:
        self._do("keep the stored context", lambda: self._keep(keys=[self._context(key)], args=[tokens, int(CONTEXT_KEEP_S)]))


def _field(endpoint: str, model: str) -> str:
    """One store key for an endpoint and model."""
    return hashlib.sha256(f"{endpoint}\x1f{model}".encode()).hexdigest()


class Calibration:
    """A budget's calibration: overheads cached in this process once known, the store shared."""

    def __init__(self, store: CalibrationStore) -> None:
        self._store = store
        self._known: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def overhead(self, endpoint: str, model: str) -> int | None:
        """Extra prompt tokens this endpoint adds for this model; None until an answer showed it."""
        with self._lock:
            known = self._known.get((endpoint, model))
        if known is not None:
            return known
        stored = self._store.overhead(endpoint, model)
        if stored is not None:
            with self._lock:
                self._known[(endpoint, model)] = max(stored, self._known.get((endpoint, model), 0))
        return stored

    def learn(self, endpoint: str, model: str, counted: int, reported: int, texts: int = 1) -> None:
        """One answer's evidence: the endpoint reported `reported` prompt tokens where the SDK counted `counted`, for a
        request of `texts` texts (a legacy completions list, an embeddings list): what is kept is each one's share, rounded up, since a
        server adds its tokens to every text. A report that can't be real (negative, or from 2**53 up) teaches nothing."""
        if not is_count(reported):
            return
        extra = -(-max(0, reported - int(counted)) // max(1, texts))
        with self._lock:
            known = self._known.get((endpoint, model))
            if known is not None and extra <= known:
                return
            self._known[(endpoint, model)] = extra if known is None else max(known, extra)
        self._store.raise_overhead(endpoint, model, extra)

    def open_gate(self, endpoint: str, model: str, holder: str) -> bool:
        """Whether the call `holder` may run while the endpoint is uncalibrated (one at a time); StoreUnavailableError
        when the store can't say, and then its closing is owed (the store may have given the gate with its reply lost)."""
        try:
            return self._store.open_gate(endpoint, model, holder)
        except StoreUnavailableError:
            self._owe_close(endpoint, model, holder, None)
            raise

    def close_gate(self, endpoint: str, model: str, holder: str) -> None:
        """Let the next uncalibrated call through; a store out of reach is a warning, and the closing is owed."""
        try:
            self._store.close_gate(endpoint, model, holder)
        except StoreUnavailableError as error:
            self._owe_close(endpoint, model, holder, error)

    def _owe_close(self, endpoint: str, model: str, holder: str, error: StoreUnavailableError | None) -> None:
        """Close the gate once the store answers, rather than keep the endpoint's other calls waiting for its lease."""
        close = functools.partial(self._store.close_gate, endpoint, model, holder)
        owe_undo(f"{endpoint}\x1f{model}\x1f{holder}", holder, "calibration gate", close, self._store, GATE_LEASE_S, error)

    def context(self, key: str) -> int | None:
        """The tokens a stored context (a response, a conversation, a stored prompt's template) adds to a call
        that continues it; None when no answer through this ledger showed it."""
        return self._store.context(key)

    def keep_context(self, key: str, tokens: int) -> None:
        """What an answer showed a stored context to carry (kept CONTEXT_KEEP_S; the larger count wins)."""
        if is_count(tokens):
            self._store.keep_context(key, tokens)


def open_calibration(ledger: LedgerStore) -> Calibration:
    """The calibration kept in the same store as the ledger."""
    return Calibration(SQLiteCalibration(ledger) if isinstance(ledger, Ledger) else RedisCalibration(ledger))
