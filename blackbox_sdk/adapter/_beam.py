"""Sentence-level beam search guided by the adapter (BBox-Adapter, Sun et al. 2024, section 3.3).

Each step, every open beam asks the black box for `candidates` next steps (sampling stops at the
step boundary, a newline); the steps are cut to their first line and deduplicated, the adapter
scores each (question, beam + step) prefix, and the best `beam` prefixes survive. A beam is done
when its last step holds the answer marker or the black box has nothing more to add; the search
ends when every kept beam is done or after `max_steps`. With answers one line long, the first
step is plain reranking of `candidates` samples.

`beam_search` works on any `sample(question, prefix, k) -> list[str]`; `client_sampler` builds one
on the SDK client, by default through the completions endpoint with the chat template rendered
here, so the model truly continues the partial answer (see docs/adapter.md for the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import ConfigError
from .._types import one_number_each

SampleFn = Callable[[str, str, int], list[str]]  # (question, prefix so far, k) -> up to k next steps
ScoreFn = Callable[[str, Sequence[str]], Sequence[float]]  # (question, partial answers) -> scores
SAMPLER_MODES = ("completions", "chat")


@dataclass(frozen=True)
class BeamResult:
    """The best answer found, its adapter score, the steps taken and how many prefixes were scored."""

    text: str
    score: float
    steps: int
    candidates_scored: int
    beams: tuple[tuple[str, float], ...] = ()  # every final beam, best first
    truncated: tuple[str, ...] = ()  # the final beams a step cut by the token cap ended (finish_reason "length")


@dataclass
class _Beam:
    """A partial answer, its score and whether it is finished."""

    text: str
    score: float
    done: bool = False
    cut: bool = False  # ended by a step the token cap cut


class CutStep(str):
    """A sampled step that the token cap (max_tokens) cut, not a whole line: it ends its beam (`ClientSampler` marks them)."""


def _first_line(step: str, separator: str, stop: Sequence[str]) -> tuple[str, bool]:
    """A sampled step cut at the first step boundary and at the earliest stop sequence in it, stripped; whether a stop cut it."""
    line = step.split(separator, 1)[0]
    cut = min((line.find(s) for s in stop if s and s in line), default=-1)
    return (line[:cut] if cut >= 0 else line).strip(), cut >= 0


def _expand(beam: _Beam, steps: Sequence[str], separator: str, marker: str | None, stop: Sequence[str]) -> list[_Beam]:
    """The distinct one-step extensions of a beam (unscored), finished where a stop sequence cut their step (a step
    that opens with one finishes the beam as it is); none when every step is empty."""
    found = ((*_first_line(t, separator, stop), isinstance(t, CutStep)) for t in steps)
    lines = dict.fromkeys((line, stopped, cut and not stopped) for line, stopped, cut in found if line or (stopped and beam.text))
    return [
        _Beam(f"{beam.text}{separator}{line}" if beam.text and line else line or beam.text, -math.inf,
              stopped or cut or (marker is not None and marker in line), cut)
        for line, stopped, cut in lines
    ]


def _check_options(beam: int, candidates: int, max_steps: int, separator: str) -> None:
    """Reject search options that could not search."""
    if beam < 1 or candidates < 1 or max_steps < 1:
        raise ConfigError(f"beam, candidates and max_steps must be >= 1, got {beam}, {candidates}, {max_steps}")
    if not separator:
        raise ConfigError("separator must be a non-empty string")


def beam_search(
    question: str,
    sample: SampleFn,
    scorer: ScoreFn,
    *,
    beam: int = 3,
    candidates: int = 5,
    max_steps: int = 8,
    answer_marker: str | None = "####",
    separator: str = "\n",
    stop: str | Sequence[str] | None = None,
) -> BeamResult:
    """Build an answer step by step, keeping the `beam` best prefixes by adapter score; a `stop` sequence (a plain
    call's `stop`) ends the beam whose step holds it, cut before it."""
    _check_options(beam, candidates, max_steps, separator)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    beams = [_Beam("", -math.inf)]
    scored = steps = 0
    while steps < max_steps and not all(b.done for b in beams):
        steps += 1
        kept = [b for b in beams if b.done]
        fresh: dict[str, _Beam] = {}
        for current in (b for b in beams if not b.done):
            grown = _expand(current, sample(question, current.text, candidates), separator, answer_marker, stops)
            if not grown and current.text:
                current.done = True
                kept.append(current)
            for b in grown:
                fresh.setdefault(b.text, b)
        done_texts = {b.text for b in kept}
        new = [b for text, b in fresh.items() if text not in done_texts]
        _score(question, scorer, new)
        scored += len(new)
        pool = kept + new
        if not pool:
            break
        beams = sorted(pool, key=lambda b: -b.score)[:beam]
    best = beams[0]
    final = [b for b in beams if b.text]
    return BeamResult(best.text, best.score, steps, scored, tuple((b.text, b.score) for b in final), tuple(b.text for b in final if b.cut))


def _score(question: str, scorer: ScoreFn, beams: list[_Beam]) -> None:
    """Score new prefixes in one scorer call, in place."""
    if not beams:
        return
    values = one_number_each(scorer(question, [b.text for b in beams]), len(beams), "scorer")
    for b, value in zip(beams, values):
        b.score = value


CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"


def render_chatml(messages: Sequence[dict[str, str]], answer_prefix: str) -> str:
    """A ChatML prompt (SmolLM2, Qwen, ...) whose assistant turn starts with the partial answer."""
    text = "".join(CHATML.format(role=m["role"], content=m["content"]) for m in messages)
    return f"{text}<|im_start|>assistant\n{answer_prefix}"


@dataclass
class ClientSampler:
    """`sample(question, prefix, k)` through the SDK client; counts calls and tokens as it goes."""

    client: Any
    model: str
    mode: str = "completions"  # "completions": ChatML prompt continued; "chat": the prefix quoted in the user turn
    messages: Sequence[dict[str, str]] = ()  # system prompt and few-shot turns before the question
    separator: str = "\n"
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        """Reject a mode that does not exist."""
        if self.mode not in SAMPLER_MODES:
            raise ConfigError(f"mode must be one of {SAMPLER_MODES}, not {self.mode!r}")

    def __call__(self, question: str, prefix: str, k: int) -> list[str]:
        """Up to k next steps of the answer to `question` that starts with `prefix`."""
        stop = [self.separator, "<|im_end|>"]
        options = {"temperature": 1.0, "max_tokens": 64, **self.create_kwargs, "n": k, "stop": stop}
        if self.mode == "completions":
            continuation = f"{prefix}{self.separator}" if prefix else ""
            response = self.client.completions.create(
                model=self.model, prompt=render_chatml([*self.messages, {"role": "user", "content": question}], continuation), **options
            )
            texts = [choice.text for choice in response.choices]
        else:
            response = self.client.chat.completions.create(model=self.model, messages=self._chat_messages(question, prefix), **options)
            texts = [choice.message.content or "" for choice in response.choices]
        texts = [CutStep(text) if choice.finish_reason == "length" else text for text, choice in zip(texts, response.choices)]
        self.calls += 1
        if response.usage is not None:
            self.prompt_tokens += response.usage.prompt_tokens
            self.completion_tokens += response.usage.completion_tokens
        return texts

    def _chat_messages(self, question: str, prefix: str) -> list[dict[str, str]]:
        """Chat mode: the question, and the partial answer so far quoted with a request for its next line."""
        if not prefix:
            return [*self.messages, {"role": "user", "content": question}]
        ask = f"{question}\n\nYour answer so far:\n{prefix}\n\nWrite only the next line of the answer."
        return [*self.messages, {"role": "user", "content": ask}]


def client_sampler(
    client: Any, model: str, *, mode: str = "completions", messages: Sequence[dict[str, str]] = (), **create_kwargs: Any
) -> ClientSampler:
    """A `sample` callable for `beam_search` on an SDK (or openai) client; create_kwargs go to every call."""
    return ClientSampler(client, model, mode=mode, messages=list(messages), create_kwargs=create_kwargs)
