"""The adapter's pick among sampled answers: how often it is right, and the consensus weight that picks best."""

from __future__ import annotations

from collections.abc import Sequence

from ._consensus import log_copies
from ._model import Adapter
from ._online_config import OnlineQuestion
from ._verdict import ONLINE_ADVICE, Pick, Verdict, judge, majority_pick


Validation = Sequence[tuple[str, Sequence[str], Sequence[bool | None]]]  # (question, samples, labels), one per draw


def calibrate_consensus(adapter: Adapter, validation: Validation, grid: Sequence[float]) -> tuple[float, float]:
    """The consensus weight from `grid` whose picks are right most often on (question, samples, labels)
    held out from training, and that accuracy; ties go to the weight nearest 1 (the paper's model)."""
    weight, picks = _calibrate(adapter, validation, grid)
    return weight, _accuracy(picks)


def calibrate_and_judge(adapter: Adapter, validation: Validation, grid: Sequence[float]) -> tuple[float, float, Verdict]:
    """`calibrate_consensus`'s weight and accuracy, and the verdict of its picks against majority vote's."""
    weight, picks = _calibrate(adapter, validation, grid)
    return weight, _accuracy(picks), judge(picks, where="validation", advice=ONLINE_ADVICE, weight=weight)


def _calibrate(adapter: Adapter, validation: Validation, grid: Sequence[float]) -> tuple[float, list[Pick]]:
    """The best weight of `grid` (ties nearest 1) and, at it, each draw's pick against majority vote's."""
    table = [
        (question, adapter.score_pairs([(question, a) for a in answers]), log_copies(answers), labels, majority_pick(answers))
        for question, answers, labels in validation
        if answers
    ]

    def picks_at(weight: float) -> list[Pick]:
        """Each draw's pick at this weight (right or not) beside majority vote's."""
        out = []
        for question, raw, copies, labels, majority in table:
            best = max(range(len(raw)), key=lambda i: raw[i] + weight * copies[i])
            out.append(Pick(question, bool(labels[best]), bool(labels[majority])))
        return out

    best = max(grid, key=lambda w: (_accuracy(picks_at(w)), -abs(w - 1.0)))
    return best, picks_at(best)


def _accuracy(picks: Sequence[Pick]) -> float:
    """The share of picks the adapter got right (0 for none)."""
    return sum(p.adapter_right for p in picks) / max(len(picks), 1)


def pick(adapter: Adapter, question: str, answers: Sequence[str]) -> int:
    """The index of the adapter's choice among sampled answers."""
    scores = adapter.score(question, answers)
    return max(range(len(answers)), key=lambda i: scores[i])


def held_out_accuracy(
    adapter: Adapter | None, items: Sequence[OnlineQuestion], sampled: dict[str, list[str]], labels: dict[str, list[bool | None]]
) -> dict[str, float]:
    """Held-out accuracy: one sample (the share of samples right), any correct, and with an adapter its pick and majority vote's."""
    if not items:
        return {}
    single = sum(sum(map(bool, labels[q.question])) / max(len(labels[q.question]), 1) for q in items)
    oracle = sum(any(labels[q.question]) for q in items)
    out = {"single_accuracy": single / len(items), "oracle_accuracy": oracle / len(items)}
    if adapter is not None:
        picks = sum(bool(labels[q.question][pick(adapter, q.question, sampled[q.question])]) for q in items)
        out["rerank_accuracy"] = picks / len(items)
        majority = sum(bool(labels[q.question][majority_pick(sampled[q.question])]) for q in items if sampled[q.question])
        out["majority_accuracy"] = majority / len(items)
    return out
