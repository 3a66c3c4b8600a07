"""Fewer samples for the same accuracy: `python benchmarks/run.py adaptive_k [--quick] [--task NAME]`.

The black box is SmolLM2-135M-Instruct behind llama.cpp's server (started here), the rerankers the
shipped adapters (adapters/<task>/), the questions each task's held-out ones (never trained on).
Each question gets a pool of `POOL` samples, one request each (so each sample's tokens are known),
through the SDK client with a disk cache under .bench/adaptive_k/ (a re-run samples nothing). The
pool is cut into disjoint draws; in every draw each method sees the same samples in the same order:

    single        one sample (the share of right samples; its expectation)
    majority@8    the most frequent extracted answer among 8
    adapter@K     the adapter's pick among the first K, K = 2, 4, 8, 16
    adaptive      the client's adaptive K (`rerank_confidence=c`, `rerank_n=8`): 1 sample, then 2, 4,
                  then 8, stopping once the pick holds a share c of the softmax over the scores and
                  one unsampled answer scored 0; the same rule the client runs
                  (`blackbox_sdk._pipeline._rerank`), replayed on the pool

Out of sample, twice: the stop rule was designed on the first DESIGN held-out questions of each task
(`--quick` runs those), and the full run judges it on the other HELD_OUT - DESIGN; the confidence c
for a task is chosen on the other tasks (the cheapest c whose pooled accuracy there is within
`TOLERANCE` of adapter@8's), then judged once on this task. A second adaptive row chooses c for a
task on its own DESIGN questions instead (the same rule on that adapter's own task, other
questions: what a per-adapter confidence chosen at training time on its validation questions
does) and judges it on the same HELD_OUT - DESIGN questions; a third takes the confidence the
shipped adapter chose on its own validation questions in training (`rerank_confidence="auto"`;
none chosen: every answer, adapter@8 itself). A fourth lets adaptive K spend up to 16 (`rerank_n=16`) with
one confidence for every task, chosen on all tasks' DESIGN questions pooled (the most accurate c there, the
cheapest of those tied; full run only), judged on the same questions as the others. Goal: adaptive
reaches adapter@8's accuracy at no more than half its tokens, on average: the `mean of tasks` rows. A PNG of accuracy against tokens per
question is written to .bench/adaptive_k/curve.png.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_adapter import SAMPLING, local_server
from tasks.suite import TASKS, Item, Task

from blackbox_sdk._adaptive import next_round, pick_share

TASK_NAMES = tuple(t.name for t in TASKS)
WORK = HERE.parent / ".bench" / "adaptive_k"
SHIPPED = HERE.parent / "adapters"
MODEL = "smollm2"
POOL = 16  # samples per question
HELD_OUT = 40  # the held-out questions of the shipped adapters (benchmarks/tasks/suite.py `split`)
DESIGN = 8  # the first held-out questions of each task, on which the stop rule was designed (--quick runs them); the rest judge it
KS = (2, 4, 8, 16)
MOST = 8  # adaptive K's rerank_n
UP_TO_POOL = "adaptive (rerank_n=16, one c for every task)"
GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
TOLERANCE = 0.01  # accuracy the chosen confidence may give up against adapter@8, on the tasks it is chosen on


@dataclass
class Sample:
    """One sampled answer: its text, whether it is right, its tokens (prompt + completion) and the adapter's g."""

    text: str
    right: bool
    tokens: int
    g: float


def sample_pools(client: Any, task: Task, items: Sequence[Item], adapter: Any) -> list[list[Sample]]:
    """POOL samples per question, one request each (seeded, so cached), scored once by the adapter's g."""
    pools = []
    for item in items:
        messages = [*task.messages(), {"role": "user", "content": item.question}]
        texts, tokens = [], []
        for seed in range(POOL):
            response = client.chat.completions.create(model=MODEL, messages=messages, seed=seed, **SAMPLING)
            texts.append(response.choices[0].message.content or "")
            tokens.append(response.usage.total_tokens if response.usage else 0)
        energy = adapter.score_pairs([(item.question, t) for t in texts])
        pools.append([Sample(t, task.check(item, t), n, g) for t, n, g in zip(texts, tokens, energy)])
    return pools


def scores(samples: Sequence[Sample], consensus: float) -> list[float]:
    """`Adapter.score` on these samples: g + consensus * log(copies among them)."""
    copies = Counter(_key(s.text) for s in samples)
    return [s.g + consensus * math.log(copies[_key(s.text)]) for s in samples]


def _key(text: str) -> str:
    """The adapter's copy key (the same normalisation as `normalize_answer`)."""
    from blackbox_sdk.adapter import normalize_answer

    return normalize_answer(text)


def pick(samples: Sequence[Sample], consensus: float) -> Sample:
    """The adapter's pick (ties: the first)."""
    found = scores(samples, consensus)
    return samples[max(range(len(found)), key=lambda i: (found[i], -i))]


