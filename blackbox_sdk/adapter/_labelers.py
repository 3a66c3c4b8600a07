"""Labelers for the online rounds: judge a sampled answer correct, wrong, or leave it unlabeled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._feedback import judgements, read_log
from ._online_config import OnlineQuestion

Labeler = Callable[[OnlineQuestion, str], "bool | None"]  # (question, answer) -> correct? None = no label


def ai_judge(client: Any, model: str, *, instructions: str = "Reply with yes or no only.") -> Labeler:
    """A labeler that asks a model (through the same client) whether an answer is correct."""

    def judge(item: OnlineQuestion, answer: str) -> bool:
        """True when the judging model answers yes."""
        reference = f"\nA correct answer: {item.reference}" if item.reference else ""
        prompt = f"Question: {item.question}{reference}\nProposed answer: {answer}\nIs the proposed answer correct? {instructions}"
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=3)
        return (response.choices[0].message.content or "").strip().lower().startswith("yes")

    return judge


def log_labels(log_path: str | Path, *, high_reward: float = 0.5, low_reward: float = 0.0) -> Labeler:
    """A labeler from the call log's feedback: good, bad, or None for answers never judged."""
    good: set[tuple[str, str]] = set()
    bad: set[tuple[str, str]] = set()
    for record in read_log(log_path):
        messages = (record.get("request") or {}).get("messages") or []
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1], str):
            continue
        pos, neg = judgements(record, high_reward, low_reward)
        good.update((users[-1], a.strip()) for a in pos)
        bad.update((users[-1], a.strip()) for a in neg)

    def label(item: OnlineQuestion, answer: str) -> bool | None:
        """The logged verdict on this answer to this question, None when there is none."""
        key = (item.question, answer.strip())
        return True if key in good else False if key in bad else None

    return label
