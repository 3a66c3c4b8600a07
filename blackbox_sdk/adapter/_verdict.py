"""Does the adapter beat majority vote? Its picks against the most-copied answer, on questions it did not train on.

A reranker that only ties majority vote costs a forward pass per candidate for nothing, so
`online_train` and `train_from_log` judge it on their validation or held-out questions and say so
(report, card, one warning) instead of shipping a silent tie. A consensus weight of 4 or more makes
the score close to majority vote itself, so a tie is a real outcome, not a bug.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

from .._logging import logger
from ._consensus import normalize_answer

MIN_JUDGED_QUESTIONS = 5  # fewer distinct questions than this: "not judged", not a verdict from noise
NEAR_MAJORITY_WEIGHT = 4.0  # a consensus weight at least this large scores close to majority vote itself
ONLINE_ADVICE = "more training questions, another encoder (AdapterConfig(base_model=...)), or more rounds (OnlineConfig(rounds=...))"
OFFLINE_ADVICE = "feedback on more questions, another encoder (--base / AdapterConfig(base_model=...)), or more epochs"


def majority_pick(answers: Sequence[str]) -> int:
    """Majority vote's choice: the answer with the most copies up to `normalize_answer`, ties to the one sampled first."""
    keys = [normalize_answer(a) for a in answers]
    copies = Counter(keys)
    return max(range(len(keys)), key=lambda i: (copies[keys[i]], -i))


@dataclass(frozen=True)
class Pick:
    """One judged choice among sampled answers: was the adapter's pick right, and was majority vote's."""

    question: str
    adapter_right: bool
    majority_right: bool


@dataclass(frozen=True)
class Verdict:
    """The adapter's picks against majority vote's on the same samples; `beats_majority` is None when not judged."""

    where: str  # "validation" (online) or "held-out" (offline)
    questions: int  # distinct questions judged
    picks: int  # choices judged (a question can be sampled more than once)
    adapter_accuracy: float | None
    majority_accuracy: float | None
    wins: int  # picks the adapter got right and majority vote wrong
    losses: int  # picks majority vote got right and the adapter wrong
    beats_majority: bool | None
    summary: str  # the sentence the report, the card and the warning carry

    @property
    def margin(self) -> float | None:
        """Adapter accuracy minus majority vote's (None when not judged)."""
        if self.adapter_accuracy is None or self.majority_accuracy is None:
            return None
        return self.adapter_accuracy - self.majority_accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the margin."""
        return {**asdict(self), "margin": self.margin}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """The verdict `to_dict` wrote (a saved round's)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def judge(picks: Sequence[Pick], *, where: str, advice: str, weight: float | None = None) -> Verdict:
    """The verdict on these picks: beats, ties or is below majority vote, or not judged on too few questions."""
    needed = f"at least {MIN_JUDGED_QUESTIONS} are needed to compare the adapter's picks with majority vote"
    if not picks:
        return Verdict(where, 0, 0, None, None, 0, 0, None, f"Not judged: no {where} questions; {needed}.")
    questions = len({p.question for p in picks})
    adapter = sum(p.adapter_right for p in picks) / len(picks)
    majority = sum(p.majority_right for p in picks) / len(picks)
    wins = sum(p.adapter_right and not p.majority_right for p in picks)
    losses = sum(p.majority_right and not p.adapter_right for p in picks)
    made = partial(Verdict, where, questions, len(picks), adapter, majority, wins, losses)
    numbers = (
        f"{questions} {where} questions ({len(picks)} picks): {adapter:.0%} right against majority vote's {majority:.0%} "
        f"({adapter - majority:+.0%}; {wins} picks won, {losses} lost)"
    )
    if questions < MIN_JUDGED_QUESTIONS:
        return made(None, f"Not judged: only {numbers}; {needed}.")
    if adapter > majority:
        return made(True, f"The adapter beats majority vote on {numbers}.")
    summary = (
        f"The adapter does not beat majority vote on {numbers}: reranking with it is no better than majority vote "
        "over the same samples."
    )
    if majority == 1.0:
        summary += " Majority vote is right on every pick here, so no reranker could beat it on these questions."
    elif weight is not None and weight >= NEAR_MAJORITY_WEIGHT:
        summary += f" Its consensus weight, {weight:g}, scores close to majority vote itself, so a tie is what to expect."
    return made(False, f"{summary} To try: {advice}.")


def announce(verdict: Verdict, trainer: str) -> None:
    """One warning when the adapter does not beat majority vote; an info line otherwise."""
    if verdict.beats_majority is False:
        logger.warning("%s: %s", trainer, verdict.summary)
    else:
        logger.info("%s: %s", trainer, verdict.summary)
