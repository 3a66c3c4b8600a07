"""The adapter benchmark with every question held out once: `python benchmarks/run.py adapter_cv [--quick]`.

`bench_adapter` holds out 40 questions per task. Where a result sits near the goal's line (half of
the single-to-oracle gap), 40 questions leave an interval about 30 points wide on the gap
recovered. Here, for capitals and arithmetic (the two tasks nearest the line), the questions are
cut into blocks of 40 in the seeded order (the first block is the default run's held-out set, the
last is smaller); per block, a fresh adapter is trained with the default recipe (for both tasks:
all-mpnet-base-v2, its top four layers; arithmetic with three online rounds) on the other questions
and evaluated on the block, as in `bench_adapter` (4 draws of 8 samples per question). On 2 CPU
cores: capitals about 75 minutes, arithmetic about 2 hours, most of it training; `--task NAME`
runs one task. Per task, the pooled rows hold all its questions, with a bootstrap interval of the
gap recovered; one row per block follows. Samples come from the same cache as `bench_adapter`'s,
so shared questions are not sampled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench_adapter import DEFAULT, METHODS, QUICK, WORK, evaluate_reranking, gap_recovered, local_server, method_rows, train_adapter
from tasks.suite import TASKS, folds

TASK_NAMES = ("capitals", "arithmetic")


def rows(quick: bool, tasks: Sequence[str] = TASK_NAMES) -> list[dict[str, Any]]:
    """The named CV tasks' rows (default: all), with the llama.cpp server running for the duration."""
    import torch

    import blackbox_sdk

    torch.set_num_threads(2)
    with local_server() as base_url:
        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="local", cache=WORK / "cache", log=WORK / "calls.db")
        return [row for name in tasks for row in task_rows(client, name, quick)]


def task_rows(client: Any, name: str, quick: bool) -> list[dict[str, Any]]:
    """One task's pooled rows over every block, then the adapter's row per block."""
    size = QUICK if quick else DEFAULT
    task = next(t for t in TASKS if t.name == name)
    blocks = folds(task, size.train, size.held_out)[: 2 if quick else None]
    pooled: dict[str, list[float]] = {m: [] for m in METHODS}
    tokens = 0.0
    per_block = []
    for number, (train, held) in enumerate(blocks, 1):
        adapter, _ = train_adapter(client, task, train, held, size, WORK / ("quick" if quick else "default") / "cv" / f"{name}-{number}")
        per_question, block_tokens, _ = evaluate_reranking(client, adapter, task, held, size.samples, size.draws)
        for method in METHODS:
            pooled[method] += per_question[method]
        tokens += block_tokens * len(held)
        per_block.append(
            {
                "task": name,
                "block": number,
                "questions": len(held),
                "draws": size.draws,
                "method": f"adapter@{size.samples}",
                "accuracy": sum(per_question["adapter"]) / len(held),
                "majority": sum(per_question["majority"]) / len(held),
                "gap_recovered": gap_recovered(per_question),
                "consensus": adapter.config.consensus,
                "train_questions": len(train),
            }
        )
    questions = len(pooled["single"])
    return [*method_rows({"task": name, "block": "all", "questions": questions, "draws": size.draws}, pooled, tokens / questions, size.samples), *per_block]
