"""The feedback loop's held-out accuracy over several runs: `python benchmarks/run.py feedback_loop [--quick] [--json FILE]`.

Each run is `examples/feedback_loop.py` with one seed (the seed picks the 24 held-out questions and
the training seed; every run draws fresh samples from SmolLM2 on llama.cpp): 40 training questions
get the stand-in users' feedback, `blackbox-sdk adapter train` trains twice, and the serving client
answers the held-out questions after each training. The recipe (`TRAIN_ARGS` in the example) was
fixed before these runs, and the held-out questions never get feedback, so every number here is
out of sample. One run judges 24 questions, so one run's ranking of the methods is a coin with a
bias; this benchmark, not a test, carries the claim, over `SEEDS` runs side by side.

Rows: per seed, on the same 8 samples per question: the first sample, "single" (the share of right
samples), majority vote, the adapter's pick after the first and the second training, the oracle,
whether the re-trained adapter beats single and ties or beats majority vote, and the share of
(right, wrong) sample pairs of a question that the adapter scores in order after each training
(pairs_1, pairs_2: many pairs per question, so less noisy than top-1 on 24); then one pooled
row (means, seeds where it held, the share of the single-to-oracle gap the re-trained adapter
recovers with a 95% interval from resampling questions across runs). About 3-5 minutes a seed on
2 CPU cores. Each seed's result is kept as JSON under benchmarks/results/feedback_loop/ and reused,
so a run only adds the seeds it lacks; `--quick` runs one small seed, kept under .bench/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_adapter import gap_interval, gap_recovered

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "feedback_loop.py"
RESULTS = HERE / "results" / "feedback_loop"
QUICK_RESULTS = HERE.parent / ".bench" / "feedback_loop" / "quick"  # --quick's results stay out of the repository
SEEDS = tuple(range(8))
COLUMNS = ("first", "single", "majority", "adapter", "oracle")


def example() -> ModuleType:
    """examples/feedback_loop.py as a module: the benchmark runs the example's own loop."""
    spec = importlib.util.spec_from_file_location("feedback_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def ordered_pairs(module: ModuleType, question: Any, row: dict[str, Any]) -> tuple[int, float]:
    """(right, wrong) candidate pairs of one held-out question, and how many of them the adapter scored in order (ties half)."""
    right = [module.is_right(question, c) for c in row["candidates"]]
    scores, pairs, ordered = row["scores"], 0, 0.0
    for i, j in ((i, j) for i in range(len(right)) for j in range(len(right)) if right[i] and not right[j]):
        pairs += 1
        ordered += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return pairs, ordered


def run_seed(module: ModuleType, base_url: str, seed: int, quick: bool) -> dict[str, Any]:
    """One run of the loop: its per-question rows after each training, its trainings' verdicts and its timings."""
    small = {"train": 8, "held_out": 6, "samples": 4, "epochs": 1} if quick else {}
    settings = module.LoopSettings(seed=seed, progress=False, **small)
    result = module.run_loop(base_url, Path(tempfile.mkdtemp(prefix="feedback-loop-")), settings)
    asked = {q.text: q for q in module.questions(seed, settings.held_out + settings.train)}
    per_question = []
    for first, second in zip(*result.passes, strict=True):
        question = asked[first["question"]]
        (pairs, ordered_1), (_, ordered_2) = ordered_pairs(module, question, first), ordered_pairs(module, question, second)
        accuracy = {k: float(first[k]) for k in COLUMNS if k != "adapter"} | {"adapter_1": float(first["adapter"]), "adapter_2": float(second["adapter"])}
        per_question.append({"question": question.text, **accuracy, "pairs": pairs, "ordered_1": ordered_1, "ordered_2": ordered_2})
    verdicts = [t.get("verdict", {}).get("summary") for t in result.trainings]
    return {"seed": seed, "settings": vars(settings), "questions": per_question, "verdicts": verdicts, "seconds": result.seconds}


def pair_accuracy(rows: Sequence[dict[str, Any]], which: str) -> float | None:
    """The share of held-out (right, wrong) pairs the adapter scored in order: finer-grained than its top-1 over few questions."""
    pairs = sum(r["pairs"] for r in rows)
    return round(sum(r[which] for r in rows) / pairs, 3) if pairs else None


MEANS = ("first", "single", "majority", "adapter_1", "adapter_2", "oracle")


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracies over these held-out questions (unrounded), and the pairs scored in order after each training."""
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in MEANS}
    return mean | {"pairs_1": pair_accuracy(rows, "ordered_1"), "pairs_2": pair_accuracy(rows, "ordered_2")}


def held(mean: dict[str, Any]) -> bool:
    """Whether the re-trained adapter beat the share of right samples and tied or beat majority vote."""
    return mean["adapter_2"] > mean["single"] and mean["adapter_2"] >= mean["majority"]


def rounded(mean: dict[str, Any]) -> dict[str, Any]:
    """The means to three places, for the table."""
    return {k: round(v, 3) if k in MEANS else v for k, v in mean.items()}


def seed_row(run: dict[str, Any]) -> dict[str, Any]:
    """One seed's accuracies on its held-out questions, and whether the re-trained adapter held."""
    mean = summary(run["questions"])
    return {"seed": run["seed"], "questions": len(run["questions"]), **rounded(mean), "held": "yes" if held(mean) else "no"}


def pooled_row(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every seed's questions together: mean accuracies, seeds where the adapter held, gap recovered with its interval."""
    rows = [r for run in runs for r in run["questions"]]
    per_question = {"single": [r["single"] for r in rows], "adapter": [r["adapter_2"] for r in rows], "oracle": [r["oracle"] for r in rows]}
    low, high = gap_interval(per_question)
    gap = gap_recovered(per_question)
    times = sum(held(summary(run["questions"])) for run in runs)
    return {
        "seed": f"pooled ({len(runs)})", "questions": len(rows), **rounded(summary(rows)), "held": f"{times}/{len(runs)}",
        "gap": None if gap is None else round(gap, 3), "gap 95%": f"{low:.2f}..{high:.2f}",
    }  # fmt: skip


def rows(quick: bool) -> list[dict[str, Any]]:
    """Run the seeds that have no stored result (llama.cpp started once), then tabulate every seed and the pool."""
    from blackbox_sdk.local import LlamaServer

    results = QUICK_RESULTS if quick else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:1] if quick else SEEDS
    missing = [s for s in seeds if not (results / f"seed-{s}.json").exists()]
    if missing:
        module = example()
        with LlamaServer(threads=2) as base_url:
            for seed in missing:
                run = run_seed(module, base_url, seed, quick)
                (results / f"seed-{seed}.json").write_text(json.dumps(run, indent=1) + "\n")
    runs = [json.loads((results / f"seed-{s}.json").read_text()) for s in seeds]
    return [*map(seed_row, runs), pooled_row(runs)]
