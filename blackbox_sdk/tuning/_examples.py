"""Labelled examples for tuning: checked (text, label) pairs and the paper's few-shot train/dev draw."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .._exceptions import TuningError

Example = tuple[str, str]  # (text, label)


def checked_examples(data: Sequence[Any], labels: Sequence[str], name: str, *, balanced: bool) -> list[Example]:
    """(text, label) pairs with non-empty texts and known labels; balanced over every label when asked."""
    if not data:
        raise TuningError(f"the {name} set is empty")
    pairs = [_checked_pair(item, labels, f"{name}[{i}]") for i, item in enumerate(data)]
    counts = {label: sum(1 for _, y in pairs if y == label) for label in labels}
    if balanced and len(set(counts.values())) != 1:
        raise TuningError(f"the {name} set is unbalanced ({counts}); use the same number of examples per label")
    return pairs


def _checked_pair(item: Any, labels: Sequence[str], where: str) -> Example:
    """One (text, label) pair of strings with a non-empty text and a known label; TuningError otherwise."""
    if not _is_pair(item):
        raise TuningError(f"{where} must be a (text, label) pair of strings, got {item!r}")
    if not item[0].strip():
        raise TuningError(f"{where} has an empty text")
    if item[1] not in labels:
        raise TuningError(f"{where} has label {item[1]!r}, not one of the verbalizer's {list(labels)}")
    return item[0], item[1]


def _is_pair(item: Any) -> bool:
    """Whether item is a (text, label) pair of strings."""
    pair = isinstance(item, Sequence) and not isinstance(item, (str, bytes)) and len(item) == 2
    return pair and isinstance(item[0], str) and isinstance(item[1], str)


def checked_texts(texts: Sequence[Any]) -> list[str]:
    """The texts to classify as a list of strings; TuningError for one str (which would be read as its characters) or a
    non-str item."""
    if isinstance(texts, (str, bytes)):
        raise TuningError(f"texts must be a list of texts, not one {type(texts).__name__}: wrap it as [text]")
    checked = list(texts)
    for i, text in enumerate(checked):
        if not isinstance(text, str):
            raise TuningError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return checked


def sample_few_shot(examples: Sequence[Example], k: int = 16, *, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Disjoint k-per-label train and dev sets drawn from a labelled pool, as the paper builds them."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TuningError(f"k must be an integer of at least 1, got {k!r}")
    by_label: dict[str, list[Example]] = {}
    for i, item in enumerate(examples):
        if not _is_pair(item):
            raise TuningError(f"pool[{i}] must be a (text, label) pair of strings, got {item!r:.80}")
        text, label = item
        by_label.setdefault(label, []).append((text, label))
    short = {label: len(items) for label, items in by_label.items() if len(items) < 2 * k}
    if short:
        raise TuningError(f"need {2 * k} examples per label for k={k}, these have fewer: {short}")
    rng = random.Random(seed)
    train: list[Example] = []
    dev: list[Example] = []
    for label in sorted(by_label):
        items = rng.sample(by_label[label], 2 * k)
        train += items[:k]
        dev += items[k:]
    return train, dev