def adaptive(samples: Sequence[Sample], consensus: float, confidence: float) -> tuple[bool, int, int]:
    """The client's adaptive K on a draw, at most all of it (`rerank_n=len(samples)`): (right, tokens spent, samples used)."""
    most = len(samples)
    held = next_round(0, most, None, confidence)
    while True:
        used = samples[:held]
        found = scores(used, consensus)
        following = next_round(held, most, pick_share([s.text for s in used], found), confidence)
        if not following:
            return pick(used, consensus).right, sum(s.tokens for s in used), held
        held = following


def majority(task: Task, samples: Sequence[Sample]) -> Sample:
    """The first sample whose extracted answer is the most frequent."""
    values = [(task.extract(s.text) or "").casefold() for s in samples]
    counts = Counter(v for v in values if v)
    if not counts:
        return samples[0]
    top = max(counts.values())
    return next(s for s, v in zip(samples, values) if v and counts[v] == top)


def draws(pool: list[Sample], size: int) -> list[list[Sample]]:
    """The pool cut into disjoint draws of `size`."""
    return [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)]


def fixed_rows(task: Task, pools: list[list[Sample]], consensus: float) -> list[dict[str, Any]]:
    """single, majority@8 and adapter@K: accuracy and tokens per question, averaged over draws."""
    rows = []
    methods: list[tuple[str, int, Any]] = [("single", 1, lambda d: d[0]), ("majority@8", 8, lambda d: majority(task, d))]
    methods += [(f"adapter@{k}", k, lambda d: pick(d, consensus)) for k in KS]
    for name, k, choose in methods:
        right = tokens = count = 0.0
        for pool in pools:
            for draw in draws(pool, k):
                right += choose(draw).right
                tokens += sum(s.tokens for s in draw)
                count += 1
        rows.append({"task": task.name, "method": name, "samples": k, "accuracy": right / count, "tokens_per_question": tokens / count})
    return rows


def adaptive_row(task: Task, pools: list[list[Sample]], consensus: float, confidence: float, most: int = MOST) -> dict[str, Any]:
    """Adaptive K at one confidence, `rerank_n=most`: accuracy, tokens and samples per question, averaged over draws of `most`."""
    results = [adaptive(draw, consensus, confidence) for pool in pools for draw in draws(pool, most)]
    return {
        "task": task.name, "method": f"adaptive c={confidence}", "samples": sum(r[2] for r in results) / len(results),
        "accuracy": sum(r[0] for r in results) / len(results), "tokens_per_question": sum(r[1] for r in results) / len(results),
    }


def choose_confidence(others: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> float:
    """On the other tasks, pooled: the cheapest confidence within TOLERANCE of adapter@8 (else the most accurate)."""
    target = sum(ref["accuracy"] for ref, _ in others) / len(others)
    pooled = {c: (sum(g[i]["accuracy"] for _, g in others) / len(others), sum(g[i]["tokens_per_question"] for _, g in others)) for i, c in enumerate(GRID)}
    good = [c for c, (accuracy, _) in pooled.items() if accuracy >= target - TOLERANCE]
    return min(good, key=lambda c: pooled[c][1]) if good else max(pooled, key=lambda c: pooled[c][0])


def rows(quick: bool, tasks: Sequence[str] = TASK_NAMES) -> list[dict[str, Any]]:
    """Every task's pools (all tasks are sampled: each one's confidence is chosen on the others); rows of the named tasks."""
    import blackbox_sdk
    from blackbox_sdk.adapter import Adapter

    questions = slice(0, DESIGN) if quick else slice(DESIGN, HELD_OUT)
    per_task: dict[str, Measured] = {}
    design: dict[str, Measured] = {}  # each task's DESIGN questions (full run only)
    trained: dict[str, float | None] = {}  # the confidence each adapter chose on its validation questions (rerank_confidence="auto")
    with local_server() as base_url:
        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="local", cache=WORK / "cache")
        for task in TASKS:
            adapter = Adapter.load(SHIPPED / task.name, device="cpu")
            consensus, trained[task.name] = adapter.config.consensus, adapter.config.confidence
            per_task[task.name] = _measured(task, sample_pools(client, task, task.items[questions], adapter), consensus)
            if not quick:
                design[task.name] = _measured(task, sample_pools(client, task, task.items[:DESIGN], adapter), consensus)
    pooled = choose_most_accurate([(m.reference, m.grid_pool) for m in design.values()]) if design else None
    out = []
    for name in tasks:
        measured = per_task[name]
        out += measured.fixed
        choices = [("adaptive (c chosen on the other tasks)", choose_confidence([(m.reference, m.grid) for other, m in per_task.items() if other != name]))]
        choices += [("adaptive (c chosen on this task's design questions)", choose_confidence([(design[name].reference, design[name].grid)]))] if design else []
        out += [_judged(measured.grid, measured.reference, method, confidence) for method, confidence in choices]
        out += [_judged(measured.grid, measured.reference, "adaptive (c the adapter chose in training: \"auto\")", trained[name])]
        out += [_judged(measured.grid_pool, measured.reference, UP_TO_POOL, pooled)] if pooled is not None else []
    out += mean_rows(out) if set(tasks) == set(TASK_NAMES) else []
    _plot(out, {n: per_task[n].grid for n in tasks})
    return out


