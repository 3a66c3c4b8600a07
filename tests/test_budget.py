"""Budgets: every cap refuses with its numbers, shrink policy, settle/release, missing prices, reports."""

from __future__ import annotations

import doctest
import gc
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from blackbox_sdk import BudgetExceededError, ConfigError, PriceMissingError, ReservationNotHeldError
from blackbox_sdk import budget as budget_module
from blackbox_sdk.budget import Budget, ModelPrice, TokenCount

REPO_ROOT = Path(__file__).resolve().parents[1]
UNIT = {"input": 1.0, "cached_input": 0.25, "output": 10.0}  # USD per million tokens
PRICE = ModelPrice.model_validate(UNIT)
PRICES = {"unit": UNIT, "other": UNIT}


def budget(**options: Any) -> Budget:
    """A budget over the synthetic `unit` model with a private ledger."""
    return Budget(prices=PRICES, **options)


@pytest.mark.parametrize(
    ("options", "model", "key", "tracked"),
    [
        pytest.param({"total_usd": 0.01}, "unit", None, True, id="total"),
        pytest.param({"per_day_usd": 0.01}, "unit", None, True, id="per_day"),
        pytest.param({"per_key_usd": 0.01}, "unit", "alice", True, id="per_key"),
        pytest.param({"per_model_usd": {"unit": 0.01}}, "unit-2025-01-01", None, True, id="per_model"),
        pytest.param({"per_call_usd": 0.01}, "unit", None, False, id="per_call"),
    ],
)
def test_each_cap_refuses_with_spent_reserved_limit_and_scope(
    options: dict, model: str, key: str | None, tracked: bool
) -> None:
    scope = next(iter(options)).removesuffix("_usd")
    capped = budget(**options)
    settled = capped.reserve(model=model, prompt_tokens=100, max_output_tokens=200, key=key)
    capped.settle(settled, prompt_tokens=100, completion_tokens=100)
    held = capped.reserve(model=model, prompt_tokens=100, max_output_tokens=200, key=key)
    with pytest.raises(BudgetExceededError) as refused:
        capped.reserve(model=model, prompt_tokens=100, max_output_tokens=1000, key=key)
    error = refused.value
    assert error.scope == scope
    assert error.limit == pytest.approx(0.01)
    assert error.spent == pytest.approx(PRICE.cost_usd(100, 100) if tracked else 0.0)
    assert error.reserved == pytest.approx(held.worst_case_usd if tracked else 0.0)
    assert capped.report().outstanding_reservations == 1  # the refused call holds nothing


def test_a_refusal_under_a_cap_below_a_micro_dollar_shows_its_amounts() -> None:
    """A cap of half a micro-dollar reads as such in the refusal, not as "$0.000000"."""
    with pytest.raises(BudgetExceededError, match=r"total budget of \$0\.0000005 would be exceeded: \$0\.000000 spent") as refused:
        budget(total_usd=5e-7).reserve(model="unit", prompt_tokens=100, max_output_tokens=200)
    assert "up to $0.000000 " not in str(refused.value)


def test_worst_case_is_prompt_plus_n_times_max_output() -> None:
    reservation = budget(total_usd=1.0).reserve(model="unit", prompt_tokens=300, max_output_tokens=50, n=3)
    assert reservation.worst_case_usd == pytest.approx(PRICE.cost_usd(300, 3 * 50))
    assert (reservation.n, reservation.max_output_tokens, reservation.shrunk) == (3, 50, False)


def test_missing_max_tokens_assumes_the_default_output() -> None:
    reservation = budget(total_usd=1.0, default_max_output_tokens=700).reserve(model="unit", prompt_tokens=10)
    assert reservation.max_output_tokens == 700
    assert reservation.worst_case_usd == pytest.approx(PRICE.cost_usd(10, 700))


def test_embeddings_reserve_only_their_input() -> None:
    reservation = budget(total_usd=1.0).reserve(model="unit", prompt_tokens=5000, max_output_tokens=0)
    assert reservation.worst_case_usd == pytest.approx(PRICE.cost_usd(5000, 0))


