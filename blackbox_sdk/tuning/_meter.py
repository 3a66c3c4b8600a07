"""The budget, rate limit and call log of an SDK client, applied to Black-Box Tuning's forward calls.

One evaluation (a generation's batched forward, a dev evaluation, `Tuner.evaluate`,
`Tuner.score_population`) is one call to them, as a `create` would be: admitted by the rate limit
(one request of its prompt tokens) and reserved on the budget before its forward pass (prompt
tokens only, priced as a local model under the client's budget key), settled after it with the
tokens it used, released (admission and reservation) if it failed, and logged as one `CallRecord`
with route "bbt" whether it succeeded or not. The accounting is the pipeline's `Meter`, the one
every client call goes through. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from .._exceptions import StoreUnavailableError
from .._logging import logger
from .._options import Options
from .._pipeline import Meter
from ..call_log import new_call_id
from ..limits import Admission, RateLimits

EvaluationKind = Literal["train", "dev", "evaluate"]
ROUTE = "bbt"  # the call log's route for BBT evaluations
LOCAL_HOST = "local"  # the call log's endpoint host for a model run in this process


@dataclass(frozen=True)
class ClientMeter:
    """Admits, reserves, settles and logs BBT evaluations on an SDK client's rate limit, budget and call log."""

    meter: Meter
    model: str  # the local backend's model id: what the budget prices and the log names
    rate_limit: RateLimits | None = None  # the client's: each evaluation is one request of its prompt tokens

    @classmethod
    def of(cls, target: Any) -> ClientMeter | None:
        """The meter of an SDK client that has a budget, a rate limit or a log; None for any other target."""
        options = getattr(target, "options", None)
        backend = getattr(target, "backend", None)
        if not isinstance(options, Options) or backend is None:
            return None
        if options.budget is None and options.log is None and options.rate_limit is None:
            return None
        return cls(meter=Meter.of(options), model=str(backend.model_id), rate_limit=options.rate_limit)

    @contextmanager
    def call(self, kind: EvaluationKind, *, calls: int, examples: int, prompt_len: int, tokens: int) -> Iterator[None]:
        """Admit and reserve `tokens` before the body (the forward pass) runs; settle or release, and log, after it."""
        call_id = new_call_id()
        request = {"kind": kind, "calls": calls, "examples": examples, "prompt_len": prompt_len}
        where = {"call_id": call_id, "endpoint_host": LOCAL_HOST, "model": self.model, "route": ROUTE, "request": request}
        started = time.perf_counter()
        reservation = admission = None
        try:
            if self.rate_limit is not None:
                admission = self.rate_limit.admit(key=self.meter.key, model=self.model, tokens=tokens)
            reservation = self.meter.reserve(call_id=call_id, model=self.model, prompt_tokens=tokens, max_output_tokens=0, local=True)
            yield
        except BaseException as error:
            self.meter.release(reservation)
            self._give_back(admission, call_id)
            self.meter.record(error, **where, latency_s=time.perf_counter() - started)
            raise
        usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        cost = self.meter.settle(reservation, usage)  # the local model reports nothing: the SDK counted the tokens
        self.meter.record(None, **where, usage=usage, usage_counted=True, cost_usd=cost, latency_s=time.perf_counter() - started)

    def _give_back(self, admission: Admission | None, call_id: str) -> None:
        """Release the admission of an evaluation that did not run; a store out of reach is a warning (the error goes on)."""
        if admission is None or self.rate_limit is None:
            return
        try:
            self.rate_limit.release(admission)
        except StoreUnavailableError as unreleased:
            logger.warning("call %s: its rate-limit admission could not be released now: %s", call_id, unreleased)
