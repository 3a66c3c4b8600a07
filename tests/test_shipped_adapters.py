"""The adapters shipped in adapters/ load from safetensors + JSON and rank held-out answers better than chance."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from blackbox_sdk.adapter import Adapter

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (ROOT / "adapters").iterdir() if (p / "adapter_config.json").is_file())
sys.path.insert(0, str(ROOT / "benchmarks"))

from tasks.suite import TASKS, split

HELD_OUT = 40  # the benchmark's held-out questions, never trained on


def _wrong_answer(task_name: str, question: str, reference: str, other: str) -> str:
    """A wrong answer in the reference's form: the smaller number, or another question's sum or capital."""
    if task_name == "comparison":
        smaller = min(int(n) for n in re.findall(r"\d+", question))
        return f"{smaller} is larger."
    head, _ = reference.rsplit(" is ", 1)
    return f"{head} is {other.rsplit(' is ', 1)[1]}"


def test_every_task_of_the_benchmark_has_a_shipped_adapter() -> None:
    assert [p.name for p in SHIPPED] == sorted(t.name for t in TASKS)


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_adapter_has_its_card_recipe_and_benchmark_rows(folder: Path) -> None:
    card = (folder / "README.md").read_text()
    assert "## Benchmark (held-out questions" in card and "adapter@8" in card
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["task"] == folder.name
    config = json.loads((folder / "adapter_config.json").read_text())["config"]
    assert config["lora_rank"] > 0 and (folder / "lora" / "adapter_model.safetensors").is_file()  # deltas on a shared base
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 5_000_000  # the whole folder, card and curve included
    assert "## Verdict" in card and "Adaptive K:" in card


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_adapter_prefers_the_right_answer_on_held_out_questions(folder: Path) -> None:
    task = next(t for t in TASKS if t.name == folder.name)
    _, held = split(task, 0, HELD_OUT)
    adapter = Adapter.load(folder, device="cpu")
    wins = 0
    for i, item in enumerate(held):
        other = held[(i + 1) % len(held)]
        wrong = _wrong_answer(task.name, item.question, item.reference, other.reference)
        assert not task.check(item, wrong), wrong
        right_score, wrong_score = adapter.score_pairs([(item.question, item.reference), (item.question, wrong)])
        wins += right_score > wrong_score
    assert wins / len(held) > 0.6, f"{folder.name}: the right answer won {wins} of {len(held)}"


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_card_usage_example_runs_and_ranks_its_reference_first(folder: Path) -> None:
    card = (folder / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/this/folder", str(folder))
    *statements, call = code.strip().splitlines()
    namespace: dict[str, object] = {}
    exec("\n".join(statements), namespace)
    right, wrong = eval(call, namespace)
    assert right > wrong, call
