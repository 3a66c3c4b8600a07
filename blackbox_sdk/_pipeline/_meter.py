"""The accounting every metered call shares: reserve the worst case on the budget before the
work, settle what was used or release after it, and write one call-log record either way.
The client's calls and Black-Box Tuning's evaluations both go through it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

from .._exceptions import BlackBoxError, CallLogError, StoreUnavailableError, add_note
from .._logging import logger
from .._options import Options
from .._types import Json
from ..budget import NO_LOG, Budget, Reservation
from ..call_log import CallLog, CallLogStore, CallRecord


def reported(count: Any) -> Any:
    """A token count from a server's usage as an int (none: 0); one that reads as no integer (infinity, a
    word) as it came, for `Budget.settle` to charge the reserved worst case rather than fail the call."""
    try:
        return int(count or 0)
    except (TypeError, ValueError, OverflowError):
        return count


def used_tokens(usage: Json) -> int | None:
    """The tokens a server's usage reports in all (its total, else prompt plus completion); None when it reads as no count."""
    total, prompt, completion = (reported(usage.get(name)) for name in ("total_tokens", "prompt_tokens", "completion_tokens"))
    used = total or (prompt + completion if isinstance(prompt, int) and isinstance(completion, int) else None)
    return used if isinstance(used, int) and 0 <= used < 2**53 else None


def recording(log: CallLogStore | None) -> bool:
    """Whether a call metered onto `log` writes anything: a log record, or the INFO line."""
    return log is not None or logger.isEnabledFor(logging.INFO)


@dataclass(frozen=True)
class Meter:
    """A budget and a call log (either may be None) under one budget key."""

    budget: Budget | None
    log: CallLogStore | None
    key: str | None = None

    @classmethod
    def of(cls, options: Options) -> Meter:
        """The meter of a call made with `options`, its key decided once: `budget_key`, else the budget's own
        key (`Budget.key_for`); the ledger, the rate-limit window and the log record all use this key."""
        budget = options.budget
        return cls(budget, options.log, options.budget_key if budget is None else budget.key_for(options.budget_key))

    @property
    def log_id(self) -> str | None:
        """The id of the call log this call is recorded in, noted on its spend: NO_LOG without a log; None for a log
        that has no id (its spends are then anyone's to repair, as from an older ledger)."""
        if self.log is None:
            return NO_LOG
        found = getattr(self.log, "log_id", None)
        return found if isinstance(found, str) and found else None

    def reserve(self, **request: Any) -> Reservation | None:
        """Reserve the worst case before anything is sent (`Budget.reserve`'s arguments but the key); None without a budget."""
        return None if self.budget is None else self.budget.reserve(key=self.key, **request)

    def settle(self, reservation: Reservation | None, usage: Json) -> float:
        """Charge what was used (prompt, completion, cached prompt tokens, audio ones); the cost in USD."""
        if reservation is None or self.budget is None:
            return 0.0
        details = usage.get("prompt_tokens_details") or {}
        prompt, cached = reported(usage.get("prompt_tokens")), reported(details.get("cached_tokens"))
        if isinstance(prompt, int) and isinstance(cached, int) and cached > prompt:  # a server's impossible report
            logger.warning("call %s: the server reported %d cached of %d prompt tokens; charged as uncached", reservation.call_id, cached, prompt)
            cached = 0
        completion = reported(usage.get("completion_tokens"))
        audio = (reported(details.get("audio_tokens", 0)), reported((usage.get("completion_tokens_details") or {}).get("audio_tokens", 0)))
        settle = partial(
            self.budget.settle, reservation, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
            log_id=self.log_id, audio_tokens=audio,
        )
        try:
            return float(settle())
        except StoreUnavailableError as error:  # the answer is paid: its charge is owed, and lands once the ledger is back
            return self.budget.owe(reservation, (prompt, completion, cached, audio), settle, error, log_id=self.log_id)

    def release(self, reservation: Reservation | None) -> None:
        """Give back a reservation whose work did not run."""
        if reservation is not None and self.budget is not None:
            self.budget.release(reservation)

    def record(self, error: BaseException | None = None, **fields: Any) -> None:
        """One INFO line (when INFO is on), and one call-log record (`CallRecord` fields) when there is a log.

        An SQLite `CallLog` gets it through `enqueue`: its background writer inserts it off the call path.
        """
        if logger.isEnabledFor(logging.INFO):
            usage = fields.get("usage") or {}
            logger.info(
                "%s %s: %s tokens, $%.6f, cache %s, %d retries%s",
                fields["route"], fields["model"], usage.get("total_tokens", "?"), fields.get("cost_usd", 0.0),
                "hit" if fields.get("cache_hit") else "miss", fields.get("retries", 0),
                f", error {type(error).__name__}" if error else "",
            )
        if self.log is None:
            return
        try:
            self._write(self.log, error, fields)
        except BlackBoxError as unlogged:
            if error is None:  # a call that answered: its caller learns it was not logged
                raise
            # a failed call: its own error (a 500, a cut stream), which the caller re-raises, says what went wrong
            logger.warning("call %s: its failure (%s) could not be logged: %s", fields.get("call_id"), type(error).__name__, unlogged)
            add_note(error, f"blackbox-sdk: this call could not be logged: {type(unlogged).__name__}: {unlogged}")

    def _write(self, log: CallLogStore, error: BaseException | None, fields: dict[str, Any]) -> None:
        """Hand the call's record to the log (CallRecord fields); at interpreter exit a closed log only drops it."""
        record = CallRecord(key=self.key, error=None if error is None else f"{type(error).__name__}: {error}", **fields)
        try:
            (log.enqueue if isinstance(log, CallLog) else log.record)(record)
        except CallLogError:
            if not sys.is_finalizing():
                raise
            # a stream left half-read at exit, collected after the log closed: its spend is in the ledger
            # (`repair_log` gives the record back), and a traceback at exit would tell the user nothing
            logger.debug("call %s: not logged, the interpreter is exiting and the call log is closed", fields.get("call_id"))
