"""An adapter's own adaptive-K confidence, chosen on its validation questions when it is trained.

Adaptive K (`rerank_confidence=c`) samples 1 answer, then 2, 4, 8, and stops once the adapter's
pick holds a share `c` of the softmax over the scores. The `c` that keeps one adapter's accuracy
is not another's, so training replays the client's own rule (`blackbox_sdk._adaptive`) on the
validation draws for each `c` of a grid and keeps the cheapest whose picks are right as often as
the adapter's picks among all the draw's answers, within `TOLERANCE`. A client with
`rerank_confidence="auto"` then uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._adaptive import CONFIDENCE_GRID, stops_at
from ._consensus import log_copies
from ._model import Adapter
from ._picks import Validation

TOLERANCE = 0.01  # accuracy the chosen confidence may give up against sampling every answer, on the validation draws


def choose_confidence(adapter: Adapter, validation: Validation, grid: Sequence[float] = CONFIDENCE_GRID) -> tuple[float | None, dict[str, Any]]:
    """The cheapest confidence of `grid` that keeps the adapter's validation accuracy (None: none does, always sample
    every answer), and the report: accuracy and answers per draw for it and for all answers."""
    draws = [_Draw(list(answers), adapter.score_pairs([(q, a) for a in answers]), list(labels), adapter.config.consensus)
             for q, answers, labels in validation if len(answers) > 1]  # fmt: skip
    if not draws:
        return None, {}
    full_accuracy, full_answers = _replay(draws, None)
    tried = {c: _replay(draws, c) for c in grid}
    kept = [c for c, (accuracy, _) in tried.items() if accuracy >= full_accuracy - TOLERANCE]
    chosen = min(kept, key=lambda c: (tried[c][1], -c)) if kept else None
    accuracy, answers = tried[chosen] if chosen is not None else (full_accuracy, full_answers)
    return chosen, {
        "adaptive_confidence": chosen, "adaptive_accuracy": accuracy, "adaptive_answers": answers,
        "all_answers_accuracy": full_accuracy, "all_answers": full_answers,
    }


@dataclass(frozen=True)
class _Draw:
    """One validation draw: its answers in sampling order, the adapter's g for each, their labels, the consensus weight."""

    answers: list[str]
    g: list[float]
    labels: list[bool | None]
    consensus: float

    def scores(self, k: int) -> list[float]:
        """`Adapter.score` of the first k answers: g plus the consensus prior over those k."""
        return [g + self.consensus * copies for g, copies in zip(self.g[:k], log_copies(self.answers[:k]))]

    def right_at(self, k: int) -> bool:
        """Whether the adapter's pick among the first k answers (ties: the first) is labelled right."""
        scores = self.scores(k)
        return bool(self.labels[max(range(k), key=lambda i: (scores[i], -i))])


def _replay(draws: Sequence[_Draw], confidence: float | None) -> tuple[float, float]:
    """(accuracy, answers per draw) when adaptive K stops at `confidence` (None: every answer)."""
    held = [len(d.answers) if confidence is None else stops_at(d.answers, d.scores, confidence) for d in draws]
    return sum(d.right_at(k) for d, k in zip(draws, held)) / len(draws), sum(held) / len(draws)
