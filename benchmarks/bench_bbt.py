"""Black-Box Tuning vs zero-shot and in-context learning on five few-shot tasks, on the local SmolLM2.

Tasks ship beside this file (`tasks/bbt_*.jsonl`, written for this benchmark): sentiment (movie
and product reviews, positive/negative) and topic (news headlines: world/sports/business/
technology), on which the CPU configuration was chosen; and three held out, run with that
configuration unchanged: questions (six topics of forum questions), nli (premise/hypothesis
pairs, entailment/contradiction; every premise appears once with each label) and yesno (a
one-sentence passage and a question about it; two questions per passage, one yes, one no). 16 per
label for training, a disjoint 16 per label for dev, the rest for test (pairs and passages never
straddle splits). All methods use the same template and verbalizer (the paper's: "It was
great/terrible"; news "This news is about World/Sports/Business/Tech"; "This question is about
Health/.../Politics"; "... True or False? Answer: True/False"; "... Answer: Yes/No"):

- zero-shot: the template alone;
- in-context learning: every training example, filled in with its label word, before the query
  (that block's KV cache is computed once and shared by all test queries);
- BBT: a soft prompt tuned by CMA-ES, selected on dev, tested once;
- BBT deep (BBTv2): the same budget spread over a prompt at every decoder layer, one CMA-ES per
  layer in turn, with BBTv2's published step size and scale (sigma 0.2, alpha 0.2), not tuned here.

Rows report test accuracy, BBT's training calls and wall time (in all, and to its best dev score),
a placement comparison (prefix / after_text / suffix at one budget) and population evaluations
per second, batched vs one candidate at a time. Configurations: `--quick` (about 3 minutes on two
CPU cores), the default CPU one (about 30 minutes for the first two tasks; BBT_BENCH_BUDGET=N runs
it with N calls instead of 2000), and the paper's (d=500, L=50, 8000 calls, prefix) when CUDA is
available or BBT_BENCH_PAPER=1. BBT_BENCH_METHODS=bbt or =deep runs only one of the two tuned
methods (the baselines always run, side by side).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blackbox_sdk.local import HFBackend, default_gguf_path, load_backend
from blackbox_sdk.tuning import BBTConfig, LocalScorer, PromptTemplate, Tuner

HERE = Path(__file__).resolve().parent
PLOTS = HERE.parent / ".bench"
ICL_BATCH = 16  # test queries per forward on top of the shared demonstrations


@dataclass(frozen=True)
class Task:
    """A shipped few-shot task: its data file, template, verbalizer, and how a row's fields make the text."""

    name: str
    template: str
    verbalizer: dict[str, str]
    text: str = "{text}"  # a row's fields joined into the template's {text} (pairs: premise and hypothesis)
    held_out: bool = False  # not looked at while the CPU configuration was chosen

    def split(self, name: str) -> list[tuple[str, str]]:
        """(text, label) pairs of one split (train, dev or test)."""
        rows = [json.loads(line) for line in (HERE / "tasks" / f"bbt_{self.name}.jsonl").read_text().splitlines()]
        return [(self.text.format(**r), r["label"]) for r in rows if r["split"] == name]


TASKS = [
    Task("sentiment", "{text} It was {label}", {"positive": "great", "negative": "terrible"}),
    Task(
        "topic",
        "{text} This news is about {label}",
        {"world": "World", "sports": "Sports", "business": "Business", "technology": "Tech"},
    ),
    Task(
        "questions",
        "{text} This question is about {label}",
        {w.lower(): w for w in ("Health", "Science", "Music", "Food", "Travel", "Politics")},
        held_out=True,
    ),
    Task(
        "nli",
        "{text} Answer: {label}",
        {"entailment": "True", "contradiction": "False"},
        text="{premise} Question: {hypothesis} True or False?",
        held_out=True,
    ),
    Task(
        "yesno",
        "{text} Answer: {label}",
        {"yes": "Yes", "no": "No"},
        text="{passage} Question: {question}?",
        held_out=True,
    ),
]
TASK_NAMES = tuple(t.name for t in TASKS)


@dataclass(frozen=True)
class Plan:
    """One benchmark configuration: the main BBT run, the placement comparison, the throughput check."""

    name: str
    main: BBTConfig
    deep: BBTConfig  # the main configuration with a prompt at every layer (BBTv2)
    compare: BBTConfig | None  # placement comparison on the first task at this config (placement varied)
    throughput_placements: tuple[str, ...]


