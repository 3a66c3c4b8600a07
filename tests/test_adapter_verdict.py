"""The verdict against majority vote: majority vote's pick, the judgement on hand-made picks and on a
real adapter's, and what online_train and train_from_log (and `adapter train`) say when the adapter
does or does not beat majority vote."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from blackbox_sdk.adapter import (
    Adapter,
    AdapterConfig,
    OnlineConfig,
    OnlineQuestion,
    Samples,
    TrainConfig,
    calibrate_consensus,
    cli_main,
    online_train,
    train_from_log,
)
from blackbox_sdk.adapter._picks import calibrate_and_judge
from blackbox_sdk.adapter._verdict import MIN_JUDGED_QUESTIONS, ONLINE_ADVICE, Pick, Verdict, judge, majority_pick
from blackbox_sdk.call_log import CallLog, CallRecord
from test_adapter_training import CAPITALS as TRAINING_CAPITALS

CAPITALS = dict(list(TRAINING_CAPITALS.items())[:20])  # twenty countries the training tests use too
COUNTRIES = sorted(CAPITALS)


def _right(country: str) -> str:
    return f"The capital of {country} is {CAPITALS[country]}."


def _wrong(country: str, shift: int = 3) -> str:
    return f"The capital of {country} is {CAPITALS[COUNTRIES[(COUNTRIES.index(country) + shift) % len(COUNTRIES)]]}."


@pytest.fixture(scope="module")
def fresh() -> Adapter:
    torch.set_num_threads(1)
    return Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param(["Lyon", "Paris.", " paris", "PARIS!"], 1, id="copies-counted-up-to-normalisation"),
        pytest.param(["Lyon", "Paris", "paris.", "Lyon."], 0, id="tie-to-the-first-sampled"),
        pytest.param(["Rome"], 0, id="one-answer"),
    ],
)
def test_majority_pick_takes_the_most_copied_answer_ties_to_the_first(answers: list[str], expected: int) -> None:
    assert majority_pick(answers) == expected


def _picks(rows: list[tuple[bool, bool]], questions: int | None = None) -> list[Pick]:
    return [Pick(f"q{i % (questions or len(rows))}", adapter, majority) for i, (adapter, majority) in enumerate(rows)]


def test_judge_says_beats_ties_below_or_not_judged() -> None:
    beats = judge(_picks([(True, False), (True, True), (False, False), (True, True), (True, False), (False, True)]), where="validation", advice="x")
    assert beats.beats_majority is True and (beats.wins, beats.losses) == (2, 1)
    assert beats.adapter_accuracy == pytest.approx(4 / 6) and beats.majority_accuracy == pytest.approx(3 / 6)
    assert beats.margin == pytest.approx(1 / 6) and beats.summary.startswith("The adapter beats majority vote on 6 validation questions")

    tie = judge(_picks([(True, False), (False, True), (True, True), (False, False), (True, True)]), where="validation", advice=ONLINE_ADVICE, weight=4.0)
    assert tie.beats_majority is False and tie.margin == 0 and (tie.wins, tie.losses) == (1, 1)
    assert "does not beat majority vote" in tie.summary and "no better than majority vote" in tie.summary
    assert "consensus weight, 4, scores close to majority vote" in tie.summary and "AdapterConfig(base_model=...)" in tie.summary

    below = judge(_picks([(False, True)] * 6), where="held-out", advice="x", weight=1.0)
    assert below.beats_majority is False and below.margin == -1 and "consensus weight" not in below.summary

    few = judge(_picks([(True, False)] * 8, questions=MIN_JUDGED_QUESTIONS - 1), where="held-out", advice="x")
    assert few.beats_majority is None and few.questions == 4 and few.picks == 8 and few.summary.startswith("Not judged: only 4 held-out questions")
    none = judge([], where="validation", advice="x")
    assert none.beats_majority is None and none.adapter_accuracy is None and none.summary.startswith("Not judged: no validation questions")
    assert Verdict.from_dict(json.loads(json.dumps(tie.to_dict()))) == tie


def test_a_real_adapters_picks_are_judged_against_majority_vote_on_the_same_samples(fresh: Adapter) -> None:
    """Majority vote is right on every draw here, so nothing the adapter picks can beat it."""
    validation = []
    for country in COUNTRIES[:6]:
        answers = [_wrong(country), _right(country), _wrong(country, 5), _right(country), _right(country)]
        validation.append((f"What is the capital of {country}?", answers, [a == _right(country) for a in answers]))
    grid = (0.0, 1.0)
    weight, accuracy, verdict = calibrate_and_judge(fresh, validation, grid)
    assert (weight, accuracy) == calibrate_consensus(fresh, validation, grid)
    expected_right = []
    for question, answers, labels in validation:
        raw = fresh.score_pairs([(question, a) for a in answers])
        copies = [3 if label else 1 for label in labels]
        expected_right.append(labels[max(range(len(answers)), key=lambda i: raw[i] + weight * math.log(copies[i]))])
    assert verdict.majority_accuracy == 1.0 and verdict.adapter_accuracy == pytest.approx(sum(expected_right) / 6)
    assert verdict.beats_majority is False and verdict.wins == 0 and verdict.losses == 6 - sum(expected_right)


class FixedSampler:
    """The user's sampler as an in-process function: for each question, fixed answers in a fixed order."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    def __call__(self, question: str, k: int, round_number: int) -> Samples:
        return Samples(self.answers[question][:k], prompt_tokens=10, completion_tokens=5 * k)


def names_the_capital(item: OnlineQuestion, answer: str) -> bool:
    return str(item.gold) in answer


