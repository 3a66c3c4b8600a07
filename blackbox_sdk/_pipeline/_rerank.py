"""Reranking: a scorer `(question, answers) -> scores` picks the best of several sampled candidates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._adaptive import AUTO
from .._options import Options
from .._types import CHAT, RESPONSES, Route
from ._response_input import question


def question_of(route: Route, params: Mapping[str, Any]) -> str:
    """The text the candidates answer: the last user message for chat and responses, the prompt otherwise."""
    if route is RESPONSES:
        return question(params)
    if route is not CHAT:
        prompt = params.get("prompt")
        return prompt if isinstance(prompt, str) else str(prompt)
    for message in reversed(list(params.get("messages") or [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(part.get("text", "") for part in content or [] if isinstance(part, Mapping))
    return ""


def rank(scores: Sequence[float]) -> list[int]:
    """Candidate indices best first; ties keep sampling order, and a NaN score (a diverged adapter) ranks last."""
    return sorted(range(len(scores)), key=lambda i: (math.isnan(scores[i]), 0.0 if math.isnan(scores[i]) else -scores[i], i))


def valid_first(order: Sequence[int], answers: Sequence[str], valid: Callable[[str], bool] | None) -> list[int]:
    """Ranked candidate indices with the answers `valid` accepts first (for `parse`: those that fit the schema)."""
    if valid is None:
        return list(order)
    accepted = {i for i in order if valid(answers[i])}
    return [i for i in order if i in accepted] + [i for i in order if i not in accepted]


def confidence_of(opts: Options) -> float | None:
    """The adaptive-K confidence a call stops at: the option's, or with "auto" the reranking adapter's own,
    chosen when it was trained (None: no adaptive K, every one of `rerank_n` answers)."""
    chosen = opts.rerank_confidence
    if chosen != AUTO:
        return chosen if isinstance(chosen, float) else None
    adapter = getattr(opts.reranker, "__self__", None)  # reranker="folder" keeps the loaded Adapter's bound `score`
    confidence = getattr(getattr(adapter, "config", None), "confidence", None)
    return float(confidence) if isinstance(confidence, (int, float)) and not isinstance(confidence, bool) else None
