"""The budget and call log of an SDK client, applied to Black-Box Tuning's forward calls.

One evaluation (a generation's batched forward, a dev evaluation, `Tuner.evaluate`,
`Tuner.score_population`) is one call to them, as a `create` would be: reserved on the budget
before its forward pass (prompt tokens only, priced as a local model under the client's budget
key), settled after it with the tokens it used, released if it failed, and logged as one
`CallRecord` with route "bbt" whether it succeeded or not. The accounting is the pipeline's
`Meter`, the one every client call goes through. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from .._options import Options
from .._pipeline import Meter
from ..call_log import new_call_id

EvaluationKind = Literal["train", "dev", "evaluate"]
ROUTE = "bbt"  # the call log's route for BBT evaluations
LOCAL_HOST = "local"  # the call log's endpoint host for a model run in this process


@dataclass(frozen=True)
class ClientMeter:
    """Reserves, settles and logs BBT evaluations on an SDK client's budget and call log."""

    meter: Meter
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
        return cls(meter=Meter.of(options), model=str(backend.model_id))

    @contextmanager
    def call(self, kind: EvaluationKind, *, calls: int, examples: int, prompt_len: int, tokens: int) -> Iterator[None]:
        """Reserve `tokens` before the body (the forward pass) runs; settle or release, and log, after it."""
        call_id = new_call_id()
        request = {"kind": kind, "calls": calls, "examples": examples, "prompt_len": prompt_len}
        where = {"call_id": call_id, "endpoint_host": LOCAL_HOST, "model": self.model, "route": ROUTE, "request": request}
        started = time.perf_counter()
        reservation = None
        try:
            reservation = self.meter.reserve(call_id=call_id, model=self.model, prompt_tokens=tokens, max_output_tokens=0, local=True)
            yield
        except BaseException as error:
            self.meter.release(reservation)
            self.meter.record(error, **where, latency_s=time.perf_counter() - started)
            raise
        usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        cost = self.meter.settle(reservation, usage)  # the local model reports nothing: the SDK counted the tokens
        self.meter.record(None, **where, usage=usage, usage_counted=True, cost_usd=cost, latency_s=time.perf_counter() - started)
