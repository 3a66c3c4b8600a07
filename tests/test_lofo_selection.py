"""Leave-one-family-out bookkeeping: the choice never sees the held-out family or its pair, pooled numbers, the goal."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_adapter_lofo import (
    FULL,
    PAIRED,
    Result,
    auto_choice,
    complete_families,
    config_json,
    load_result,
    lofo_choice,
    pooled,
    recipe_config,
    result_path,
    table,
)

GRID = ("cheap", "big")
FAMILIES = ("arithmetic", "capitals", "comparison", "units", "capital_facts")


def result(family: str, recipe: str, adapter: list[float], validation: float | None = 0.5, train: int = 30) -> Result:
    """A result whose held-out questions have single 0, majority 0.25 and oracle 1; the adapter's per question as given."""
    count = len(adapter)
    per_question = {"single": [0.0] * count, "majority": [0.25] * count, "adapter": adapter, "oracle": [1.0] * count, "energy": adapter}
    return Result(family, train, recipe, train, validation, per_question=per_question)


def grid_results(big_wins_on: set[str], held_out_prefers_big: str | None = None) -> dict[tuple[str, str], Result]:
    """Every family with both recipes: "big" recovers 0.8 of the gap where it wins, "cheap" 0.6; elsewhere the reverse.

    `held_out_prefers_big` gets an overwhelming preference for "big" (many questions), so that
    counting it anywhere would flip the choice.
    """
    out = {}
    for family in FAMILIES:
        big_better = family in big_wins_on
        heavy = 50 if family == held_out_prefers_big else 1
        out[(family, "cheap")] = result(family, "cheap", [0.2 if family == held_out_prefers_big else (0.6 if big_better else 0.8)] * 4 * heavy)
        out[(family, "big")] = result(family, "big", [1.0 if family == held_out_prefers_big else (0.8 if big_better else 0.6)] * 4 * heavy)
    return out


def test_the_lofo_choice_never_counts_the_held_out_family() -> None:
    results = grid_results(big_wins_on=set(), held_out_prefers_big="units")
    assert lofo_choice(results, "units", GRID) == ("cheap", ["arithmetic", "capitals", "comparison", "capital_facts"])
    assert lofo_choice(results, "arithmetic", GRID)[0] == "big"  # units does count when another family is held out


@pytest.mark.parametrize("held_out", ["capitals", "capital_facts"])
def test_capitals_and_capital_facts_leave_each_other_out_of_the_choice(held_out: str) -> None:
    results = grid_results(big_wins_on=set(), held_out_prefers_big=PAIRED[held_out])
    choice, families = lofo_choice(results, held_out, GRID)
    assert (choice, families) == ("cheap", ["arithmetic", "comparison", "units"])
    assert lofo_choice(results, "comparison", GRID)[0] == "big"


def test_the_lofo_choice_is_the_highest_pooled_gap_and_a_tie_goes_to_the_cheaper_recipe() -> None:
    results = grid_results(big_wins_on={"arithmetic", "comparison", "capitals"})
    assert lofo_choice(results, "units", GRID)[0] == "big"  # 0.8 on three families, 0.6 on capital_facts
    even = {key: result(key[0], key[1], [0.5] * 4) for key in results}
    assert lofo_choice(even, "units", GRID)[0] == "cheap"


def test_a_family_without_every_recipe_takes_no_part() -> None:
    results = grid_results(big_wins_on={"arithmetic"})
    del results[("comparison", "big")]
    assert complete_families(results, GRID) == ["arithmetic", "capitals", "units", "capital_facts"]
    assert "comparison" not in lofo_choice(results, "units", GRID)[1]
    assert lofo_choice({("units", "cheap"): results[("units", "cheap")], ("units", "big"): results[("units", "big")]}, "units", GRID) == (None, [])


def test_auto_picks_the_highest_validation_accuracy_of_the_family_itself() -> None:
    results = {("units", "cheap"): result("units", "cheap", [0.0], validation=0.4), ("units", "big"): result("units", "big", [1.0], validation=0.7)}
    results[("opposites", "cheap")] = result("opposites", "cheap", [1.0], validation=0.9)
    results[("opposites", "big")] = result("opposites", "big", [0.0], validation=None)
    assert auto_choice(results, "units", GRID) == "big"
    assert auto_choice(results, "opposites", GRID) == "cheap"
    results[("units", "cheap")].validation_accuracy = 0.7
    assert auto_choice(results, "units", GRID) == "cheap"  # a tie: the cheaper


