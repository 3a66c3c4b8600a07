"""Ranking groups, the unit the NCE loss ranks: one question's positive answer against its negatives."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._consensus import normalize_answer


@dataclass(frozen=True)
class RankingGroup:
    """One question's positive answer against its negatives: the unit the NCE loss ranks."""

    question: str
    positive: str
    negatives: tuple[str, ...]
    copies: tuple[int, ...] = ()  # copies of (positive, *negatives) among the samples; () = one each

    def log_copies(self) -> list[float]:
        """log(copies) per entry, positive first: the sampling prior that `Adapter.score` adds."""
        return [math.log(c) for c in self.copies] if self.copies else [0.0] * (1 + len(self.negatives))


def line_prefixes(answer: str) -> list[str]:
    """The answer's line prefixes, shortest first, ending with the whole answer (for step scoring)."""
    lines = answer.split("\n")
    return ["\n".join(lines[: i + 1]) for i in range(len(lines)) if lines[i].strip() or i == len(lines) - 1]


def build_groups(
    question: str, positives: Iterable[str], negatives: Iterable[str], *, expand_prefixes: bool = False
) -> list[RankingGroup]:
    """One group per distinct positive against all distinct negatives (none if either side is empty).

    Repeats in the lists are the black box's samples agreeing: each group records every entry's
    copies (as `normalize_answer` counts them), so `evaluate` judges it the way `Adapter.score`
    picks among samples. Training ranks the adapter's own score g and ignores the copies.
    """
    pos_all = _texts(a for p in positives for a in (line_prefixes(p) if expand_prefixes else [p]))
    neg_all = _texts(a for n in negatives for a in (line_prefixes(n) if expand_prefixes else [n]))
    pos = tuple(dict.fromkeys(pos_all))
    neg = tuple(n for n in dict.fromkeys(neg_all) if n not in pos)
    if not pos or not neg:
        return []
    copies = Counter(normalize_answer(t) for t in [*pos_all, *neg_all])
    return [RankingGroup(question, p, neg, tuple(copies[normalize_answer(t)] for t in (p, *neg))) for p in pos]


def _texts(texts: Iterable[str]) -> list[str]:
    """Non-blank texts, stripped, repeats kept."""
    return [t.strip() for t in texts if t and t.strip()]


def split_groups(
    groups: Sequence[RankingGroup], eval_fraction: float, seed: int = 0
) -> tuple[list[RankingGroup], list[RankingGroup]]:
    """Split by question (no question on both sides): (train, held-out)."""
    questions = sorted({g.question for g in groups})
    random.Random(seed).shuffle(questions)
    held = set(questions[: round(len(questions) * eval_fraction)])
    return [g for g in groups if g.question not in held], [g for g in groups if g.question in held]