@dataclass
class Measured:
    """One task's rows on some questions: fixed K, adapter@8's among them, adaptive over the grid with rerank_n 8 and POOL."""

    fixed: list[dict[str, Any]]
    reference: dict[str, Any]
    grid: list[dict[str, Any]]
    grid_pool: list[dict[str, Any]]


def _measured(task: Task, pools: list[list[Sample]], consensus: float) -> Measured:
    """The fixed-K rows, adapter@8's row among them, and the adaptive rows over the confidence grid (rerank_n 8, then POOL)."""
    fixed = fixed_rows(task, pools, consensus)
    return Measured(
        fixed, next(r for r in fixed if r["method"] == "adapter@8"),
        [adaptive_row(task, pools, consensus, c) for c in GRID], [adaptive_row(task, pools, consensus, c, most=POOL) for c in GRID],
    )


def choose_most_accurate(designs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> float:
    """On every task's design questions pooled: the confidence with the highest mean accuracy, the cheapest of those
    tied (mean tokens against each task's adapter@8)."""
    pooled = {
        c: (sum(g[i]["accuracy"] for _, g in designs) / len(designs),
            sum(g[i]["tokens_per_question"] / ref["tokens_per_question"] for ref, g in designs) / len(designs))
        for i, c in enumerate(GRID)
    }
    best = max(accuracy for accuracy, _ in pooled.values())
    return min((c for c, (accuracy, _) in pooled.items() if accuracy >= best - 1e-9), key=lambda c: pooled[c][1])


def mean_rows(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each adaptive method over the tasks (the goal is on average): mean accuracy and token ratio against adapter@8's mean."""
    target = statistics.mean(r["accuracy"] for r in out if r["method"] == "adapter@8")
    means = []
    for method in dict.fromkeys(r["method"] for r in out if r["method"].startswith("adaptive")):
        chosen = [r for r in out if r["method"] == method]
        accuracy = statistics.mean(r["accuracy"] for r in chosen)
        ratio = statistics.mean(r["token_ratio_vs_adapter@8"] for r in chosen)
        means.append({
            "task": "mean of tasks", "method": method, "accuracy": accuracy, "adapter@8_accuracy": target,
            "token_ratio_vs_adapter@8": ratio, "met": accuracy >= target - 1e-9 and ratio <= 0.5,
        })
    return means


def _judged(grid: list[dict[str, Any]], reference: dict[str, Any], method: str, confidence: float | None) -> dict[str, Any]:
    """The adaptive row at a confidence chosen elsewhere, against adapter@8 on the same questions (None: every answer, adapter@8 itself)."""
    measured = reference if confidence is None else grid[GRID.index(confidence)]
    chosen = {**measured, "method": method, "confidence": confidence}
    chosen["token_ratio_vs_adapter@8"] = chosen["tokens_per_question"] / reference["tokens_per_question"]
    chosen["met"] = chosen["accuracy"] >= reference["accuracy"] - 1e-9 and chosen["token_ratio_vs_adapter@8"] <= 0.5
    return chosen


def _plot(out: list[dict[str, Any]], grids: dict[str, list[dict[str, Any]]]) -> None:
    """Accuracy against tokens per question, one panel per task: fixed K, the confidence grid, the chosen point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(grids)
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        fixed = [r for r in out if r["task"] == name and r["method"].startswith(("single", "adapter@"))]
        axis.plot([r["tokens_per_question"] for r in fixed], [r["accuracy"] for r in fixed], "o-", label="adapter@K (K=1: single)")
        axis.plot([r["tokens_per_question"] for r in grids[name]], [r["accuracy"] for r in grids[name]], "s--", alpha=0.6, label="adaptive, confidence grid")
        for chosen, mark in zip([r for r in out if r["task"] == name and r["method"].startswith("adaptive")], ("r*", "g^", "kD", "mP")):
            axis.plot([chosen["tokens_per_question"]], [chosen["accuracy"]], mark, markersize=12, label=chosen["method"].replace("adaptive (", "adaptive: ").rstrip(")"))
        axis.set(title=name, xlabel="tokens per question", ylabel="accuracy")
        axis.legend(fontsize=7)
    figure.tight_layout()
    WORK.mkdir(parents=True, exist_ok=True)
    figure.savefig(WORK / "curve.png", dpi=100)
