"""Copies of the same answer among samples: the black box's own agreement, which the score adds as a prior."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

_END_PUNCTUATION = " .!?;:,'\"`"


def normalize_answer(text: str) -> str:
    """An answer reduced for counting copies: case-folded, spaces collapsed, end punctuation dropped."""
    return " ".join(text.casefold().split()).strip(_END_PUNCTUATION)


def log_copies(answers: Sequence[str]) -> list[float]:
    """log(copies of each answer among `answers`), copies counted up to `normalize_answer`."""
    keys = [normalize_answer(a) for a in answers]
    copies = Counter(keys)
    return [math.log(copies[k]) for k in keys]
