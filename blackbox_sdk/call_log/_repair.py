"""The call log repaired from the budget ledger: a call charged by a process that ended before logging it.

A call is settled on the ledger first and recorded in the log after, so a process killed between
the two leaves a charged call with no record, and the log's spend below the ledger's. The ledger
keeps every settled spend with the process that settled it and the id of the call log the call was
meant for (``log_id``: made when the log is created and kept inside it, so every process and host
writing the same log names it alike, and two logs never share one). ``repair_log`` writes one
record for each call meant for this log that it lacks, once its process can no longer write it: on
this host, once that process is gone (a live one may still be about to record it); on another
host, ``grace_s`` after its settle. So one ledger may serve many logs (hosts each with an SQLite
log, one Redis ledger): each log gets back only its own calls, and a call a client made without
a log goes into none. A spend that does not say which log it was meant for (from a ledger that
did not keep it yet, or a ``Budget.settle`` made without ``log_id``) could be any log's and is
repaired into whichever log asks, as before; a log with no ``log_id`` gets only those. The route,
request and answers are not in the ledger, so the record says so in ``error`` and carries the
ledger's model, key, usage and cost. It is idempotent (ids the log holds are skipped) and bounded:
by default only spends from ``MARGIN_S`` before the log's latest call on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._exceptions import ConfigError
from .._logging import logger
from ..budget import nano_to_usd
from ._records import CallRecord
from ._store import CallLogStore

if TYPE_CHECKING:
    from ..budget import Budget, SettledSpend

MARGIN_S = 600.0  # spends this long before the log's latest call are checked too (clocks, slow writers)
GRACE_S = 60.0  # a spend settled on another host this recently may still be on its way to the log
RECOVERED_ERROR = "recovered from the budget ledger: the process ended between charging the call and logging it"
UNKNOWN = "unknown"


@runtime_checkable
class RepairableLog(Protocol):
    """A call log that can say which call ids it holds and when its latest call was (both stores can)."""

    def logged_call_ids(self, call_ids: Iterable[str]) -> set[str]:
        """Which of these call ids the log holds."""
        ...

    def latest_created(self) -> float | None:
        """When the latest logged call was made; None for an empty log."""
        ...

    def record(self, rec: CallRecord) -> None:
        """Write one call."""
        ...


def log_identity(log: object) -> str | None:
    """The id a log's calls are settled under (``log_id``); None for a log that has none."""
    found = getattr(log, "log_id", None)
    return found if isinstance(found, str) and found else None


def repair_log(log: CallLogStore, budget: Budget, *, since: float | None = None, grace_s: float = GRACE_S) -> int:
    """Write a record for every call meant for `log`, charged on `budget`'s ledger from `since` on, that it lacks.

    Returns how many. `since` (epoch seconds) defaults to ``MARGIN_S`` before the log's latest
    call (before now for an empty log). Calls meant for another log, and calls whose process may
    still log them, are left alone (see the module docstring).
    """
    if not isinstance(log, RepairableLog):
        logger.warning("call log %r can't say which calls it holds, so it is not repaired from the budget ledger", log)
        return 0
    now = time.time()
    if since is None:
        latest = log.latest_created()
        since = min(now, now if latest is None else latest) - MARGIN_S
    by_call: dict[str, list[SettledSpend]] = {}
    identity, address = log_identity(log), getattr(log, "address_id", None)  # a PostgreSQL log's id before it had its own
    for spend in budget.settled_since(since):
        if spend.meant_for(identity) or (address is not None and spend.log_id == address):
            by_call.setdefault(spend.call_id, []).append(spend)
    alive: dict[tuple[int, int | None], bool] = {}  # each process looked up once: a busy process settled many of them
    done = {
        call_id: spends for call_id, spends in by_call.items() if not any(s.may_still_be_logged(now, grace_s, alive) for s in spends)
    }
    missing = [call_id for call_id in done if call_id not in log.logged_call_ids(done)]
    written = 0
    for call_id in missing:
        try:
            log.record(recovered_record(done[call_id]))
        except ConfigError:  # another process repaired it first
            continue
        written += 1
    if written:
        logger.warning(
            "call log: %d charged calls had no record (their process ended first); recovered from the budget ledger", written
        )
    return written


def recovered_record(spends: list[SettledSpend]) -> CallRecord:
    """The record of one call from its settled spends: model, key, usage and cost as the ledger has them."""
    first = spends[0]
    prompt, completion = sum(s.prompt_tokens for s in spends), sum(s.completion_tokens for s in spends)
    cached = sum(s.cached_tokens for s in spends)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return CallRecord(
        call_id=first.call_id, created=first.settled, endpoint_host=UNKNOWN, model=first.model, route=UNKNOWN,
        request={}, usage=usage, usage_counted=False, cost_usd=nano_to_usd(sum(s.usd_nano for s in spends)),
        error=RECOVERED_ERROR, key=first.key, extra={"recovered_from": "budget ledger", "day": first.day},
    )