def test_estimated_prompt_counts_are_inflated_by_the_margin() -> None:
    capped = budget(total_usd=1.0, estimate_margin=0.5)
    estimated = capped.reserve(model="unit", prompt_tokens=TokenCount(1000, "estimate", False), max_output_tokens=0)
    exact = capped.reserve(
        model="unit", prompt_tokens=TokenCount(1000, "tiktoken cl100k_base", True), max_output_tokens=0
    )
    assert (estimated.prompt_tokens, exact.prompt_tokens) == (1500, 1000)


def test_per_key_cap_holds_each_tenant_apart() -> None:
    capped = budget(per_key_usd=0.005)
    capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400, key="alice")
    with pytest.raises(BudgetExceededError, match="alice"):
        capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400, key="alice")
    assert capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400, key="bob").key == "bob"
    assert capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400).key is None


def test_budget_key_is_the_default_tenant() -> None:
    capped = budget(per_key_usd=0.005, key="team-a")
    capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400)
    with pytest.raises(BudgetExceededError) as refused:
        capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400, key="team-a")
    assert refused.value.reserved == pytest.approx(PRICE.cost_usd(0, 400))


def test_per_model_cap_covers_snapshots_but_not_other_models() -> None:
    capped = budget(per_model_usd={"unit": 0.005})
    capped.reserve(model="unit-2025-01-01", prompt_tokens=0, max_output_tokens=400)
    with pytest.raises(BudgetExceededError, match="per-model"):
        capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400)
    assert capped.reserve(model="other", prompt_tokens=0, max_output_tokens=400).model == "other"


def test_tightest_cap_is_the_one_reported() -> None:
    capped = budget(total_usd=1.0, per_call_usd=0.002)
    with pytest.raises(BudgetExceededError) as refused:
        capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=400)
    assert (refused.value.scope, refused.value.limit) == ("per_call", pytest.approx(0.002))


def test_shrink_lowers_n_before_output_tokens() -> None:
    reservation = budget(total_usd=0.01, policy="shrink").reserve(
        model="unit", prompt_tokens=100, max_output_tokens=300, n=4
    )
    largest_n = max(n for n in range(1, 5) if PRICE.cost_usd(100, n * 300) <= 0.01)
    assert (reservation.n, reservation.max_output_tokens, reservation.shrunk) == (largest_n, 300, True)
    assert largest_n < 4


def test_shrink_lowers_output_tokens_once_n_is_one() -> None:
    reservation = budget(total_usd=0.01, policy="shrink").reserve(
        model="unit", prompt_tokens=100, max_output_tokens=2000, n=2
    )
    affordable = math.floor((0.01 - PRICE.cost_usd(100, 0)) / (PRICE.output / 1e6) + 1e-9)
    assert (reservation.n, reservation.max_output_tokens) == (1, affordable)
    assert reservation.worst_case_usd <= 0.01


def test_shrink_counts_held_reservations() -> None:
    capped = budget(total_usd=0.01, policy="shrink")
    held = capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=600)
    shrunk = capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=600)
    assert shrunk.max_output_tokens == round((0.01 - held.worst_case_usd) / (PRICE.output / 1e6))


def test_shrink_refuses_below_the_output_floor() -> None:
    capped = budget(total_usd=0.0002, policy="shrink", min_output_tokens=16)
    assert PRICE.cost_usd(100, 16) > 0.0002
    with pytest.raises(BudgetExceededError, match="shrinking"):
        capped.reserve(model="unit", prompt_tokens=100, max_output_tokens=500)


def test_shrink_with_a_vanishing_output_price_refuses_or_fits_without_overflow() -> None:
    """An output price so small that the affordable tokens divide out to infinity (a subnormal float)."""
    tiny = Budget(prices={"m": {"input": 1.0, "output": 1e-310}}, total_usd=1.0, policy="shrink")
    with pytest.raises(BudgetExceededError, match="shrinking"):  # was OverflowError: the prompt alone is over the cap
        tiny.reserve(model="m", prompt_tokens=2_000_000, max_output_tokens=100)
    assert tiny.reserve(model="m", prompt_tokens=10, max_output_tokens=100).max_output_tokens == 100