def plan(quick: bool) -> Plan:
    """The configuration for this machine and flags."""
    if not quick and (torch.cuda.is_available() or os.environ.get("BBT_BENCH_PAPER") == "1"):
        paper = BBTConfig(
            d=500, prompt_len=50, popsize=20, budget=8000, dev_every=100, placement="prefix", batch_size=640
        )
        return Plan("paper", paper, _deep(paper), paper, ("prefix", "after_text", "suffix"))
    if quick:
        main = BBTConfig(d=50, prompt_len=2, budget=60, dev_every=20, placement="suffix")
        return Plan("quick", main, _deep(main), None, ("suffix",))
    budget = int(os.environ.get("BBT_BENCH_BUDGET", "2000"))  # a shorter run of the same configuration
    main = BBTConfig(d=100, prompt_len=4, budget=budget, dev_every=100, placement="suffix")
    compare = main.model_copy(update={"budget": 200, "dev_every": 40})
    return Plan("cpu" if budget == 2000 else f"cpu-{budget}", main, _deep(main), compare, ("suffix", "prefix"))


def _deep(config: BBTConfig) -> BBTConfig:
    """The configuration as a deep prompt, with BBTv2's README step size and scale."""
    return config.model_copy(update={"deep": True, "sigma0": 0.2, "alpha": 0.2})


def methods() -> tuple[str, ...]:
    """The tuned methods to run: bbt and deep, or the one BBT_BENCH_METHODS names."""
    chosen = tuple(m.strip() for m in os.environ.get("BBT_BENCH_METHODS", "bbt,deep").split(",") if m.strip())
    unknown = set(chosen) - {"bbt", "deep"}
    if unknown or not chosen:
        raise SystemExit(f"BBT_BENCH_METHODS takes bbt and/or deep, got {os.environ['BBT_BENCH_METHODS']!r}")
    return chosen


def _accuracy(logprobs: torch.Tensor, labels: tuple[int, ...]) -> float:
    """Share of rows whose highest label log-prob is the true label."""
    return float((logprobs.argmax(-1) == torch.tensor(labels)).float().mean())


def zero_shot(backend: HFBackend, task: Task, test: list[tuple[str, str]]) -> dict[str, Any]:
    """The template alone, scored on the test set (a soft prompt of length 0)."""
    start = time.perf_counter()
    template = PromptTemplate(task.template, task.verbalizer, backend.tokenizer, "prefix")
    examples = template.encode([t for t, _ in test], [y for _, y in test])
    logprobs = LocalScorer(backend).label_logprobs(
        torch.zeros(1, 0, backend.input_embeddings().embedding_dim), examples, template.label_token_ids
    )
    return {"accuracy": _accuracy(logprobs[0], examples.labels), "calls": 0, "seconds": time.perf_counter() - start}


def in_context(
    backend: HFBackend, task: Task, train: list[tuple[str, str]], test: list[tuple[str, str]]
) -> dict[str, Any]:
    """Every training example as a filled-in demonstration (shuffled, seed 0) before each test query."""
    from transformers import DynamicCache

    start = time.perf_counter()
    template = PromptTemplate(task.template, task.verbalizer, backend.tokenizer, "prefix")
    order = np.random.default_rng(0).permutation(len(train))
    demos = "".join(
        task.template.replace("{text}", train[i][0]).replace("{label}", task.verbalizer[train[i][1]]) + "\n"
        for i in order
    )
    examples = template.encode([t for t, _ in test], [y for _, y in test])
    demo_ids = torch.tensor(
        [list(examples.heads[0]) + backend.tokenizer.encode(demos, add_special_tokens=False)], device=backend.device
    )
    model = backend.model
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.x renamed it
    with torch.inference_mode():
        out = model(input_ids=demo_ids, use_cache=True)
        shared = [(layer.keys, layer.values) for layer in (out["cache"] if "cache" in out else out.past_key_values).layers]
        rows = []
        for first in range(0, len(test), ICL_BATCH):
            tails = examples.tails[first : first + ICL_BATCH]
            width = max(len(t) for t in tails)
            ids = torch.tensor(
                [[0] * (width - len(t)) + list(t) for t in tails], device=backend.device
            )  # [B, T], left-padded
            query_mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tails], device=backend.device)
            mask = torch.cat(
                [torch.ones(len(tails), demo_ids.shape[1], dtype=torch.long, device=backend.device), query_mask], dim=1
            )
            cache = DynamicCache(
                [(k.expand(len(tails), -1, -1, -1), v.expand(len(tails), -1, -1, -1)) for k, v in shared]
            )
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, demo_ids.shape[1] :]
            logits = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **{cache_name: cache}
            ).logits[:, -1]
            rows.append(torch.log_softmax(logits.float(), -1)[:, template.label_token_ids].cpu())
    accuracy = _accuracy(torch.cat(rows), examples.labels)
    return {
        "accuracy": accuracy,
        "calls": 0,
        "seconds": time.perf_counter() - start,
        "demo_tokens": int(demo_ids.shape[1]),
    }


