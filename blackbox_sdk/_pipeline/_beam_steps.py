"""Adapter-guided beam search inside a call: each step is a call through the same client
(cached, budgeted, logged, never reranked), and the best beams come back as one ChatCompletion.
"""

from __future__ import annotations

import time
from functools import reduce
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from openai.types.chat import ChatCompletion

from .._info import attach
from .._types import CHAT, COMPLETIONS, Json, Route, add_usage
from ._call import Call
from ._core import Core, build
from ._rerank import question_of

BEAM_OWN_PARAMS = ("messages", "model", "n", "stream", "stream_options", "stop")  # the beam sampler sets these (the caller's stop ends beams)


class StepTally:
    """A client-like view for the beam sampler: its `create` calls run through the SDK, and the usage
    of their answers adds up here (their cost, requests and retries: `spent_on_steps`)."""

    def __init__(self, create: Callable[[Route, Json], Any]) -> None:
        self._create = create
        self.usage: Json = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=lambda **params: self._run(CHAT, params)))
        self.completions = SimpleNamespace(create=lambda **params: self._run(COMPLETIONS, params))

    def _run(self, route: Route, params: Json) -> Any:
        """One step call, counted."""
        response = self._create(route, params)
        if response.usage is not None:
            self.usage = add_usage(self.usage, response.usage.to_dict(warnings=False))
        return response


def step_options(call: Call) -> Json:
    """The per-call options of each step: the caller's, without reranking or beams."""
    return {**call.overrides, "reranker": None, "beam": None}


def spent_on_steps(call: Call) -> Json | None:
    """The beam call's cost, requests and retries: its step calls', a step that failed included (for
    what it was charged), so that the whole call's one record says what the search spent; returns
    the usage its steps logged, summed (None when none logged any), for a search that failed."""
    info = call.info
    info.cost_usd = sum(step.cost_usd for step in call.steps)
    info.requests = sum(step.requests for step in call.steps)
    info.retries = sum(step.retries for step in call.steps)
    used = [step.usage for step in call.steps if step.usage is not None]
    return reduce(add_usage, used) if used else None


def run_beam(call: Call, create: Callable[[Route, Json], Any]) -> tuple[Any, StepTally]:
    """Run the beam search with step calls made through `create`; the search's result and tally."""
    from ..adapter import beam_search, client_sampler

    options, scorer, tally = call.opts.beam, call.opts.reranker, StepTally(create)
    assert options is not None and scorer is not None  # `flows.create` only runs a beam with both set
    messages = list(call.params["messages"])
    extra = {k: v for k, v in call.params.items() if k not in BEAM_OWN_PARAMS}
    sample = client_sampler(tally, call.model, mode=options.mode, messages=messages[:-1], **extra)
    result = beam_search(
        question_of(CHAT, call.params), sample, scorer, beam=options.beam, candidates=options.candidates,
        max_steps=options.max_steps, answer_marker=options.answer_marker, separator=options.separator, stop=call.params.get("stop"),
    )
    return result, tally


def beam_response(core: Core, call: Call, result: Any, tally: StepTally) -> Any:
    """The best beams as a ChatCompletion; every final beam and its score on `.blackbox`; logged."""
    info = call.info
    beams = list(result.beams) or [(result.text, result.score)]
    info.candidates, info.scores = [text for text, _ in beams], [float(score) for _, score in beams]
    info.chosen = list(range(min(call.n, len(beams))))
    spent_on_steps(call)
    body = {
        "id": f"chatcmpl-{info.call_id}", "object": "chat.completion", "created": int(time.time()),
        "model": call.model, "usage": tally.usage,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": beams[i][0]}, "finish_reason": "length" if beams[i][0] in result.truncated else "stop"}
            for i in info.chosen
        ],
    }
    core.record(call, [], tally.usage)
    return attach(build(ChatCompletion, body), info)
