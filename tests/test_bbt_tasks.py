"""The BBT benchmark's shipped tasks: 16 per label to train and to select, splits that never leak, valid verbalizers."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from blackbox_sdk.local import load_backend
from blackbox_sdk.tuning import PromptTemplate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_bbt import TASKS, Task


def raw_rows(task: Task) -> list[dict[str, str]]:
    """The task file's rows as written."""
    return [json.loads(line) for line in (ROOT / "benchmarks" / "tasks" / f"bbt_{task.name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_train_and_dev_hold_16_per_label_and_test_the_rest(task: Task) -> None:
    for split in ("train", "dev"):
        assert Counter(label for _, label in task.split(split)) == dict.fromkeys(task.verbalizer, 16), split
    test = Counter(label for _, label in task.split("test"))
    assert set(test) == set(task.verbalizer) and min(test.values()) >= 10
    assert {row["label"] for row in raw_rows(task)} <= set(task.verbalizer)


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_no_text_and_no_shared_passage_crosses_splits(task: Task) -> None:
    texts = {split: {text for text, _ in task.split(split)} for split in ("train", "dev", "test")}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    for field in ("premise", "passage"):  # a pair's first half is shared by two rows: both in one split
        splits = {}
        for row in raw_rows(task):
            if field in row:
                assert splits.setdefault(row[field], row["split"]) == row["split"], row[field]


def test_every_template_and_verbalizer_is_valid_on_the_packaged_model(gguf_path: Path) -> None:
    tokenizer = load_backend(gguf_path).tokenizer
    held_out = [task.name for task in TASKS if task.held_out]
    assert held_out == ["questions", "nli", "yesno"]
    for task in TASKS:
        template = PromptTemplate(task.template, task.verbalizer, tokenizer, "suffix")  # raises on a bad verbalizer
        assert len(set(template.label_token_ids)) == len(task.verbalizer)
        assert "{" not in task.split("train")[0][0]  # the row's fields were all filled in
