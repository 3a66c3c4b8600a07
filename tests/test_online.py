"""The online rounds against the real llama.cpp server, through the SDK client (cache and call log on)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import blackbox_sdk
from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import (
    Adapter,
    AdapterConfig,
    ClientAnswerSampler,
    OnlineConfig,
    OnlineQuestion,
    Samples,
    TrainConfig,
    ai_judge,
    calibrate_consensus,
    client_answer_sampler,
    log_labels,
    online_train,
)
from blackbox_sdk.call_log import CallLog

SHOTS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
# Questions SmolLM2-135M often gets wrong (Lahore, New York City, Auckland, Sydney, Toronto), so there are negatives.
CAPITALS = {"Pakistan": "Islamabad", "United States": "Washington", "New Zealand": "Wellington", "Australia": "Canberra", "Canada": "Ottawa"}
TRAIN = [OnlineQuestion(question=f"What is the capital of {c}?", reference=f"The capital of {c} is {city}.", gold=city) for c, city in list(CAPITALS.items())[:3]]
HELD_OUT = [OnlineQuestion(question=f"What is the capital of {c}?", gold=city) for c, city in list(CAPITALS.items())[3:]]
CONFIG = OnlineConfig(
    rounds=2,
    samples=3,
    epochs_per_round=1,
    validation_fraction=0.0,
    adapter=AdapterConfig(trainable_layers=1),
    train=TrainConfig(progress=False, groups_per_batch=4, lr=1e-4, warmup_steps=1),
)


def names_the_capital(item: OnlineQuestion, answer: str) -> bool:
    """The ground-truth checker: the answer names the right city."""
    return str(item.gold).lower() in answer.lower()


class CountingSampler:
    """The real client sampler, recording which (question, round) it was asked for."""

    def __init__(self, inner: ClientAnswerSampler) -> None:
        self.inner = inner
        self.client = inner.client
        self.asked: list[tuple[str, int]] = []

    def __call__(self, question: str, k: int, round_number: int) -> Samples:
        self.asked.append((question, round_number))
        return self.inner(question, k, round_number)


@pytest.fixture
def client(llama_server: str, tmp_path: Path) -> blackbox_sdk.OpenAI:
    torch.set_num_threads(1)
    return blackbox_sdk.OpenAI(base_url=llama_server, api_key="x", cache=tmp_path / "cache", log=tmp_path / "calls.db")


def sampler_for(client: blackbox_sdk.OpenAI) -> CountingSampler:
    return CountingSampler(client_answer_sampler(client, "smollm2", messages=SHOTS, temperature=0.9, max_tokens=12, stop=["\n"]))


def test_one_round_samples_labels_trains_and_reports(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    config = replace(CONFIG, rounds=1)
    report = online_train(sampler_for(client), TRAIN, names_the_capital, tmp_path / "adapter", eval_items=HELD_OUT, config=config)
    (row,) = report.rounds
    assert row["round"] == 1 and row["samples"] == 9 and row["completion_tokens"] > 0
    assert 0.0 <= row["rerank_accuracy"] <= 1.0 and set(report.baseline) == {"single_accuracy", "oracle_accuracy"}
    assert row["groups"] >= 1 and row["accepted"] <= 9
    saved = Adapter.load(tmp_path / "adapter", device="cpu")
    assert saved.metadata["recipe"]["samples"] == 3 and "3 questions" in saved.metadata["trained_on"]
    assert {"curve.png", "online_state.json", "online_report.json", "README.md"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert not (tmp_path / "adapter" / "checkpoints").exists()
    with CallLog(tmp_path / "calls.db") as log:
        labelled = [(rec, log.feedback_for(rec.call_id)) for rec in log.calls() if log.feedback_for(rec.call_id)]
    assert len(labelled) == 3
    for rec, feedback in labelled:
        city = CAPITALS[rec.request["messages"][-1]["content"].removeprefix("What is the capital of ").removesuffix("?")]
        assert feedback[0].label == ("correct" if city.lower() in rec.candidates[rec.chosen[0]].lower() else "incorrect")
        assert feedback[0].reference is not None and city in feedback[0].reference


def test_an_interrupted_round_resumes_after_the_last_completed_one(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    first = sampler_for(client)

    def breaks_in_round_two(item: OnlineQuestion, answer: str) -> bool:
        if first.asked[-1][1] == 2:
            raise KeyboardInterrupt("power cut")
        return names_the_capital(item, answer)

    with pytest.raises(KeyboardInterrupt):
        online_train(first, TRAIN, breaks_in_round_two, out, eval_items=HELD_OUT, config=CONFIG)
    state = json.loads((out / "online_state.json").read_text())
    assert state["completed"] == 1 and len(state["rounds"]) == 1
    assert (out / "checkpoints" / "round-1" / "adapter.safetensors").is_file()

    second = sampler_for(client)
    report = online_train(second, TRAIN, names_the_capital, out, eval_items=HELD_OUT, config=CONFIG)
    assert [r["round"] for r in report.rounds] == [1, 2]
    assert report.rounds[0] == state["rounds"][0]
    assert {rnd for q, rnd in second.asked if q in {t.question for t in TRAIN}} == {2}  # round 1 was not redone
    assert report.rounds[1]["samples"] == 9
    assert not (out / "checkpoints").exists() and Adapter.load(out, device="cpu").metadata["recipe"]["rounds"] == 2
    third = sampler_for(client)
    again = online_train(third, TRAIN, names_the_capital, out, eval_items=HELD_OUT, config=CONFIG)
    assert again.rounds == report.rounds and third.asked == []  # finished: nothing more to do, nothing sampled


def test_a_state_file_of_another_run_is_refused(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "online_state.json").write_text(json.dumps({"version": 1, "fingerprint": "another run", "completed": 1}))
    with pytest.raises(AdapterError, match="another online run"):
        online_train(sampler_for(client), TRAIN, names_the_capital, out, config=CONFIG)


def test_log_labels_reads_the_feedback_that_the_rounds_wrote(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    config = replace(CONFIG, rounds=1)
    online_train(sampler_for(client), TRAIN, names_the_capital, tmp_path / "adapter", config=config)
    label = log_labels(tmp_path / "calls.db")
    with CallLog(tmp_path / "calls.db") as log:
        rec = next(r for r in log.calls() if log.feedback_for(r.call_id))
    item = next(t for t in TRAIN if t.question == rec.request["messages"][-1]["content"])
    assert label(item, item.reference or "") is True
    assert label(item, rec.candidates[rec.chosen[0]]) is names_the_capital(item, rec.candidates[rec.chosen[0]])
    assert label(item, "an answer nobody rated") is None


def test_consensus_is_chosen_on_training_questions_kept_out_of_training_one_draw_per_round(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    config = replace(CONFIG, rounds=2, validation_fraction=0.34, consensus_grid=(0.0, 3.0))
    sampler = sampler_for(client)
    report = online_train(sampler, TRAIN, names_the_capital, tmp_path / "adapter", config=config)
    assert [row["samples"] for row in report.rounds] == [6, 6]  # two questions trained on, one kept for validation
    last = report.rounds[-1]
    assert last["consensus"] in (0.0, 3.0) and 0.0 <= last["validation_accuracy"] <= 1.0
    saved = Adapter.load(tmp_path / "adapter", device="cpu")
    assert saved.config.consensus == last["consensus"]
    assert sorted(sampler.asked) == sorted((t.question, r) for t in TRAIN for r in (1, 2))  # the third too, once per round


def test_calibrate_consensus_picks_the_weight_that_is_right_most_often(fresh: Adapter) -> None:
    question = "What is the capital of Canada?"
    samples = ["The capital of Canada is Toronto."] * 5 + ["The capital of Canada is Ottawa."] * 2 + ["Montreal."]
    labels = ["Ottawa" in s for s in samples]
    raw = fresh.score_pairs([(question, s) for s in samples])
    majority_wins = raw[0] + math.log(5) > raw[5] + math.log(2)
    weight, accuracy = calibrate_consensus(fresh, [(question, samples, labels)], (0.0, 1.0))
    expected_at_1 = 0.0 if majority_wins else 1.0
    expected_at_0 = 1.0 if raw[5] > max(raw[0], raw[7]) else 0.0
    assert accuracy == max(expected_at_0, expected_at_1)
    assert weight == (1.0 if expected_at_1 >= expected_at_0 else 0.0)


@pytest.fixture(scope="module")
def fresh() -> Adapter:
    torch.set_num_threads(1)
    return Adapter.create(AdapterConfig(trainable_layers=1), seed=5, device="cpu")


def test_ai_judge_asks_the_black_box_through_the_client(client: blackbox_sdk.OpenAI, tmp_path: Path) -> None:
    judge = ai_judge(client, "smollm2")
    verdict = judge(TRAIN[0], "The capital of Pakistan is Islamabad.")
    assert isinstance(verdict, bool)
    with CallLog(tmp_path / "calls.db") as log:
        (call,) = list(log.calls())
    prompt = call.request["messages"][-1]["content"]
    assert TRAIN[0].question in prompt and "The capital of Pakistan is Islamabad." in prompt
    assert call.request["temperature"] == 0 and verdict == call.candidates[call.chosen[0]].strip().lower().startswith("yes")


def test_online_training_needs_questions(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="at least one training question"):
        online_train(lambda q, k, r: Samples([]), [], names_the_capital, tmp_path)


def test_bad_online_config_is_refused() -> None:
    with pytest.raises(AdapterError):
        OnlineConfig(rounds=0)