def bbt(
    backend: HFBackend, task: Task, config: BBTConfig, test: list[tuple[str, str]], plot_name: str
) -> dict[str, Any]:
    """Tune on train (selected on dev), test once; calls and seconds to the best dev score."""
    tuner = Tuner(
        backend,
        template=task.template,
        verbalizer=task.verbalizer,
        train=task.split("train"),
        dev=task.split("dev"),
        config=config,
    )
    prompt = tuner.fit()
    scores = prompt.info.scores
    PLOTS.mkdir(exist_ok=True)
    return {
        "accuracy": tuner.evaluate(test, prompt)["accuracy"],
        "calls": int(scores["calls"]),
        "seconds": scores["seconds"],
        "dev_accuracy": scores["dev_accuracy"],
        "calls_to_best": int(scores["calls_to_best"]),
        "seconds_to_best": scores["seconds_to_best"],
        "placement": config.placement,
        "d": config.d,
        "L": config.prompt_len,
        "layers": tuner.layers,
        "plot": str(tuner.plot(PLOTS / f"{plot_name}.png").relative_to(HERE.parent)),
    }


def throughput(backend: HFBackend, task: Task, config: BBTConfig, placement: str) -> list[dict[str, Any]]:
    """Population evaluations per second on the training set: one batched evaluation vs one candidate at a time."""
    setting = config.model_copy(update={"placement": placement, "progress": False})
    tuner = Tuner(
        backend, template=task.template, verbalizer=task.verbalizer, train=task.split("train"), config=setting
    )
    z = np.random.default_rng(0).standard_normal((config.popsize, config.d))
    tuner.score_population(z[:1])  # warm-up; also computes the head KV caches
    rows = []
    for mode in ("batched", "one-by-one"):
        start = time.perf_counter()
        if mode == "batched":
            tuner.score_population(z)
        else:
            for i in range(config.popsize):
                tuner.score_population(z[i : i + 1])
        seconds = time.perf_counter() - start
        rows.append(
            {
                "task": task.name,
                "method": f"throughput {mode}",
                "accuracy": None,
                "calls": config.popsize,
                "seconds": seconds,
                "placement": placement,
                "evals_per_s": config.popsize / seconds,
            }
        )
    rows[0]["speedup"] = rows[0]["evals_per_s"] / rows[1]["evals_per_s"]  # batched over one-by-one, side by side
    return rows


def rows(quick: bool, tasks: Sequence[str] = TASK_NAMES) -> list[dict[str, Any]]:
    """Every row of the benchmark for this configuration (the placement and throughput checks with sentiment)."""
    torch.manual_seed(0)
    chosen, tuned = plan(quick), methods()
    backend = load_backend(default_gguf_path())
    out: list[dict[str, Any]] = []
    for task in (t for t in TASKS if t.name in tasks):
        train, test = task.split("train"), task.split("test")[:: 2 if quick else 1]  # quick: every other test example
        side = {"task": task.name, "held_out": task.held_out}
        out.append({**side, "method": "zero-shot", **zero_shot(backend, task, test)})
        out.append({**side, "method": "in-context", **in_context(backend, task, train, test)})
        if "bbt" in tuned:
            result = bbt(backend, task, chosen.main, test, f"bbt_{task.name}_{chosen.name}")
            out.append({**side, "method": "bbt", **result})
        if "deep" in tuned:
            result = bbt(backend, task, chosen.deep, test, f"bbt_{task.name}_{chosen.name}_deep")
            out.append({**side, "method": "bbt deep", **result})
    first = TASKS[0]
    if first.name not in tasks or "bbt" not in tuned:
        return [{**row, "config": chosen.name} for row in out]
    if chosen.compare is not None:
        for placement in ("prefix", "after_text", "suffix"):
            setting = chosen.compare.model_copy(update={"placement": placement})
            result = bbt(backend, first, setting, first.split("test"), f"bbt_{first.name}_{chosen.name}_{placement}")
            out.append({"task": first.name, "method": f"bbt {placement}", **result})
    for placement in chosen.throughput_placements:
        out += throughput(backend, first, chosen.main, placement)
    return [{**row, "config": chosen.name} for row in out]
