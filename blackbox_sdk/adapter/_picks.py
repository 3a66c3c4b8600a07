"""The adapter's pick among sampled answers: how often it is right, and the consensus weight that picks best."""

from __future__ import annotations

from collections.abc import Sequence

from ._consensus import log_copies
from ._model import Adapter
from ._online_config import OnlineQuestion


def calibrate_consensus(
    adapter: Adapter, validation: Sequence[tuple[str, Sequence[str], Sequence[bool | None]]], grid: Sequence[float]
) -> tuple[float, float]:
    """The consensus weight from `grid` whose picks are right most often on (question, samples, labels)
    held out from training, and that accuracy; ties go to the weight nearest 1 (the paper's model)."""
    table = [
        (adapter.score_pairs([(question, a) for a in answers]), log_copies(answers), labels)
        for question, answers, labels in validation
    ]

    def accuracy(weight: float) -> float:
        """The share of validation questions whose pick at this weight is labeled correct."""
        right = 0
        for raw, copies, labels in table:
            best = max(range(len(raw)), key=lambda i: raw[i] + weight * copies[i])
            right += bool(labels[best])
        return right / max(len(table), 1)

    best = max(grid, key=lambda w: (accuracy(w), -abs(w - 1.0)))
    return best, accuracy(best)


def pick(adapter: Adapter, question: str, answers: Sequence[str]) -> int:
    """The index of the adapter's choice among sampled answers."""
    scores = adapter.score(question, answers)
    return max(range(len(answers)), key=lambda i: scores[i])


def held_out_accuracy(
    adapter: Adapter | None, items: Sequence[OnlineQuestion], sampled: dict[str, list[str]], labels: dict[str, list[bool | None]]
) -> dict[str, float]:
    """Held-out accuracy: one sample (the share of samples right), the adapter's pick (when there is one), any correct."""
    if not items:
        return {}
    single = sum(sum(map(bool, labels[q.question])) / max(len(labels[q.question]), 1) for q in items)
    oracle = sum(any(labels[q.question]) for q in items)
    out = {"single_accuracy": single / len(items), "oracle_accuracy": oracle / len(items)}
    if adapter is not None:
        picks = sum(bool(labels[q.question][pick(adapter, q.question, sampled[q.question])]) for q in items)
        out["rerank_accuracy"] = picks / len(items)
    return out
