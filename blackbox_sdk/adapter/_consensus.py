"""Copies of the same answer among samples: the black box's own agreement, which the score adds as a prior."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .._adaptive import (
    same_answer as normalize_answer,  # one rule for what counts as a copy: scoring, adaptive K, majority vote
)


def log_copies(answers: Sequence[str]) -> list[float]:
    """log(copies of each answer among `answers`), copies counted up to `normalize_answer`."""
    keys = [normalize_answer(a) for a in answers]
    copies = Counter(keys)
    return [math.log(copies[k]) for k in keys]
