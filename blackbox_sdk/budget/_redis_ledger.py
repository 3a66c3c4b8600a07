"""A budget ledger on Redis that every process on every host shares: one Lua script per operation.

Reserve, settle, release and the report's snapshot each run as one atomic script (one round
trip; see ``_redis_scripts``), so hosts sharing a Redis never overspend together. A reservation's
lease is kept on the server's clock and lapsed ones are purged inside the reserve script. Every
script is idempotent by reservation id (a settle by the id and its attempt's token), so redis-py
retrying a command whose reply was lost never holds or charges twice. When Redis can't be
reached, times out or answers wrongly, every operation raises StoreUnavailableError: a call is
never sent unbudgeted. A ledger that lost its data under a process (Redis restarted without persistence, flushed, or
its keys evicted) refuses every reserve, in every process, until an operator resets it (``_lost``):
its caps are never silently started again from zero. The URL is checked, shown and made into a client by ``RedisURL``, which
imports redis-py only when a Redis ledger is used; a URL the server refuses (a wrong password, a
database it does not have) is a ConfigError when the ledger opens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from .._exceptions import ConfigError, ReservationNotHeldError, StoreUnavailableError
from .._logging import logger
from .._process import random_hex
from .._redis_url import RedisURL
from ._caps import REPORTED_SCOPES, Cap, CapUsage, totals_row
from ._owners import this_process
from ._prices import snapshot_base
from ._redis_scripts import RELEASE, RENEW, RESERVE, SETTLE, SNAPSHOT
from ._store import Hold, LedgerSnapshot, SettledSpend, warn_unheld

DEFAULT_PREFIX = "blackbox:ledger:"
RECORD_TTL_S = 86_400  # how long settled / released markers and lapsed reservations are kept
SPENDS_KEPT = 100_000  # settled calls kept in the audit stream (approximately)
SPENDS_PAGE = 1000  # stream entries read per round trip by settled_since
SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S, RETRIES = 5.0, 2.0, 2
BACKOFF_S = (0.02, 0.25)  # a retry's exponential wait: (base, cap)
_REFUSED = ": the call is refused, nothing was sent"
_CONSEQUENCES = {
    "reserve": _REFUSED,
    "read the endpoint's calibration": _REFUSED,  # read before a call is sent, as the stored context and the gate are
    "take the calibration gate": _REFUSED,
    "read the stored context": _REFUSED,
    "settle": ": the spend is not recorded, and the reservation stays held until its lease lapses",
    "renew": ": its lease is tried again until it lapses",
}


class RedisLedger:
    """The ledger on a Redis server (or a primary), shared by every process and host using the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, record_ttl_s: int = RECORD_TTL_S) -> None:
        """Check `url` and prepare the scripts; ConfigError when it is malformed or the server refuses it (one PING)."""
        if not isinstance(prefix, str):
            raise ConfigError(f"the ledger's key prefix must be a string, got {prefix!r}")
        self._url = RedisURL(url, "ledger")
        self._client = self._url.client(  # short timeouts and a bounded retry
            retries=RETRIES, backoff=BACKOFF_S, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S
        )
        self._url.check(CONNECT_TIMEOUT_S, forgets="the spend and holds it counts (a cap could be passed)", prefix=prefix)  # a wrong password or database: ConfigError now, not at the first call
        self.url = self._url.shown
        self.prefix = prefix
        self._keep = str(int(record_ttl_s))
        self._seen = ("", 0)  # the ledger's epoch as this process last saw it ('' before its first reserve), and its highest seq
        self._owner: tuple[int, list[str]] = (-1, [])  # (pid, the settling process's host, pid, start time as ARGV)
        self._scripts = {
            name: self._client.register_script(text)
            for name, text in (("reserve", RESERVE), ("settle", SETTLE), ("release", RELEASE), ("renew", RENEW), ("snapshot", SNAPSHOT))
        }

    def _run(self, name: str, *args: object) -> Any:
        """Run one script; StoreUnavailableError (password redacted) when Redis fails to answer."""
        from redis.exceptions import RedisError

        try:
            return self._scripts[name](args=[self.prefix, *args])
        except RedisError as error:
            raise self._unavailable(name, error) from error

    def _unavailable(self, what: str, error: Exception) -> StoreUnavailableError:
        """The error a failed ledger operation raises; a reserve that fails sends nothing."""
        detail = self._url.reason(error)
        consequence = _CONSEQUENCES.get(what, "")
        return StoreUnavailableError(f"the Redis budget ledger at {self.url} failed to {what} ({detail}){consequence}")

    def reserve(self, hold: Hold, caps: Sequence[Cap]) -> list[CapUsage] | None:
        """Hold `hold.usd_nano` if it fits every cap (None), else every cap's usage; one script."""
        epoch, seq = self._seen
        reply = self._run(
            "reserve", hold.reservation_id, hold.call_id, hold.model, snapshot_base(hold.model), hold.key or "",
            hold.day, str(hold.usd_nano), str(max(1, math.ceil(hold.lease_s * 1000))), self._keep, epoch,
            random_hex(16), str(seq), *_cap_args(caps),
        )
        if int(reply[0]) == -1:
            raise self._lost()
        self._saw(reply[1].decode(), int(reply[2]))
        return None if int(reply[0]) == 1 else _usages(caps, reply[3:])

    def _saw(self, epoch: str, seq: int) -> None:
        """Keep the ledger's epoch and the highest `seq` seen in it; a new epoch starts its count afresh, since a `seq`
        kept from another epoch would read as data lost. Threads' replies come back in any order: one pair is swapped
        in at once, and a race only keeps a lower `seq` (a later look), never a higher one than the epoch reached."""
        known, highest = self._seen
        self._seen = (epoch, seq if epoch != known else max(highest, seq))

    def _lost(self) -> StoreUnavailableError:
        """The error every reserve raises once the ledger has lost its data: its caps would start again from nothing."""
        key = self.prefix + "epoch"
        return StoreUnavailableError(
            f"the Redis budget ledger at {self.url} lost its data (a restart without persistence, a FLUSHALL or an evicting "
            f"maxmemory-policy), so the spend its caps count is unknown{_REFUSED}. Every budget on it refuses until you set "
            f"its key {key!r} to 'reset:' and any text (redis-cli SET '{key}' reset:1), which starts its caps again from "
            "zero; run that Redis with appendonly yes and maxmemory-policy noeviction (docs/fleet.md)"
        )

    def settle(
        self, reservation_id: str, *, usd_nano: int, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
        hold: Hold | None = None, log_id: str | None = None,
    ) -> bool:
        """Charge the real spend once: True; False when another attempt already settled it.

        A reservation released, or lost with the server's data, is charged from `hold` (its answer was paid), with a
        warning; ReservationNotHeldError when there is no `hold` to charge it from. `log_id` (the call log the call is
        recorded in; NO_LOG: none; None: not said) is kept on its spends-stream entry.
        """
        known = (hold.call_id, hold.model, snapshot_base(hold.model), hold.key or "", hold.day) if hold else ("",) * 5
        status = int(self._run(
            "settle", reservation_id, random_hex(16), str(usd_nano), str(prompt_tokens), str(completion_tokens),
            str(cached_tokens), self._keep, str(SPENDS_KEPT), *known, *self._settler(),
            "0" if log_id is None else "1", log_id or "", str(hold.usd_nano) if hold else "0",
        ))
        if status == 0:
            raise ReservationNotHeldError(
                f"reservation {reservation_id} is not outstanding: it was released, or is unknown, and no hold was given to charge it from"
            )
        if status == 4 and hold is not None:
            warn_unheld(hold.call_id, reservation_id)
        if status == 3:
            logger.warning(
                "the Redis ledger at %s did not know reservation %s (its record lapsed over %d s ago, or Redis lost its "
                "data: run Redis with AOF persistence); its spend was recorded anyway", self.url, reservation_id, int(self._keep),
            )
        return status != 2

    def _settler(self) -> list[str]:
        """This process's host, pid and start time as script arguments (read again after a fork)."""
        if self._owner[0] != os.getpid():
            host, pid, started = this_process()
            self._owner = (pid, [host, str(pid), "" if started is None else str(started)])
        return self._owner[1]

    def release(self, reservation_id: str) -> bool:
        """Drop a held reservation without spending; False if it was not held."""
        return int(self._run("release", reservation_id, self._keep)) == 1

    def renew(self, reservation_id: str, lease_s: float) -> bool:
        """Extend a held reservation's lease to `lease_s` from now (the server's clock); False when it is not held."""
        return int(self._run("renew", reservation_id, str(max(1, math.ceil(lease_s * 1000))))) == 1

    def snapshot(self, caps: Sequence[Cap]) -> LedgerSnapshot:
        """Each cap's usage, what is held, and the settled totals, read by one script."""
        held, count, usages, spent, calls = self._run("snapshot", self._keep, *_cap_args(caps))
        counts = _pairs(calls)
        totals: dict[str, dict[str, tuple[int, int]]] = {scope: {} for scope in REPORTED_SCOPES}
        for row, nano in _pairs(spent).items():
            scope, value = row.split("|", 1)
            if scope in totals:
                totals[scope][value] = (nano, counts.get(row, 0))
        return LedgerSnapshot(_usages(caps, usages), int(held), int(count), totals)

    def spent_nano(self, cap: Cap) -> int:
        """Settled spend under a cap's scope and value."""
        from redis.exceptions import RedisError

        try:
            value = self._client.hget(self.prefix + "spent", "|".join(totals_row(cap)))
        except RedisError as error:
            raise self._unavailable("read", error) from error
        return int(value or 0)

    def outstanding(self) -> tuple[int, int]:
        """Nano-dollars held and the number of reservations held, lapsed leases purged first."""
        snapshot = self.snapshot([])
        return snapshot.reserved_nano, snapshot.outstanding

    def settled_since(self, since: float) -> list[SettledSpend]:
        """The spends settled from `since` on (to the millisecond, by the server's clock), oldest first, from the
        audit stream (which keeps about SPENDS_KEPT of the latest)."""
        from redis.exceptions import RedisError

        start, found = str(max(0, math.floor(since * 1000))), []
        try:
            while True:
                entries = self._client.xrange(self.prefix + "spends", min=start, max="+", count=SPENDS_PAGE)
                found += [_spend(entry_id, fields) for entry_id, fields in entries]
                if len(entries) < SPENDS_PAGE:
                    return found
                start = "(" + entries[-1][0].decode()
        except RedisError as error:
            raise self._unavailable("read", error) from error

    def close(self) -> None:
        """Close the connection pool; the next use opens new connections."""
        self._client.close()