def test_raise_policy_never_shrinks() -> None:
    with pytest.raises(BudgetExceededError):
        budget(total_usd=0.01).reserve(model="unit", prompt_tokens=100, max_output_tokens=300, n=4)


def test_settle_records_real_cost_and_frees_the_rest() -> None:
    capped = budget(total_usd=0.015)
    reservation = capped.reserve(model="unit", prompt_tokens=100, max_output_tokens=1000)
    with pytest.raises(BudgetExceededError):
        capped.reserve(model="unit", prompt_tokens=100, max_output_tokens=1000)
    cost = capped.settle(reservation, prompt_tokens=100, completion_tokens=50)
    assert cost == pytest.approx(PRICE.cost_usd(100, 50))
    report = capped.report()
    assert (report.spent_usd, report.reserved_usd, report.outstanding_reservations) == (pytest.approx(cost), 0.0, 0)
    assert capped.reserve(model="unit", prompt_tokens=100, max_output_tokens=1000).n == 1


def test_a_call_past_its_reservation_is_warned_about_with_what_it_used_and_what_was_held(caplog: pytest.LogCaptureFixture) -> None:
    """An exact prompt and an output past its cap (a server that ignored it): the warning names the tokens, not an
    estimated prompt count that was never made."""
    tracked = budget(total_usd=1.0)
    reservation = tracked.reserve(model="unit", prompt_tokens=TokenCount(100, "token ids", True), max_output_tokens=0, n=1)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        tracked.settle(reservation, prompt_tokens=100, completion_tokens=180)
    warned = [r.getMessage() for r in caplog.records if "more than its reservation" in r.getMessage()]
    assert len(warned) == 1 and "estimate" not in warned[0]
    assert "used 100 prompt and 180 completion tokens, 100 prompt and 0 output tokens for each of 1 choice(s)" in warned[0]


def test_settle_bills_cached_tokens_at_the_cached_rate() -> None:
    capped = budget(total_usd=1.0)
    reservation = capped.reserve(model="unit", prompt_tokens=1000, max_output_tokens=10)
    cost = capped.settle(reservation, prompt_tokens=1000, completion_tokens=10, cached_tokens=800)
    assert cost == pytest.approx(PRICE.cost_usd(1000, 10, cached_tokens=800))
    assert cost < PRICE.cost_usd(1000, 10)


def test_release_on_error_gives_the_reservation_back() -> None:
    capped = budget(total_usd=0.01)
    failed = capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    with pytest.raises(BudgetExceededError):
        capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    capped.release(failed)
    capped.release(failed)  # releasing twice is harmless
    assert capped.reserve(model="unit", prompt_tokens=0, max_output_tokens=800).worst_case_usd > 0
    assert capped.spent() == 0.0


def test_settling_a_settled_reservation_is_refused_and_a_released_one_is_charged() -> None:
    capped = budget(total_usd=1.0)
    settled = capped.reserve(model="unit", prompt_tokens=1, max_output_tokens=1)
    capped.settle(settled, prompt_tokens=1, completion_tokens=1)
    with pytest.raises(ReservationNotHeldError, match="already settled") as raised:
        capped.settle(settled, prompt_tokens=1, completion_tokens=1)
    assert isinstance(raised.value, ConfigError)  # what it was before: callers catching ConfigError still do
    released = capped.reserve(model="unit", prompt_tokens=1, max_output_tokens=1)
    capped.release(released)
    assert capped.settle(released, prompt_tokens=1, completion_tokens=1) > 0  # its answer was paid: charged all the same
    assert capped.report().calls == 2


def test_settle_refuses_more_cached_than_prompt_tokens() -> None:
    capped = budget(total_usd=1.0)
    reservation = capped.reserve(model="unit", prompt_tokens=10, max_output_tokens=1)
    with pytest.raises(ConfigError, match="cached_tokens"):
        capped.settle(reservation, prompt_tokens=10, completion_tokens=1, cached_tokens=11)


def test_unpriced_model_under_a_cap_says_how_to_price_it() -> None:
    with pytest.raises(PriceMissingError) as refused:
        Budget(total_usd=1.0).reserve(model="my-model", prompt_tokens=10)
    message = str(refused.value)
    assert "Budget(prices={'my-model': {'input': 1.0, 'output': 2.0}})" in message
    assert "prices_file" in message