def _online(tmp_path: Path, answers_for: object) -> tuple[object, Path]:
    countries = COUNTRIES[:12]
    items = [OnlineQuestion(question=f"What is the capital of {c}?", reference=_right(c), gold=CAPITALS[c]) for c in countries[:10]]
    held = [OnlineQuestion(question=f"What is the capital of {c}?", gold=CAPITALS[c]) for c in countries[10:]]
    sampler = FixedSampler({f"What is the capital of {c}?": answers_for(c) for c in countries})  # type: ignore[operator]
    config = OnlineConfig(
        rounds=1, samples=8, epochs_per_round=2, validation_fraction=0.5, adapter=AdapterConfig(trainable_layers=1),
        train=TrainConfig(progress=False, groups_per_batch=4, lr=1e-4, warmup_steps=1),
    )  # fmt: skip
    torch.set_num_threads(1)
    out = tmp_path / "adapter"
    return online_train(sampler, items, names_the_capital, out, eval_items=held, config=config, device="cpu"), out


def test_online_train_says_when_the_adapter_cannot_beat_majority_vote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="blackbox_sdk")
    report, out = _online(tmp_path, lambda c: [_right(c)] * 5 + [_wrong(c, s) for s in (1, 2, 3)])
    verdict = report.verdict  # type: ignore[attr-defined]
    assert verdict.beats_majority is False and verdict.majority_accuracy == 1.0 and verdict.questions == 5
    row = report.rounds[-1]  # type: ignore[attr-defined]
    assert row["validation_majority_accuracy"] == 1.0 and row["validation_accuracy"] == verdict.adapter_accuracy
    assert row["majority_accuracy"] == 1.0 and 0.0 <= row["rerank_accuracy"] <= 1.0  # the held-out questions too
    saved = json.loads((out / "online_report.json").read_text())["verdict"]
    assert saved["beats_majority"] is False and saved["summary"] == verdict.summary
    card = (out / "README.md").read_text()
    assert "## Verdict" in card and "The adapter does not beat majority vote on 5 validation questions" in card
    loaded = Adapter.load(out, device="cpu")
    assert loaded.metadata["verdict"]["beats_majority"] is False
    assert loaded.config.confidence == row["adaptive_confidence"] and row["adaptive_answers"] <= row["all_answers"] == 8
    assert row["adaptive_accuracy"] >= row["all_answers_accuracy"] - 0.01 and "Adaptive K:" in card
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "blackbox_sdk"]
    assert len(warnings) == 1 and "no better than majority vote" in warnings[0].getMessage()
    assert "more training questions" in warnings[0].getMessage() and "base_model" in warnings[0].getMessage()


def test_online_train_says_when_the_adapter_beats_majority_vote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The right answer is always the minority, and its text tells it apart: majority vote is never right."""
    caplog.set_level(logging.INFO, logger="blackbox_sdk")
    report, out = _online(tmp_path, lambda c: ["I don't know."] * 5 + [_right(c)] * 2 + ["Banana."])
    verdict = report.verdict  # type: ignore[attr-defined]
    assert verdict.majority_accuracy == 0.0 and verdict.adapter_accuracy > 0.0
    assert verdict.beats_majority is True and verdict.wins > 0 and verdict.losses == 0
    assert report.rounds[-1]["validation_majority_accuracy"] == 0.0  # type: ignore[attr-defined]
    card = (out / "README.md").read_text()
    assert "The adapter beats majority vote on 5 validation questions" in card and "does not beat" not in card
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _write_log(path: Path, countries: list[str]) -> None:
    """A real call log: three candidates per call, the right answer twice (majority vote is right), labelled by feedback."""
    with CallLog(path) as log:
        for i, country in enumerate(countries):
            request = {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}]}
            rec = CallRecord(endpoint_host="127.0.0.1", model="m", route="chat.completions", request=request,
                             candidates=[_wrong(country), _right(country), _right(country)], chosen=[0])  # fmt: skip
            log.record(rec)
            if i % 2:
                log.feedback(rec.call_id, preferred=1)
            else:
                log.feedback(rec.call_id, label="incorrect", reference=_right(country))


def test_train_from_log_judges_the_held_out_questions_against_majority_vote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.set_num_threads(1)
    _write_log(tmp_path / "calls.db", COUNTRIES)
    config = TrainConfig(epochs=1, lr=1e-4, groups_per_batch=4, eval_fraction=0.5, progress=False)
    out = tmp_path / "adapter"
    report = train_from_log(tmp_path / "calls.db", out, adapter_config=AdapterConfig(trainable_layers=1), train_config=config, device="cpu")
    verdict = report["verdict"]
    assert verdict["questions"] == 10 and verdict["picks"] == 10 and verdict["majority_accuracy"] == 1.0
    assert verdict["beats_majority"] is False and verdict["wins"] == 0
    assert json.loads((out / "metrics.json").read_text())["verdict"] == verdict
    card = (out / "README.md").read_text()
    assert "## Verdict" in card and "The adapter does not beat majority vote on 10 held-out questions" in card
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "blackbox_sdk"]
    assert len(warnings) == 1 and "train_from_log" in warnings[0] and "no better than majority vote" in warnings[0]


def test_adapter_train_prints_the_verdict_and_does_not_invent_one_from_few_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_log(tmp_path / "calls.db", COUNTRIES[:8])
    argv = ["--log", str(tmp_path / "calls.db"), "--out", str(tmp_path / "cli"), "--epochs", "0", "--trainable-layers", "0", "--no-progress", "--device", "cpu"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr()
    verdict = json.loads(printed.out)["verdict"]
    assert verdict["beats_majority"] is None and verdict["questions"] == 2  # a fifth of 8 questions held out
    assert "verdict: Not judged: only 2 held-out questions" in printed.err
    assert "Not judged: only 2 held-out questions" in (tmp_path / "cli" / "README.md").read_text()