def _cap_args(caps: Sequence[Cap]) -> list[str]:
    """(row, limit) pairs for a script; a per-call cap has no row (nothing is spent or held under it)."""
    args: list[str] = []
    for cap in caps:
        args += ["" if cap.scope == "per_call" else "|".join(totals_row(cap)), str(cap.limit_nano)]
    return args


def _usages(caps: Sequence[Cap], flat: Sequence[Any]) -> list[CapUsage]:
    """Cap usages from a script's (spent, held) pairs."""
    return [CapUsage(cap, int(flat[2 * i]), int(flat[2 * i + 1])) for i, cap in enumerate(caps)]


def _spend(entry_id: bytes, fields: dict[bytes, bytes]) -> SettledSpend:
    """A spends-stream entry as a SettledSpend; its id's first part is when it was settled (ms)."""
    text = {name.decode(): value.decode() for name, value in fields.items()}
    started = text.get("pid_start")
    return SettledSpend(
        call_id=text["call_id"], model=text["model"], key=text["key"] or None, day=text["day"],
        usd_nano=int(text["usd_nano"]), prompt_tokens=int(text["prompt_tokens"]),
        completion_tokens=int(text["completion_tokens"]), cached_tokens=int(text["cached_tokens"]),
        settled=int(entry_id.split(b"-", 1)[0]) / 1000, host=text.get("host", ""), pid=int(text.get("pid") or 0),
        pid_start=int(started) if started else None, log_id=text.get("log_id"),  # None: an entry from before it was kept
    )


def _pairs(flat: Sequence[bytes]) -> dict[str, int]:
    """An HGETALL reply as {field: integer}."""
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