def test_unpriced_model_without_a_cap_is_recorded_at_zero() -> None:
    tracker = Budget(per_model_usd={"gpt-4o": 1.0})
    reservation = tracker.reserve(model="my-model", prompt_tokens=10)
    assert tracker.settle(reservation, prompt_tokens=10, completion_tokens=10) == 0.0
    assert tracker.report().calls == 1


def test_local_model_under_a_cap_costs_nothing() -> None:
    capped = Budget(total_usd=0.001)
    reservation = capped.reserve(model="smollm2", prompt_tokens=10_000, max_output_tokens=10_000, local=True)
    assert capped.settle(reservation, prompt_tokens=10_000, completion_tokens=10_000) == 0.0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"total_usd": 0.0}, "total_usd"),
        ({"per_call_usd": -1.0}, "per_call_usd"),
        ({"per_day_usd": 0}, "per_day_usd"),
        ({"per_key_usd": -0.5}, "per_key_usd"),
        ({"per_model_usd": {"gpt-4o": 0.0}}, "per_model_usd.gpt-4o"),
        ({"policy": "maybe"}, "policy"),
        ({"default_max_output_tokens": 0}, "default_max_output_tokens"),
        ({"key": ""}, "key"),
        ({"totl_usd": 1.0}, "totl_usd: not a Budget option"),
        ({"lease_s": 0}, "lease_s"),
        ({"ledger_prefix": ""}, "ledger_prefix"),
        ({"prices": {"m": {"input": -1.0, "output": 1.0}}}, "prices.m.input"),
        ({"total_usd": math.inf}, "total_usd"),
        ({"per_model_usd": {"gpt-4o": math.inf}}, "per_model_usd.gpt-4o"),
        ({"per_day_usd": 1e300}, "per_day_usd"),
        ({"estimate_margin": math.inf}, "estimate_margin"),
        ({"lease_s": math.inf}, "lease_s"),
        ({"prices": {"m": {"input": math.inf, "output": 1.0}}}, "prices.m.input"),
    ],
    ids=[
        "total", "per_call", "per_day", "per_key", "per_model", "policy", "default_output", "key", "typo", "lease",
        "prefix", "prices", "infinite-total", "infinite-per-model", "huge-per-day", "infinite-margin", "infinite-lease",
        "infinite-price",
    ],
)
def test_bad_options_are_a_config_error_naming_the_field(options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match="invalid Budget") as refused:
        Budget(**options)
    assert field in str(refused.value)
    assert not isinstance(refused.value, pydantic.ValidationError)


def test_a_key_passed_as_an_unknown_option_is_not_echoed() -> None:
    secret = "sk-" + "a1" * 20
    with pytest.raises(ConfigError, match="api_key: not a Budget option") as refused:
        Budget(api_key=secret)
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    "arguments",
    [
        {"n": 0}, {"prompt_tokens": -1}, {"max_output_tokens": -5}, {"key": ""}, {"n": True}, {"prompt_tokens": 10**400},
        {"max_output_tokens": 2**53}, {"model": None},
    ],
    ids=["n", "prompt", "output", "key", "bool-n", "huge-prompt", "huge-output", "no-model"],
)
def test_bad_reserve_arguments_are_refused(arguments: dict) -> None:
    call = {"model": "unit", "prompt_tokens": 10, **arguments}
    with pytest.raises(ConfigError):
        budget(total_usd=1.0).reserve(**call)


