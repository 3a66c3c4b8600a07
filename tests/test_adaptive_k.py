"""Adaptive K on a real llama.cpp server: sample in rounds of 1, 2, 4, 8 and stop once the pick is clear."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, CallLog, ConfigError, OpenAI
from blackbox_sdk._adaptive import CONFIDENCE_GRID, next_round, pick_share
from blackbox_sdk.adapter import Adapter, AdapterConfig
from blackbox_sdk.adapter._confidence import choose_confidence

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "Write one random word."}]
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}


def first_wins(question: str, answers: Sequence[str]) -> list[float]:
    """A decisive scorer: the first answer far ahead of the rest."""
    return [20.0] + [0.0] * (len(answers) - 1)


def undecided(question: str, answers: Sequence[str]) -> list[float]:
    """A scorer that can't tell answers apart: only agreement can make the pick clear."""
    return [0.0] * len(answers)


def ask(client: OpenAI, **kwargs: object) -> object:
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 1.5, **kwargs}
    return client.chat.completions.create(**params)


def client_for(llama_server: str, tmp_path: Path, scorer: object, **options: object) -> OpenAI:
    budget = Budget(total_usd=5.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    settings = {"reranker": scorer, "rerank_n": 8, "rerank_confidence": 0.9, "budget": budget, "log": tmp_path / "calls.db", **options}
    return OpenAI(base_url=llama_server, api_key="sk-test", **settings)


def test_the_stop_rule_doubles_until_the_pick_holds_the_share() -> None:
    assert next_round(0, 8, None, 0.9) == 1
    assert next_round(1, 8, 0.5, 0.9) == 2 and next_round(2, 8, 0.5, 0.9) == 4 and next_round(4, 8, 0.5, 0.9) == 8
    assert next_round(8, 8, 0.5, 0.9) == 0 and next_round(4, 8, 0.95, 0.9) == 0
    assert next_round(4, 6, 0.1, 0.9) == 6
    assert pick_share(["Red", "red."], [5.0, 5.0]) > 0.99  # copies of one good answer: clear
    assert pick_share(["Red", "red."], [-3.0, -3.0]) < 0.1  # all agree, but the scorer finds them poor
    assert pick_share(["a", "b"], [0.0, 0.0]) == pytest.approx(1 / 3)  # beside the unsampled answer at 0
    assert pick_share(["a"], [2.0]) == pytest.approx(1 / (1 + 2.718281828**-2))  # one answer: the sigmoid of its score
    assert pick_share(["a", "b"], [6.0, 0.0]) == pytest.approx(1 / (1 + 2 * 2.718281828 ** -6))


def test_a_clear_pick_stops_after_the_first_round_and_pays_for_one(llama_server: str, tmp_path: Path) -> None:
    client = client_for(llama_server, tmp_path, first_wins)
    completion = ask(client)
    info = completion.blackbox
    assert len(info.candidates) == 1 and info.requests == 1
    assert completion.choices[0].message.content == info.candidates[0]
    record = CallLog(tmp_path / "calls.db").get(info.call_id)
    assert record.candidates == info.candidates and record.scores == info.scores
    assert info.cost_usd == pytest.approx(client.options.budget.report().spent_usd)
    assert completion.usage.completion_tokens == record.usage["completion_tokens"] > 0


def test_an_unclear_pick_samples_up_to_rerank_n_in_rounds_each_settled(llama_server: str, tmp_path: Path) -> None:
    client = client_for(llama_server, tmp_path, undecided, rerank_confidence=1.0)
    completion = ask(client)
    info = completion.blackbox
    assert len(set(info.candidates)) > 1  # a random word at temperature 1.5: the answers differ
    assert len(info.candidates) == 8 and info.requests == 8
    report = client.options.budget.report()
    assert report.reserved_usd == 0 and report.spent_usd > 0 and info.cost_usd == pytest.approx(report.spent_usd)
    assert report.calls == 4  # rounds of 1, 1 more, 2 more and 4 more, each settled on its own
    log = CallLog(tmp_path / "calls.db")
    assert log.get(info.call_id).cost_usd == pytest.approx(report.spent_usd)
    assert log.get(info.call_id).usage["total_tokens"] == completion.usage.total_tokens


def test_stored_candidates_count_as_a_round_and_a_clear_pick_is_a_hit(llama_server: str, tmp_path: Path) -> None:
    client = client_for(llama_server, tmp_path, first_wins, cache=tmp_path / "cache")
    first = ask(client, seed=3)
    again = ask(client, seed=3)
    assert again.blackbox.cache_hit and again.blackbox.requests == 0
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.blackbox.cost_usd == 0


def test_a_refresh_keeps_the_answers_of_every_round_it_paid_for(llama_server: str, tmp_path: Path) -> None:
    """cache="refresh" replaces the bucket with the call's answers: all of its rounds', not only the last's."""
    client = client_for(llama_server, tmp_path, undecided, rerank_confidence=1.0, cache=tmp_path / "cache")
    assert len(ask(client, cache="refresh").blackbox.candidates) == 8  # rounds of 1, 1, 2 and 4
    again = ask(client).blackbox
    assert again.cache_hit and again.cached_candidates == 8 and again.requests == 0


def test_async_client_takes_the_same_rounds(llama_server: str, tmp_path: Path) -> None:
    async def run() -> object:
        async with AsyncOpenAI(base_url=llama_server, api_key="sk-test", reranker=undecided, rerank_n=4, rerank_confidence=1.0) as client:
            return await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=1.5)

    info = asyncio.run(run()).blackbox
    assert len(info.candidates) == 4 and info.requests == 4


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, True, "0.9"])
def test_a_bad_confidence_is_refused_before_anything_is_sent(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rerank_confidence"):
        OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", reranker=first_wins, rerank_confidence=bad)


class _Scored:
    """Fixed scores g per answer text, as `Adapter.score_pairs` gives them (the choice logic under test is the adapter's own)."""

    def __init__(self, g: dict[str, float]) -> None:
        self.g = g
        self.config = AdapterConfig(consensus=0.0)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [self.g[answer] for _, answer in pairs]


def test_training_keeps_the_cheapest_confidence_that_keeps_the_adapters_accuracy() -> None:
    adapter = _Scored({"right": 5.1, "wrong": 1.0, "clear": 9.0, "bad": -5.0})
    clear = ("q1", ["clear", "clear", *["bad"] * 6], [True, True, *[False] * 6])  # the first settles it
    tricky = ("q2", ["wrong", "wrong", "right", *["wrong"] * 5], [False, False, True, *[False] * 5])  # two agree, and are wrong
    confidence, report = choose_confidence(adapter, [clear, tricky] * 3)  # type: ignore[arg-type]
    # at 1 the wrong answer holds 0.731 (c <= 0.7 stops there, wrongly), at 2 its two copies 0.845 (c = 0.8, wrongly); at 4
    # the right one holds 0.947 (0.9 stops there, rightly; 0.95 and 0.99 go on to all 8): 0.9 is the cheapest that keeps every pick
    assert confidence == 0.9
    assert report["adaptive_accuracy"] == report["all_answers_accuracy"] == 1.0
    assert report["all_answers"] == 8 and report["adaptive_answers"] == (1 + 4) / 2
    assert choose_confidence(adapter, [clear] * 2)[0] == max(CONFIDENCE_GRID)  # all equally cheap: the safest


def test_auto_confidence_is_the_reranking_adapters_own(llama_server: str, tmp_path: Path) -> None:
    adapter = Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")
    adapter.save(tmp_path / "plain")
    adapter.config.confidence = 1e-9  # any pick is clear enough: one round of 1
    adapter.save(tmp_path / "eager")
    assert Adapter.load(tmp_path / "eager", device="cpu").config.confidence == 1e-9
    assert "rerank_confidence=\"auto\"` stops once the pick holds 1e-09" in (tmp_path / "eager" / "README.md").read_text()
    loaded = Adapter.load(tmp_path / "eager", device="cpu")  # an Adapter itself as the reranker: its own confidence too
    for name, scorer, expected in (("eager", str(tmp_path / "eager"), 1), ("plain", str(tmp_path / "plain"), 8), ("object", loaded, 1)):
        run = tmp_path / f"run-{name}"  # "plain": no confidence chosen, so every one of rerank_n
        run.mkdir()
        client = client_for(llama_server, run, scorer, rerank_confidence="auto")
        assert len(ask(client).blackbox.candidates) == expected


def test_the_per_call_cap_bounds_all_rounds_and_a_round_past_it_ends_the_sampling(llama_server: str, tmp_path: Path) -> None:
    # without the cap this call samples 8 answers in three rounds for about $0.33; each round alone is under $0.3
    client = client_for(llama_server, tmp_path, undecided, rerank_confidence=1.0,
                        budget=Budget(total_usd=5.0, per_call_usd=0.3, prices=PRICES, ledger=tmp_path / "ledger.db"))
    completion = ask(client)
    info = completion.blackbox
    assert 2 <= len(info.candidates) < 8  # stopped before the round the cap can't hold, and picked among those in hand
    report = client.options.budget.report()
    assert 0 < report.spent_usd <= 0.3 and report.reserved_usd == 0
    assert info.cost_usd == pytest.approx(report.spent_usd)
    record = CallLog(tmp_path / "calls.db").get(info.call_id)
    assert record.error is None and record.candidates == info.candidates and record.cost_usd == pytest.approx(report.spent_usd)
    with pytest.raises(BudgetExceededError, match="per-call"):  # a first round the cap can't hold refuses the call
        ask(client.with_options(budget=Budget(total_usd=5.0, per_call_usd=0.05, prices=PRICES, ledger=tmp_path / "ledger.db")))


def test_a_seeded_call_samples_each_round_with_new_seeds_the_answers_of_one_call_of_n(llama_server: str, tmp_path: Path) -> None:
    adaptive = ask(client_for(llama_server, tmp_path / "a", undecided, rerank_confidence=1.0), seed=11).blackbox
    whole = ask(client_for(llama_server, tmp_path / "b", undecided, rerank_confidence=None), seed=11).blackbox  # 8 at once
    assert adaptive.requests == 8 and adaptive.candidates == whole.candidates  # rounds of 1, 1, 2, 4: seeds 11..18 once each
    assert len(set(adaptive.candidates)) > 2  # not the first round's two answers again
