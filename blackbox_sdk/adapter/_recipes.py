"""Named training recipes, and training several to keep the one that does best on the user's own validation questions.

A user's task is none of the benchmark's, so which encoder and how many rounds suit it cannot be
known by name. `online_train_auto` trains each recipe of a grid with the online rounds (into
`out_dir/recipes/<name>/`) and keeps the one whose picks are right most often on the quarter of the
training questions each recipe keeps out of training (`validation_accuracy` of its last round;
ties go to the earlier, cheaper recipe); the chosen folder is copied to `out_dir` by an atomic
swap. The held-out questions of `benchmarks/run.py adapter_lofo` judge exactly this choice.

With a cached client the recipes share their samples: each asks the black box the same requests,
so only the first recipe pays for them (a 3-round recipe pays for its third round).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ..local import MPNET_ENCODER
from ._config import AdapterConfig
from ._folder import swapped_in, writable_target
from ._labelers import Labeler
from ._online_config import LORA_RANK, OnlineConfig, OnlineQuestion, OnlineReport, lora_training
from ._rounds import check_encoder, online_train
from ._sampling import AnswerSampler

CHOICE_FILE = "recipes.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Recipe:
    """An encoder, how much of it adapts through LoRA, and rounds beyond the grid's common number."""

    base_model: str  # "default" (all-MiniLM-L6-v2), "all-mpnet-base-v2", or an HF encoder folder
    trainable_layers: int
    lora_rank: int = LORA_RANK
    extra_rounds: int = 0

    def config(self, *, rounds: int = 2, samples: int = 8, epochs_per_round: int = 8) -> OnlineConfig:
        """The OnlineConfig of this recipe: NCE through LoRA at lr 1e-3, 8 groups a step, at most 7 negatives each."""
        return OnlineConfig(
            rounds=rounds + self.extra_rounds,
            samples=samples,
            epochs_per_round=epochs_per_round,
            adapter=AdapterConfig(base_model=self.base_model, trainable_layers=self.trainable_layers, lora_rank=self.lora_rank),
            train=lora_training(),
        )


RECIPES: dict[str, Recipe] = {  # cheapest first: ties in a choice go to the earlier one
    "minilm-lora": Recipe("default", 6),  # all six MiniLM-L6 layers: the cheapest to train and 5-10x faster to score
    "mpnet-lora": Recipe(MPNET_ENCODER, 4),  # mpnet's top 4 of 12 layers: a 110M encoder holds more facts; OnlineConfig's default
    "mpnet-lora-3r": Recipe(MPNET_ENCODER, 4, extra_rounds=1),  # a third round: 8 more samples, the last adapter's wrong picks
}


def choose_recipe(validation: Mapping[str, float | None]) -> str:
    """The recipe with the highest validation accuracy; ties (and None, not measured) go to the earliest in `validation`'s order."""
    if not validation:
        raise AdapterError("no recipe to choose from")
    names = list(validation)

    def accuracy(name: str) -> float:
        value = validation[name]
        return float("-inf") if value is None else round(value, 9)  # equal sums in another order still tie

    return max(names, key=lambda name: (accuracy(name), -names.index(name)))


@dataclass
class RecipeChoice:
    """What `online_train_auto` trained and kept: each recipe's report and validation accuracy, and the chosen one."""

    chosen: str
    validation: dict[str, float | None]  # each recipe's last-round validation accuracy, in the order tried
    reports: dict[str, OnlineReport] = field(default_factory=dict)
    adapter_path: str = ""  # out_dir: a copy of the chosen recipe's folder

    @property
    def report(self) -> OnlineReport:
        """The chosen recipe's own report (its rounds, baseline and verdict)."""
        return self.reports[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        """The choice as JSON data (the reports as their own JSON)."""
        return {
            "chosen": self.chosen,
            "validation": self.validation,
            "adapter_path": self.adapter_path,
            "reports": {name: report.to_dict() for name, report in self.reports.items()},
        }


def online_train_auto(
    sampler: AnswerSampler,
    train_items: Sequence[OnlineQuestion],
    label: Labeler,
    out_dir: str | Path,
    *,
    recipes: Mapping[str, OnlineConfig] | None = None,
    eval_items: Sequence[OnlineQuestion] = (),
    device: str | None = None,
) -> RecipeChoice:
    """Train every recipe (default: each of `RECIPES` at its `config()`), keep the best on validation; resumable.

    Each recipe runs `online_train` into `out_dir/recipes/<name>/` (a re-run resumes or skips it);
    the chosen folder is then copied to `out_dir`, and `recipes.json` there says what was chosen
    and why. Every recipe needs validation questions (`validation_fraction` > 0), or there is
    nothing to choose on.
    """
    grid = dict(recipes) if recipes is not None else {name: recipe.config() for name, recipe in RECIPES.items()}
    _check_grid(grid)
    out = Path(out_dir)
    writable_target(out)  # a file, a link or a folder of the user's files is refused before any sampling
    reports = {
        name: online_train(sampler, train_items, label, out / "recipes" / name, eval_items=eval_items, config=config, device=device)
        for name, config in grid.items()
    }
    validation = {name: report.rounds[-1].get("validation_accuracy") for name, report in reports.items()}
    choice = RecipeChoice(choose_recipe(validation), validation, reports, str(out))
    _publish(out / "recipes" / choice.chosen, out, choice)
    return choice


def _check_grid(grid: Mapping[str, OnlineConfig]) -> None:
    """AdapterError for a grid that cannot be chosen from, before anything is sampled or trained."""
    if not grid:
        raise AdapterError("recipes must name at least one OnlineConfig")
    for name, config in grid.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise AdapterError(f"recipe names become folder names: letters, digits, '.', '_' and '-' only, not {name!r}")
        if not isinstance(config, OnlineConfig):
            raise AdapterError(f"recipe {name!r} must be an OnlineConfig, not {type(config).__name__}")
        if config.validation_fraction <= 0:
            raise AdapterError(f"recipe {name!r} keeps no validation questions (validation_fraction=0): nothing to choose on")
        check_encoder(config)  # every recipe's encoder, before the first one samples


def _publish(chosen: Path, out: Path, choice: RecipeChoice) -> None:
    """Copy the chosen recipe's folder over `out` (keeping `recipes/`) in one swap, with `recipes.json` beside it."""
    with swapped_in(out, lambda name: name != "recipes") as temp:
        for entry in chosen.iterdir():
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, temp / entry.name)
        (temp / CHOICE_FILE).write_text(json.dumps({k: v for k, v in choice.to_dict().items() if k != "reports"}, indent=2) + "\n")
