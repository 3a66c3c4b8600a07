"""Reranking: a scorer `(question, answers) -> scores` picks the best of several sampled candidates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
    """Candidate indices best first; ties keep sampling order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def valid_first(order: Sequence[int], answers: Sequence[str], valid: Callable[[str], bool] | None) -> list[int]:
    """Ranked candidate indices with the answers `valid` accepts first (for `parse`: those that fit the schema)."""
    if valid is None:
        return list(order)
    accepted = {i for i in order if valid(answers[i])}
    return [i for i in order if i in accepted] + [i for i in order if i not in accepted]


FIRST_ROUND = 2  # adaptive K samples 2 answers first, then doubles while the pick is unclear
_END_PUNCTUATION = " .!?;:,'\"`"


def same_answer(text: str) -> str:
    """An answer reduced for telling copies apart: case-folded, spaces collapsed, end punctuation dropped."""
    return " ".join(text.casefold().split()).strip(_END_PUNCTUATION)


def pick_share(answers: Sequence[str], scores: Sequence[float]) -> float:
    """The best-scored answer's share of softmax(scores), its copies included, beside one answer not
    yet sampled that scores 0 (neutral): near 1 only when the pick is both ahead and good."""
    top = max(range(len(scores)), key=lambda i: (scores[i], -i))
    ceiling = max(max(scores), 0.0)
    weights = [math.exp(s - ceiling) for s in scores]
    winner = same_answer(answers[top])
    return sum(w for w, a in zip(weights, answers) if same_answer(a) == winner) / (sum(weights) + math.exp(-ceiling))


def next_round(gathered: int, most: int, share: float | None, confidence: float) -> int:
    """How many answers adaptive K should hold next: 0 to stop (the pick is clear, or `most` is reached), else double."""
    if gathered >= most or (share is not None and share >= confidence):
        return 0
    return min(most, max(FIRST_ROUND, 2 * gathered))
