"""The adapter benchmark's task suite and statistics: splits that never leak, checkers that accept references."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import run
from bench_adapter import gap_interval, gap_recovered, merge_rows
from tasks import suite
from tasks.suite import FAMILIES, KIND, TASKS, Item, Task, folds, split


@pytest.mark.parametrize("task", FAMILIES, ids=[t.name for t in FAMILIES])
def test_every_reference_answer_passes_its_own_checker(task) -> None:
    failing = [i.reference for i in task.items if not task.check(i, i.reference)]
    assert not failing, failing[:5]


def test_capitals_held_out_questions_all_come_from_the_first_table() -> None:
    capitals = next(t for t in TASKS if t.name == "capitals")
    first_table = json.loads((ROOT / "benchmarks" / "tasks" / "capitals.json").read_text())["capitals"]
    _, held = split(capitals, 0, 40)
    assert len(capitals.items) == 193
    assert all(i.question.removeprefix("What is the capital of ").removesuffix("?") in first_table for i in held)


@pytest.mark.parametrize("task", FAMILIES, ids=[t.name for t in FAMILIES])
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


NEW_FAMILIES = FAMILIES[len(TASKS) :]

# The three shipped tasks as they were when the five families were added (issue 18): their
# counts, first five items and a digest of all items and shots. The shipped adapters and their
# benchmark tables were made on exactly these, so any change to them must fail here.
ORIGINAL = {
    "arithmetic": (223, "775205b2b256e8b302841fc04f63c12509d169dcb73c19f8f913deb6e99aeb4e", [
        ("What is 11 plus 11?", ("22",), "11 plus 11 is 22."),
        ("What is 4 plus 13?", ("17",), "4 plus 13 is 17."),
        ("What is 5 plus 13?", ("18",), "5 plus 13 is 18."),
        ("What is 7 plus 8?", ("15",), "7 plus 8 is 15."),
        ("What is 5 plus 15?", ("20",), "5 plus 15 is 20."),
    ]),
    "capitals": (193, "289a336037b18a87087f9592ee4d9603540574240ed94d420c5ea966a2935d1d", [
        ("What is the capital of Qatar?", ("Doha",), "The capital of Qatar is Doha."),
        ("What is the capital of Canada?", ("Ottawa",), "The capital of Canada is Ottawa."),
        ("What is the capital of Bhutan?", ("Thimphu",), "The capital of Bhutan is Thimphu."),
        ("What is the capital of Turkey?", ("Ankara",), "The capital of Turkey is Ankara."),
        ("What is the capital of Turkmenistan?", ("Ashgabat",), "The capital of Turkmenistan is Ashgabat."),
    ]),
    "comparison": (400, "210ebf7a6627e6303349b8c570f4032f2b0d4a74522ec97c88cc91016595a055", [
        ("Which number is larger, 43 or 84?", ("84",), "84 is larger."),
        ("Which number is larger, 64 or 72?", ("72",), "72 is larger."),
        ("Which number is larger, 29 or 69?", ("69",), "69 is larger."),
        ("Which number is larger, 30 or 96?", ("96",), "96 is larger."),
        ("Which number is larger, 98 or 88?", ("98",), "98 is larger."),
    ]),
}


def test_the_three_shipped_tasks_are_unchanged_and_lead_the_families() -> None:
    assert [t.name for t in TASKS] == list(ORIGINAL)
    for task in TASKS:
        count, digest, first = ORIGINAL[task.name]
        blob = json.dumps([[i.question, list(i.gold), i.reference] for i in task.items] + [list(s) for s in task.shots])
        assert (len(task.items), [(i.question, i.gold, i.reference) for i in task.items[:5]]) == (count, first)
        assert hashlib.sha256(blob.encode()).hexdigest() == digest, task.name
    assert FAMILIES[: len(TASKS)] == TASKS


def test_eight_families_each_of_its_own_kind_and_the_face_sorted() -> None:
    assert [t.name for t in FAMILIES] == list(KIND)
    assert list(KIND.values()) == ["arithmetic", "knowledge", "comparison", "word relations", "unit conversion", "reasoning", "format following", "yes/no facts"]
    # isort's order (ruff RUF022): constants, then classes, then functions, each alphabetical
    assert suite.__all__ == sorted(suite.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert set(suite.__all__) == {"FAMILIES", "KIND", "TASKS", "Item", "Task", "folds", "split"}


@pytest.mark.parametrize("task", NEW_FAMILIES, ids=[t.name for t in NEW_FAMILIES])
def test_a_new_family_has_220_distinct_questions_and_splits_that_share_none(task: Task) -> None:
    questions = [i.question for i in task.items]
    assert len(set(questions)) == len(questions) >= 220
    assert len(task.shots) == 2 and not {q for q, _ in task.shots} & set(questions)
    for train_size in (180, 30):
        train, held = split(task, train_size, 40)
        assert (len(train), len(held)) == (train_size, 40)
        assert not {i.question for i in train} & {i.question for i in held}


def _subject(task: Task, item: Item) -> str:
    """What a question is about: twins (a word pair, a word, a country) share it."""
    if task.name == "opposites":
        return "/".join(sorted([item.question.removeprefix("What is the opposite of ").removesuffix("?"), item.gold[0]]))
    if task.name == "letters":
        return item.question.split("'")[1]
    return item.question.split(" the capital of ")[1].removesuffix("?")


@pytest.mark.parametrize("name", ["opposites", "letters", "capital_facts"])
def test_twin_questions_never_straddle_train_and_held_out(name: str) -> None:
    task = next(t for t in FAMILIES if t.name == name)
    subjects = [_subject(task, i) for i in task.items]
    assert all(subjects[k] == subjects[k + 1] for k in range(0, len(subjects), 2))
    for train, held in [split(task, 180, 40), split(task, 30, 40), *folds(task, 180, 40)]:
        assert not {_subject(task, i) for i in train} & {_subject(task, i) for i in held}


def _wrong(task: Task, item: Item) -> str:
    """The item's reference with its answer swapped for another item's (the same form, a wrong answer)."""
    if task.name == "capital_facts":
        return ("No, " + item.reference.removeprefix("Yes, ")) if item.gold[0] == "yes" else "Yes, " + item.reference.removeprefix("No, ")
    accepted = {g.casefold() for g in item.gold}
    other = next(i.gold[0] for i in task.items if i.gold[0].casefold() not in accepted)
    head, _, tail = item.reference.rpartition(item.gold[0])
    return head + other + tail


@pytest.mark.parametrize("task", FAMILIES, ids=[t.name for t in FAMILIES])
def test_a_wrong_answer_in_the_references_form_fails_the_checker(task: Task) -> None:
    passing = [_wrong(task, i) for i in task.items if task.check(i, _wrong(task, i))]
    assert not passing, passing[:5]


EXTRACTED = [
    ("arithmetic", "The answer is 12.", "12"),
    ("arithmetic", "12", "12"),
    ("opposites", "The opposite of hot is cold.", "cold"),
    ("opposites", "The opposite of 'hot' is 'cold'.", "cold"),
    ("opposites", "The answer is cold.", "cold"),
    ("opposites", "Cold.", "Cold"),
    ("units", "7 meters is 700 centimeters.", "700"),
    ("units", "There are 700 centimeters in 7 meters.", "700"),
    ("units", "The answer is 7,000.", "7000"),
    ("units", "There are 60 minutes in an hour, so 3 hours is 180 minutes.", "180"),
    ("units", "700", "700"),
    ("word_problems", "4 + 7 = 11. The answer is 11.", "11"),
    ("word_problems", "The answer is: 11", "11"),
    ("word_problems", "He has 11 apples now.", "11"),
    ("word_problems", "11", "11"),
    ("letters", "The first letter of 'garden' is g.", "g"),
    ("letters", "The last letter of 'garden' is 'n'.", "n"),
    ("letters", "The answer is the letter G.", "G"),
    ("letters", "g", "g"),
    ("letters", "The first letter of 'garden' is garden.", None),
    ("capital_facts", "Yes, Nairobi is the capital of Kenya.", "Yes"),
    ("capital_facts", "Yes.", "Yes"),
    ("capital_facts", "No, it is not.", "No"),
    ("capital_facts", "The answer is no.", "no"),
    ("capital_facts", "Nairobi is not the capital of Kenya.", None),
]


@pytest.mark.parametrize(("name", "response", "answer"), EXTRACTED)
def test_the_extractor_reads_the_shots_form_and_its_usual_variants(name: str, response: str, answer: str | None) -> None:
    task = next(t for t in FAMILIES if t.name == name)
    assert task.extract(response) == answer
    for _, shot_answer in task.shots:
        shot = task.extract(shot_answer)
        assert shot is not None and shot.casefold() in re.findall(r"[\w-]+", shot_answer.casefold()), (shot_answer, shot)


def test_a_check_ignores_case_and_trailing_punctuation_but_not_the_answer() -> None:
    letters, facts = (next(t for t in FAMILIES if t.name == n) for n in ("letters", "capital_facts"))
    garden = Item("What is the first letter of the word 'garden'?", ("g",), "The first letter of 'garden' is g.")
    assert letters.check(garden, "The first letter of 'garden' is G!") and not letters.check(garden, "The first letter of 'garden' is d.")
    true = next(i for i in facts.items if i.gold == ("yes",))
    assert facts.check(true, "YES.") and not facts.check(true, "No.") and not facts.check(true, "I am not sure.")


def test_main_writes_every_familys_default_splits(tmp_path: Path) -> None:
    assert suite.main([str(tmp_path)]) == 0
    for task in FAMILIES:
        train = (tmp_path / f"{task.name}.train.jsonl").read_text().splitlines()
        held = (tmp_path / f"{task.name}.held_out.jsonl").read_text().splitlines()
        assert (len(train), len(held)) == (60, 40)
        assert json.loads(held[0])["question"] == task.items[0].question
    assert len(list(tmp_path.iterdir())) == 2 * len(FAMILIES)
    assert not re.search(r"\s$", (tmp_path / "units.train.jsonl").read_text().rstrip("\n"))


def test_the_feedback_loop_benchmark_tabulates_each_seed_and_the_pool() -> None:
    from bench_feedback_loop import pooled_row, seed_row

    def question(single: float, adapter_2: float, oracle: float, pairs: int, ordered: float) -> dict[str, float]:
        return {"first": 0.0, "single": single, "majority": 0.0, "adapter_1": 0.0, "adapter_2": adapter_2, "oracle": oracle, "pairs": pairs, "ordered_1": pairs / 2, "ordered_2": ordered}

    held = {"seed": 0, "questions": [question(0.5, 1.0, 1.0, 16, 12.0), question(0.0, 0.0, 0.0, 0, 0.0)]}
    lost = {"seed": 1, "questions": [question(0.5, 0.0, 1.0, 16, 4.0), question(0.25, 0.0, 1.0, 12, 6.5)]}
    first, second = seed_row(held), seed_row(lost)
    assert (first["single"], first["adapter_2"], first["held"], first["pairs_1"], first["pairs_2"]) == (0.25, 0.5, "yes", 0.5, 0.75)
    assert (second["held"], second["pairs_2"]) == ("no", round(10.5 / 28, 3))
    pool = pooled_row([held, lost])
    assert pool["held"] == "1/2" and pool["questions"] == 4 and pool["pairs_2"] == round(22.5 / 44, 3)
    assert pool["gap"] == round((1.0 - 1.25) / (3.0 - 1.25), 3)
