"""BBT on an `hf:` client: its budget and call log see every evaluation as a call, on the real SmolLM2."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

import blackbox_sdk
from blackbox_sdk.budget import Budget
from blackbox_sdk.call_log import CallLog, CallRecord
from blackbox_sdk._exceptions import BudgetExceededError, RateLimitExceededError
from blackbox_sdk.limits import RateLimits
from blackbox_sdk.tuning import BBTConfig, ClientMeter, Tuner

TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TRAIN = [
    ("A warm and funny film, I loved it.", "positive"),
    ("The battery died in an hour, awful.", "negative"),
]
DEV = [("These headphones sound amazing.", "positive"), ("The blender broke after a week.", "negative")]
TINY = {"d": 4, "prompt_len": 1, "popsize": 2, "budget": 4, "dev_every": 2, "progress": False}
MICRO_USD = 1e-6  # the price of one token below: $1 per million


@pytest.fixture(scope="module")
def model_id(gguf_path: Path) -> str:
    """The id the budget prices and the log names: the local backend's."""
    torch.set_num_threads(2)
    return str(blackbox_sdk.OpenAI(base_url=f"hf:{gguf_path}").backend.model_id)


def priced_budget(model_id: str, **caps: Any) -> Budget:
    """A budget that charges the local model $1 per million prompt tokens, with a private ledger."""
    return Budget(prices={model_id: {"input": 1.0, "output": 1.0}}, **caps)


def client_tuner(
    gguf_path: Path, *, on_calls: Any = None, config: dict[str, Any] | None = None, **client_options: Any
) -> Tuner:
    """A tiny tuner whose target is an `hf:` client with the given options (budget, log, budget_key)."""
    client = blackbox_sdk.OpenAI(base_url=f"hf:{gguf_path}", **client_options)
    return Tuner(
        client,
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        train=TRAIN,
        dev=DEV,
        config=BBTConfig(**{**TINY, **(config or {})}),
        on_calls=on_calls,
    )


def bbt_records(log: CallLog) -> list[CallRecord]:
    """The log's BBT evaluations, oldest first."""
    return list(log.calls(route="bbt"))


def settled_tokens(budget: Budget) -> tuple[int, int]:
    """(prompt, completion) tokens settled in the budget's ledger."""
    with sqlite3.connect(budget.ledger_path) as connection:
        prompt, completion = connection.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens) FROM spends").fetchone()
    return int(prompt or 0), int(completion or 0)


def test_every_evaluation_of_a_client_target_is_reserved_settled_and_logged(
    gguf_path: Path, model_id: str, tmp_path: Path
) -> None:
    budget, log = priced_budget(model_id, total_usd=1.0), CallLog(tmp_path / "calls.db")
    announced: list[tuple[int, int]] = []
    tuned = client_tuner(
        gguf_path,
        budget=budget,
        log=log,
        budget_key="tuning",
        on_calls=lambda calls, tokens: announced.append((calls, tokens)),
    )
    prompt = tuned.fit()
    tuned.evaluate(DEV, prompt)
    tuned.score_population(torch.zeros(3, TINY["d"]))

    records = bbt_records(log)
    train_tokens = sum(tuned._train.tokens_per_sequence(1))
    dev_tokens = sum(tuned._dev.tokens_per_sequence(1))
    expected = [  # two generations, each dev-evaluated; evaluate(); a population of 3
        ("train", 2, 2 * train_tokens),
        ("dev", 1, dev_tokens),
        ("train", 2, 2 * train_tokens),
        ("dev", 1, dev_tokens),
        ("evaluate", 1, dev_tokens),
        ("train", 3, 3 * train_tokens),
    ]
    assert [(r.request["kind"], r.request["calls"], r.usage["prompt_tokens"]) for r in records] == expected
    assert announced == [(calls, tokens) for _, calls, tokens in expected]
    for record in records:
        assert (record.endpoint_host, record.model, record.key, record.error) == ("local", model_id, "tuning", None)
        assert record.usage["completion_tokens"] == 0 and record.usage["total_tokens"] == record.usage["prompt_tokens"]
        assert record.usage_counted and record.cost_usd == pytest.approx(record.usage["prompt_tokens"] * MICRO_USD)
    total = sum(tokens for _, _, tokens in expected)
    assert prompt.info.scores["tokens"] == sum(tokens for _, _, tokens in expected[:4])
    assert settled_tokens(budget) == (total, 0)
    report = budget.report()
    assert report.spent_usd == pytest.approx(total * MICRO_USD)
    assert report.calls == len(records) and report.outstanding_reservations == 0
    assert report.by_key == {"tuning": pytest.approx(total * MICRO_USD)}


