"""Adaptive K's stop rule, shared by the client (which samples in rounds) and adapter training
(which chooses an adapter's confidence on its validation questions by replaying the same rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

FIRST_ROUND = 1  # adaptive K samples 1 answer first (kept when the scorer finds it clearly good), then doubles while the pick is unclear
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


CONFIDENCE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # the confidences training chooses an adapter's from
AUTO = "auto"  # rerank_confidence="auto": the reranking adapter's own confidence, chosen when it was trained


def stops_at(answers: Sequence[str], scores_of: Callable[[int], Sequence[float]], confidence: float) -> int:
    """How many of `answers` (in sampling order) adaptive K holds when it stops; `scores_of(k)` scores the first k."""
    held = next_round(0, len(answers), None, confidence)
    while True:
        following = next_round(held, len(answers), pick_share(answers[:held], scores_of(held)), confidence)
        if not following:
            return held
        held = following