@pytest.mark.parametrize(
    "prompt_tokens",
    [2**52, TokenCount(1000, "estimate", False)],
    ids=["worst-case", "margin"],
)
def test_a_worst_case_beyond_what_a_ledger_counts_exactly_is_refused(prompt_tokens: int | TokenCount) -> None:
    uncapped = budget(estimate_margin=1e300)  # no cap to refuse it: 2**52 tokens at $1 per million is $4.5 billion
    with pytest.raises(ConfigError, match="2\\*\\*53"):
        uncapped.reserve(model="unit", prompt_tokens=prompt_tokens, max_output_tokens=1)
    assert uncapped.report().outstanding_reservations == 0


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": 10**18},
        {"prompt_tokens": 10, "completion_tokens": -1},
        {"prompt_tokens": math.inf, "completion_tokens": 1},
        {"prompt_tokens": 10, "completion_tokens": 1, "cached_tokens": "many"},
    ],
    ids=["huge", "negative", "infinite", "not-a-number"],
)
def test_usage_that_cant_be_real_is_charged_at_the_worst_case(usage: dict, caplog: pytest.LogCaptureFixture) -> None:
    capped = budget(total_usd=1.0)
    reservation = capped.reserve(model="unit", prompt_tokens=10, max_output_tokens=20)
    assert capped.settle(reservation, **usage) == pytest.approx(reservation.worst_case_usd)
    report = capped.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(reservation.worst_case_usd)
    assert "can't be real" in caplog.text


def test_spent_and_report_break_down_by_day_key_and_model() -> None:
    tracker = budget(total_usd=1.0, per_model_usd={"unit": 0.5})
    for model, key, completion in (("unit", "alice", 10), ("unit-2025-01-01", "bob", 20), ("other", None, 30)):
        reservation = tracker.reserve(model=model, prompt_tokens=100, max_output_tokens=50, key=key)
        tracker.settle(reservation, prompt_tokens=100, completion_tokens=completion)
    costs = {completion: PRICE.cost_usd(100, completion) for completion in (10, 20, 30)}
    assert tracker.spent() == pytest.approx(sum(costs.values()))
    assert tracker.spent(key="alice") == pytest.approx(costs[10])
    assert tracker.spent(model="unit") == pytest.approx(costs[10] + costs[20])  # the snapshot counts
    assert tracker.spent(model="unit-2025-01-01") == pytest.approx(costs[20])
    report = tracker.report()
    assert report.by_key == pytest.approx({"alice": costs[10], "bob": costs[20], "": costs[30]})
    assert report.by_model == pytest.approx({"unit": costs[10], "unit-2025-01-01": costs[20], "other": costs[30]})
    assert list(report.by_day.values()) == [pytest.approx(sum(costs.values()))]
    assert tracker.spent(day=next(iter(report.by_day))) == pytest.approx(sum(costs.values()))
    remaining = {(cap.scope, cap.value): cap.remaining_usd for cap in report.caps}
    assert remaining == pytest.approx(
        {("total", None): 1.0 - sum(costs.values()), ("per_model", "unit"): 0.5 - costs[10] - costs[20]}
    )
    with pytest.raises(ConfigError, match="at most one"):
        tracker.spent(key="alice", model="unit")



@pytest.mark.parametrize(
    ("asked", "message"),
    [
        pytest.param({"day": "\ud800"}, "day must be a UTC date", id="day-lone-surrogate"),
        pytest.param({"day": "2026-99-99"}, "day must be a UTC date", id="day-no-date"),
        pytest.param({"day": "20261204"}, "day must be a UTC date", id="day-another-form"),
        pytest.param({"day": 5}, "day must be a UTC date", id="day-not-a-string"),
        pytest.param({"key": "al\ud800"}, "key must be text that encodes as UTF-8", id="key-lone-surrogate"),
        pytest.param({"model": 3}, "model must be a non-empty string", id="model-not-a-string"),
        pytest.param({"model": "unit\ud800"}, "model must be text that encodes as UTF-8", id="model-lone-surrogate"),
    ],
)
def test_spent_refuses_what_no_spend_can_be_kept_under(asked: dict[str, Any], message: str) -> None:
    """A day in another form, or a name no ledger can hold, matched nothing (0.0) or raised from the store."""
    with pytest.raises(ConfigError, match=message):
        budget(total_usd=1.0).spent(**asked)


@pytest.mark.parametrize("asked", [{"key": "al\ud800"}, {"call_id": "bb-\ud800"}], ids=["key", "call-id"])
def test_a_reservation_under_a_name_no_ledger_can_hold_is_refused_before_anything_is_held(asked: dict[str, Any]) -> None:
    tracker = budget(total_usd=1.0)
    with pytest.raises(ConfigError, match="encodes as UTF-8"):
        tracker.reserve(model="unit", prompt_tokens=10, max_output_tokens=10, **asked)
    assert tracker.report().outstanding_reservations == 0

