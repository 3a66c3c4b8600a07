"""The budget and call log of an SDK client, applied to Black-Box Tuning's forward calls.

One evaluation (a generation's batched forward, a dev evaluation, `Tuner.evaluate`,
`Tuner.score_population`) is one call to them, as a `create` would be: reserved on the budget
before its forward pass (prompt tokens only, priced as a local model under the client's budget
key), settled after it with the tokens it used, released if it failed, and logged as one
`CallRecord` with route "bbt" whether it succeeded or not. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from .budget import Budget, Reservation
from .calllog import CallLog, CallRecord, new_call_id
from .logs import logger
from .options import Options

__all__ = ["LOCAL_HOST", "ROUTE", "ClientMeter", "EvaluationKind"]

EvaluationKind = Literal["train", "dev", "evaluate"]
ROUTE = "bbt"  # the call log's route for BBT evaluations
LOCAL_HOST = "local"  # the call log's endpoint host for a model run in this process


@dataclass(frozen=True)
class ClientMeter:
    """Reserves, settles and logs BBT evaluations on an SDK client's budget and call log."""

    budget: Budget | None
    log: CallLog | None
    key: str | None  # the client's budget key
    model: str  # the local backend's model id: what the budget prices and the log names

    @classmethod
    def of(cls, target: Any) -> ClientMeter | None:
        """The meter of an SDK client that has a budget or a log; None for any other target."""
        options = getattr(target, "options", None)
        backend = getattr(target, "backend", None)
        if not isinstance(options, Options) or backend is None:
            return None
        if options.budget is None and options.log is None:
            return None
        return cls(budget=options.budget, log=options.log, key=options.budget_key, model=str(backend.model_id))

    @contextmanager
    def call(self, kind: EvaluationKind, *, calls: int, examples: int, prompt_len: int, tokens: int) -> Iterator[None]:
        """Reserve `tokens` before the body (the forward pass) runs; settle or release, and log, after it."""
        call_id = new_call_id()
        request = {"kind": kind, "calls": calls, "examples": examples, "prompt_len": prompt_len}
        started = time.perf_counter()
        reservation: Reservation | None = None
        try:
            if self.budget is not None:
                reservation = self.budget.reserve(
                    model=self.model,
                    prompt_tokens=tokens,
                    max_output_tokens=0,
                    key=self.key,
                    local=True,
                    call_id=call_id,
                )
            yield
        except BaseException as error:
            if self.budget is not None and reservation is not None:
                self.budget.release(reservation)
            self._record(call_id, request, started, error=error)
            raise
        cost = 0.0
        if self.budget is not None and reservation is not None:
            cost = self.budget.settle(reservation, prompt_tokens=tokens, completion_tokens=0)
        self._record(call_id, request, started, tokens=tokens, cost=cost, charged=reservation is not None)

    def _record(
        self,
        call_id: str,
        request: dict[str, Any],
        started: float,
        *,
        tokens: int | None = None,
        cost: float = 0.0,
        charged: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """One INFO line, and one call-log record when there is a log; usage only for a call that ran."""
        latency = time.perf_counter() - started
        logger.info(
            "%s %s %s: %s tokens, $%.6f%s",
            ROUTE, request["kind"], self.model, "?" if tokens is None else tokens, cost,
            f", error {type(error).__name__}" if error else "",
        )
        if self.log is None:
            return
        usage = None if tokens is None else {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        self.log.record(
            CallRecord(
                call_id=call_id,
                endpoint_host=LOCAL_HOST,
                model=self.model,
                route=ROUTE,
                request=request,
                usage=usage,
                usage_counted=charged,
                cost_usd=cost,
                latency_s=latency,
                error=None if error is None else f"{type(error).__name__}: {error}",
                key=self.key,
            )
        )