def counted_forwards(tuned: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the tuner's forward passes, appended as they run."""
    forwards: list[int] = []
    forward = tuned.scorer.label_logprobs

    def counted(prompts: torch.Tensor, *rest: Any) -> torch.Tensor:
        forwards.append(len(prompts))
        return forward(prompts, *rest)

    monkeypatch.setattr(tuned.scorer, "label_logprobs", counted)
    return forwards


def test_a_budget_too_small_for_the_next_generation_stops_before_its_forward(
    gguf_path: Path, model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = client_tuner(gguf_path)
    generation = 2 * sum(probe._train.tokens_per_sequence(1))
    dev = sum(probe._dev.tokens_per_sequence(1))
    budget = priced_budget(model_id, total_usd=(generation + dev + generation // 2) * MICRO_USD)
    log, checkpoints = CallLog(tmp_path / "calls.db"), {"checkpoint_dir": tmp_path / "run", "checkpoint_every": 1}
    tuned = client_tuner(gguf_path, budget=budget, log=log, config=checkpoints)
    forwards = counted_forwards(tuned, monkeypatch)
    with pytest.raises(BudgetExceededError):
        tuned.fit()

    assert forwards == [2, 1] and len(tuned.history) == 1  # one generation and its dev evaluation ran
    records = bbt_records(log)
    assert [(r.request["kind"], r.usage_counted) for r in records] == [("train", True), ("dev", True), ("train", False)]
    assert records[-1].usage is None and records[-1].error.startswith("BudgetExceededError: ")
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.reserved_usd == 0.0
    assert settled_tokens(budget) == (generation + dev, 0)

    roomier = client_tuner(gguf_path, budget=priced_budget(model_id, total_usd=1.0), log=log, config=checkpoints)
    resumed = roomier.fit()  # the checkpoint of the first generation resumes
    assert resumed.info.scores["calls"] == 4 and len(roomier.history) == 2
    assert [r.request["kind"] for r in bbt_records(log)][3:] == ["train", "dev"]


@pytest.mark.parametrize("limit", ["rpm", "tpm"])
def test_the_client_s_rate_limit_admits_each_evaluation_and_refuses_one_past_it_before_its_forward(
    gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    probe = client_tuner(gguf_path)
    generation, dev = 2 * sum(probe._train.tokens_per_sequence(1)), sum(probe._dev.tokens_per_sequence(1))
    room = {"rpm": 2, "tpm": generation + dev + generation // 2}[limit]  # a generation and its dev evaluation, not the next one
    log = CallLog(tmp_path / "calls.db")
    tuned = client_tuner(gguf_path, rate_limit=RateLimits(**{limit: room}, per="key"), log=log, budget_key="tuning")
    forwards = counted_forwards(tuned, monkeypatch)
    with pytest.raises(RateLimitExceededError, match=f"{limit}={room} per 60s reached for key"):
        tuned.fit()
    assert forwards == [2, 1]
    records = bbt_records(log)
    assert [(r.request["kind"], r.usage_counted) for r in records] == [("train", True), ("dev", True), ("train", False)]
    assert records[-1].usage is None and records[-1].error.startswith("RateLimitExceededError: ")


def test_a_forward_that_fails_releases_its_reservation_and_is_logged_as_an_error(
    gguf_path: Path, model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget, log = priced_budget(model_id, total_usd=1.0), CallLog(tmp_path / "calls.db")
    tuned = client_tuner(gguf_path, budget=budget, log=log)

    def broken(*args: Any) -> torch.Tensor:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tuned.scorer, "label_logprobs", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        tuned.evaluate(DEV, torch.zeros(1, tuned.hidden))
    [record] = bbt_records(log)
    assert record.error == "RuntimeError: out of memory" and record.usage is None and record.cost_usd == 0.0
    assert budget.report().outstanding_reservations == 0 and settled_tokens(budget) == (0, 0)


def test_a_log_without_a_budget_records_uncharged_calls(gguf_path: Path, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.db")
    tuned = client_tuner(gguf_path, log=log)
    tuned.evaluate(DEV, torch.zeros(1, tuned.hidden))
    [record] = bbt_records(log)
    assert record.usage["prompt_tokens"] == sum(tuned._dev.tokens_per_sequence(1))
    assert record.usage_counted and record.cost_usd == 0.0  # counted by the SDK (a local model reports no usage), charged nowhere


def test_targets_without_a_budget_or_log_are_not_metered(gguf_path: Path) -> None:
    client = blackbox_sdk.OpenAI(base_url=f"hf:{gguf_path}")
    assert ClientMeter.of(client) is None and ClientMeter.of(client.backend) is None
    assert client_tuner(gguf_path).meter is None