def test_budgets_sharing_a_ledger_file_share_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first, second = budget(total_usd=0.01, ledger=path), budget(total_usd=0.01, ledger=str(path))
    first.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    with pytest.raises(BudgetExceededError) as refused:
        second.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    assert refused.value.reserved == pytest.approx(PRICE.cost_usd(0, 800))
    assert first.ledger_path == second.ledger_path == path


def test_private_ledgers_are_separate_and_removed_with_their_budget() -> None:
    first, second = budget(total_usd=0.01), budget(total_usd=0.01)
    first.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    assert second.reserve(model="unit", prompt_tokens=0, max_output_tokens=800).n == 1
    folder = first.ledger_path.parent
    assert folder.is_dir() and folder != second.ledger_path.parent
    del first
    gc.collect()
    assert not folder.exists()


def test_cost_prices_usage_without_touching_the_ledger() -> None:
    tracker = budget(total_usd=1.0)
    assert tracker.cost("unit", prompt_tokens=100, completion_tokens=10, cached_tokens=40) == pytest.approx(
        PRICE.cost_usd(100, 10, cached_tokens=40)
    )
    assert tracker.cost("my-model", prompt_tokens=100, completion_tokens=10) is None
    assert tracker.cost("my-model", prompt_tokens=100, completion_tokens=10, local=True) == 0.0
    assert tracker.report().calls == 0


def test_the_examples_in_docs_budgets_md_run() -> None:
    results = doctest.testfile(str(REPO_ROOT / "docs" / "budgets.md"), module_relative=False, verbose=False)
    assert results.attempted > 5 and results.failed == 0


def test_example_04_shows_a_refusal_and_a_shrink(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    command = [sys.executable, str(REPO_ROOT / "examples" / "04_budget.py"), "--ledger", str(ledger)]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "refused (per_key)" in output and "nothing sent" in output
    assert "granted n=1 x 20000" in output
    assert "missing price" in output
    assert Budget(ledger=ledger).report().calls == 1


@pytest.mark.parametrize("module", [budget_module])
def test_module_exports_are_sorted_and_defined(module: Any) -> None:
    assert module.__all__ == sorted(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)


def test_ledger_path_expands_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert budget(ledger="~/budgets/ledger.sqlite3").ledger_path == tmp_path / "budgets" / "ledger.sqlite3"
    assert (tmp_path / "budgets" / "ledger.sqlite3").is_file()


def test_prompt_per_choice_charges_the_prompt_once_per_choice() -> None:
    budget = Budget(per_call_usd=1.0, prices={"m": {"input": 1.0, "output": 1.0}})
    once = budget.reserve(model="m", prompt_tokens=1000, max_output_tokens=10, n=4)
    each = budget.reserve(model="m", prompt_tokens=1000, max_output_tokens=10, n=4, prompt_per_choice=True)
    assert once.worst_case_usd == pytest.approx((1000 + 4 * 10) / 1e6)
    assert each.worst_case_usd == pytest.approx((4 * 1000 + 4 * 10) / 1e6)


def _open_files_at(path: Path) -> int:
    """How many of this process's file descriptors point at `path` or its journals (an SQLite ledger's connections)."""
    fds = Path("/proc/self/fd")
    targets = [str(Path(os.path.realpath(fds / name))) for name in os.listdir(fds)]
    return sum(target.startswith(str(path.resolve())) for target in targets)


async def test_a_budget_closes_its_ledger_and_opens_it_again_on_next_use(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=str(ledger))
    budget.settle(budget.reserve(model="unit", prompt_tokens=1000, max_output_tokens=0), prompt_tokens=1000, completion_tokens=0)
    assert _open_files_at(ledger) > 0
    budget.close()
    assert _open_files_at(ledger) == 0
    assert budget.spent() > 0 and _open_files_at(ledger) > 0  # used again: open again
    await budget.aclose()
    assert _open_files_at(ledger) == 0