def test_pooled_joins_questions_and_the_gap_is_pooled_not_averaged() -> None:
    first = result("arithmetic", "cheap", [1.0, 0.0])  # gap 0.5 over 2 questions
    second = result("units", "cheap", [1.0] * 6)  # gap 1.0 over 6 questions
    assert pooled([first, second])["adapter"] == [1.0, 0.0, *[1.0] * 6]
    rows = table([first, second, result("arithmetic", "big", [0.0] * 2), result("units", "big", [0.0] * 6)], GRID, 8)
    fixed = next(r for r in rows if r["selection"] == "fixed" and r["recipe"] == "cheap" and r["family"].startswith("pooled"))
    assert fixed["gap_recovered"] == pytest.approx(7 / 8)  # not (0.5 + 1.0) / 2
    assert fixed["adapter@8"] == pytest.approx(7 / 8) and fixed["majority@8"] == 0.25 and fixed["oracle@8"] == 1.0


def test_rows_flag_beating_majority_and_the_goal() -> None:
    results = [
        result("arithmetic", "cheap", [0.25] * 4),  # ties majority: does not beat it
        result("arithmetic", "big", [0.0] * 4),
        result("units", "cheap", [1.0] * 4),
        result("units", "big", [0.0] * 4),
    ]
    rows = table(results, GRID, 8)
    lofo = {r["family"]: r for r in rows if r["selection"] == "lofo"}
    assert lofo["arithmetic"]["recipe"] == "cheap" and lofo["arithmetic"]["chosen_on"] == "1 other family"
    assert lofo["arithmetic"]["beats_majority"] == "no" and lofo["units"]["beats_majority"] == "yes"
    pooled_lofo = lofo["pooled (2)"]
    assert pooled_lofo["beats_majority"] == "1/2" and pooled_lofo["goal"] == "not met"  # gap 0.625 pooled, but a tie
    results[0] = result("arithmetic", "cheap", [0.5] * 4)
    assert {r["family"]: r for r in table(results, GRID, 8) if r["selection"] == "lofo"}["pooled (2)"]["goal"] == "met"


def test_rows_keep_training_sizes_apart() -> None:
    results = [result(f, r, [0.5] * 4, train=n) for f in ("arithmetic", "units") for r in GRID for n in (30, 180)]
    results[0] = result("arithmetic", "cheap", [1.0] * 4, train=30)
    rows = table(results, GRID, 8)
    assert [r["train"] for r in rows] == sorted(r["train"] for r in rows)
    assert {r["train"] for r in rows} == {30, 180} and len(rows) == 2 * (2 * 2 + 2 + 2 * 3)


def test_a_stored_result_of_a_changed_recipe_is_not_reused(tmp_path: Path) -> None:
    path = result_path(tmp_path, "units", 30, "minilm-lora")
    stored = result("units", "minilm-lora", [1.0])
    stored.config = config_json(recipe_config("minilm-lora", FULL))
    path.write_text(json.dumps(asdict(stored)))
    assert load_result(tmp_path, FULL, "units", 30, "minilm-lora") == stored
    stored.config["rounds"] = 7
    path.write_text(json.dumps(asdict(stored)))
    assert load_result(tmp_path, FULL, "units", 30, "minilm-lora") is None


def stored_grid(results: Path, family: str, train: int, adapter: float) -> None:
    """Store a result for every recipe of the full grid, as a finished run leaves them."""
    for recipe in FULL.grid:
        done = result(family, recipe, [adapter] * 4, train=train)
        done.config = config_json(recipe_config(recipe, FULL))
        path = result_path(results, family, train, recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(done)))


def test_a_re_run_with_every_result_stored_only_tabulates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_adapter_lofo
    import run

    def no_training(*_: object) -> None:
        raise AssertionError("nothing is missing: no server, no training")

    monkeypatch.setattr(bench_adapter_lofo, "LOFO_RESULTS", tmp_path)
    monkeypatch.setattr(bench_adapter_lofo, "_run_missing", no_training)
    stored_grid(tmp_path, "units", 30, 0.5)
    stored_grid(tmp_path, "letters", 30, 0.0)
    stored_grid(tmp_path, "letters", 180, 1.0)
    out = tmp_path / "rows.json"
    assert run.main(["adapter_lofo", "--family", "units", "--train", "30", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    lofo = {r["family"]: r for r in rows if r["selection"] == "lofo"}
    assert set(lofo) == {"units", "letters", "pooled (2)"} and {r["train"] for r in rows} == {30}
    assert lofo["units"]["beats_majority"] == "yes" and lofo["letters"]["beats_majority"] == "no"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["adapter", "--family", "units"], "adapter takes no --family or --train"),
        (["adapter_lofo", "--family", "nope"], "adapter_lofo has no family nope"),
        (["adapter_lofo", "--train", "0"], "--train takes a number of training questions"),
    ],
)
def test_run_refuses_families_and_sizes_it_cannot_run(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    import run

    with pytest.raises(SystemExit) as exited:
        run.main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err
