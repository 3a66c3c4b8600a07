"""The adapter benchmark's task suite and statistics: splits that never leak, checkers that accept references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import run
from bench_adapter import gap_interval, gap_recovered, merge_rows
from tasks.suite import TASKS, folds, split


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_every_reference_answer_passes_its_own_checker(task) -> None:
    failing = [i.reference for i in task.items if not task.check(i, i.reference)]
    assert not failing, failing[:5]


def test_capitals_held_out_questions_all_come_from_the_first_table() -> None:
    capitals = next(t for t in TASKS if t.name == "capitals")
    first_table = json.loads((ROOT / "benchmarks" / "tasks" / "capitals.json").read_text())["capitals"]
    _, held = split(capitals, 0, 40)
    assert len(capitals.items) == 193
    assert all(i.question.removeprefix("What is the capital of ").removesuffix("?") in first_table for i in held)


@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_folds_hold_out_every_question_once_and_never_train_on_it(task) -> None:
    blocks = folds(task, 180, 40)
    held_out = [i.question for _, held in blocks for i in held]
    assert sorted(held_out) == sorted(i.question for i in task.items)
    for train, held in blocks:
        assert not {i.question for i in train} & {i.question for i in held}
        assert len(train) == min(180, len(task.items) - len(held))
    first_train, first_held = split(task, min(180, len(task.items) - 40), 40)
    assert blocks[0] == (first_train, first_held)


def test_gap_recovered_and_its_interval_follow_the_adapter_between_single_and_oracle() -> None:
    single, oracle = [0.0, 0.5, 0.25, 0.0], [1.0, 1.0, 1.0, 0.0]
    halfway = {"single": single, "oracle": oracle, "adapter": [0.5, 0.75, 0.625, 0.0]}
    assert gap_recovered(halfway) == pytest.approx(0.5)
    assert gap_interval(halfway) == pytest.approx((0.5, 0.5))
    mixed = {"single": single, "oracle": oracle, "adapter": [1.0, 0.5, 0.25, 0.0]}
    low, high = gap_interval(mixed)
    assert low < gap_recovered(mixed) < high


def test_a_run_of_one_task_replaces_its_rows_and_keeps_the_other_tasks_rows_in_suite_order() -> None:
    earlier = [{"task": t.name, "method": "single", "run": 1} for t in TASKS]
    new = [{"task": "capitals", "method": "single", "run": 2}, {"task": "capitals", "method": "oracle", "run": 2}]
    merged = merge_rows(earlier, new)
    assert [(r["task"], r["run"]) for r in merged] == [("arithmetic", 1), ("capitals", 2), ("capitals", 2), ("comparison", 1)]
    assert merge_rows([], new) == new


@pytest.mark.parametrize(("kind", "task"), [("adapter", "nope"), ("adapter_cv", "comparison"), ("bbt", "arithmetic")])
def test_run_refuses_a_task_that_the_kind_does_not_have_before_running_anything(kind: str, task: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        run.main([kind, "--task", task])
    assert exited.value.code == 2
    assert f"{kind} has no task {task}" in capsys.readouterr().err
