"""The feedback loop as a production app runs it: log, feedback, `adapter train`, reload, rerank.

1. An app answers questions through `OpenAI(..., log="calls.db")` with the reranker off, sampling
   K answers per call (`n=K`); it shows choice 0, and the log keeps all K as the call's candidates.
2. Users' feedback arrives through `client.feedback(call_id, ...)`. A checker stands in for the
   users here: the shown answer gets `label="correct"` or `"incorrect"`; when it is wrong, the user
   points at a right one among the K (`preferred=i`) or, when there is none, types it (`reference=`).
3. `blackbox-sdk adapter train --log calls.db --out adapters/mine` trains a reranker from the log
   (a progress bar on stderr; the folder gets the adapter, its card README.md, curve.png, metrics.json).
4. A serving client `OpenAI(..., reranker="adapters/mine", rerank_n=K)` reranks. More calls and
   feedback arrive, the folder is trained again in place, and the same client picks the new
   revision up without a restart (hot reload).
5. Held-out questions, never asked during training, are answered by the serving client after each
   training; the cache gives both passes the same K samples, so the table compares, on the same
   samples: the first sample alone, majority vote, and the adapter's pick.

The task: "Which number is larger, 24 or 57?" (SmolLM2-135M leans towards the first number it
read, so majority vote inherits the bias). The black box is SmolLM2-135M-Instruct behind llama.cpp's
server (started here). Needs the `adapter` and `server` extras.
Run: python examples/feedback_loop.py [--seed N] [--train 40] [--held-out 24] [--epochs 4] [--json FILE]
(about 3 minutes on 2 CPU cores; tests/test_feedback_loop.py runs the same loop with seed 0).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from blackbox_sdk import OpenAI
from blackbox_sdk.local import LlamaServer

SHOTS = [
    {"role": "user", "content": "Which number is larger, 12 or 45?"},
    {"role": "assistant", "content": "45 is larger."},
    {"role": "user", "content": "Which number is larger, 83 or 27?"},
    {"role": "assistant", "content": "83 is larger."},
]
SAMPLING: dict[str, Any] = {"model": "smollm2", "temperature": 0.9, "max_tokens": 16, "stop": ["\n"]}
T = TypeVar("T")
# The training recipe: MiniLM-L6 (the default encoder) with LoRA deltas of rank 8 on all six layers.
TRAIN_ARGS = ["--lora-rank", "8", "--trainable-layers", "-1", "--lr", "2e-3", "--eval-fraction", "0.2"]


@dataclass(frozen=True)
class Question:
    """One question with its right answer (a number as text) and a reference answer in the shots' form."""

    text: str
    gold: str

    @property
    def reference(self) -> str:
        """The answer a user would type as the correction."""
        return f"{self.gold} is larger."


@dataclass
class LoopSettings:
    """How big one run of the loop is; the defaults are the documented run's."""

    train: int = 40  # training questions, half before the first training and half after it
    held_out: int = 24  # questions only ever asked by the serving client, never given feedback
    samples: int = 8  # K answers per call
    epochs: int = 4  # per `adapter train`
    seed: int = 0  # which questions are held out, and the training seed
    progress: bool = True  # show `adapter train`'s progress bar


@dataclass
class LoopResult:
    """What one run did: where its files are, the per-stage timings, and the held-out table."""

    work: Path
    log: Path
    adapter: Path
    passes: list[list[dict[str, Any]]] = field(default_factory=list)  # per training: each held-out question's row
    seconds: dict[str, float] = field(default_factory=dict)
    trainings: list[dict[str, Any]] = field(default_factory=list)


def questions(seed: int, count: int) -> list[Question]:
    """`count` distinct comparison questions (two numbers in 10..99), in an order fixed by the seed."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b and {a, b} not in ({12, 45}, {83, 27})]
    random.Random(seed).shuffle(pairs)
    return [Question(f"Which number is larger, {a} or {b}?", str(max(a, b))) for a, b in pairs[:count]]


def answer_given(response: str) -> str | None:
    """The number a response calls larger ("57 is larger." or "The larger number is 57.")."""
    before = re.search(r"(\d+)\s+is\s+(?:the\s+)?(?:larger|greater|bigger)", response)
    after = re.search(r"(?:larger|greater|bigger)(?:\s+number)?\s+is\s+(\d+)", response)
    match = before or after
    return match.group(1) if match else None


def is_right(question: Question, response: str) -> bool:
    """The ground-truth check that stands in for a user's judgement."""
    return answer_given(response) == question.gold


def ask(client: OpenAI, question: Question, n: int = 1) -> Any:
    """One call of the app: the shots, then the question (`n` answers; a reranking client samples its `rerank_n`)."""
    return client.chat.completions.create(messages=[*SHOTS, {"role": "user", "content": question.text}], n=n, **SAMPLING)


def candidates_of(response: Any) -> list[str]:
    """Every answer the call gathered: the reranker's candidates, or the K choices of a plain call."""
    return list(response.blackbox.candidates or [choice.message.content or "" for choice in response.choices])


def user_feedback(client: OpenAI, question: Question, response: Any) -> dict[str, Any]:
    """What a user tells the app about one call: a label for the answer shown, then a right one among the K or the correction."""
    shown = response.choices[0].message.content or ""
    right = [i for i, text in enumerate(candidates_of(response)) if is_right(question, text)]
    given: dict[str, Any] = {"label": "correct" if is_right(question, shown) else "incorrect"}
    given.update({"preferred": right[0]} if right else {"reference": question.reference})
    client.feedback(response.blackbox.call_id, **given)
    return given


def serve(client: OpenAI, batch: Sequence[Question], n: int = 1) -> list[dict[str, Any]]:
    """The app at work: each question asked once, each call's feedback given as it arrives."""
    return [user_feedback(client, question, ask(client, question, n)) for question in batch]


def train_adapter(log: Path, out: Path, settings: LoopSettings) -> dict[str, Any]:
    """`blackbox-sdk adapter train --log calls.db --out adapters/mine`: a separate process, as an operator runs it."""
    command = [sys.executable, "-m", "blackbox_sdk", "adapter", "train", "--log", str(log), "--out", str(out)]
    command += [*TRAIN_ARGS, "--epochs", str(settings.epochs), "--seed", str(settings.seed)]
    command += [] if settings.progress else ["--no-progress"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, cwd=log.parent)
    if done.returncode != 0:
        raise RuntimeError(f"adapter train failed ({done.returncode}): {done.stdout}")
    report = json.loads(done.stdout)
    report["revision"] = json.loads((out / "adapter_config.json").read_text())["revision"]  # what a hot reload checks
    return report


def majority(question: Question, candidates: Sequence[str]) -> bool:
    """Whether the most common answer among the samples is right (ties: the one sampled first)."""
    given = [a for a in map(answer_given, candidates) if a is not None]
    return bool(given) and Counter(given).most_common(1)[0][0] == question.gold


def judge(client: OpenAI, batch: Sequence[Question]) -> list[dict[str, Any]]:
    """Each held-out question asked through the reranking client: its samples, scores, and which picks are right."""
    rows = []
    for question in batch:
        response = ask(client, question)
        candidates, pick = candidates_of(response), response.choices[0].message.content or ""
        rows.append({
            "question": question.text,
            "candidates": candidates,
            "scores": list(response.blackbox.scores or []),
            "pick": pick,
            "first": is_right(question, candidates[0]),
            "single": sum(is_right(question, c) for c in candidates) / len(candidates),
            "majority": majority(question, candidates),
            "adapter": is_right(question, pick),
            "oracle": any(is_right(question, c) for c in candidates),
        })  # fmt: skip
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The held-out accuracy of each way to pick, on the same samples."""
    return {key: round(sum(float(r[key]) for r in rows) / len(rows), 3) for key in ("first", "single", "majority", "adapter", "oracle")}


def timed(result: LoopResult, stage: str, step: Callable[[], T]) -> T:
    """Run one stage of the loop, noting its wall time."""
    start = time.monotonic()
    out = step()
    result.seconds[stage] = round(time.monotonic() - start, 1)
    return out


def run_loop(base_url: str, work: Path, settings: LoopSettings) -> LoopResult:
    """The whole loop on a running server: log and feedback, train, serve with the adapter, more feedback, re-train, reload."""
    everything = questions(settings.seed, settings.held_out + settings.train)
    held_out, first, second = everything[: settings.held_out], everything[settings.held_out :: 2], everything[settings.held_out + 1 :: 2]
    result = LoopResult(work=work, log=work / "calls.db", adapter=work / "adapters" / "mine")
    clock = time.monotonic()
    with OpenAI(base_url=base_url, api_key="local", log=result.log, cache=work / "cache") as app:
        serve(app, first, n=settings.samples)  # the reranker is off: K samples per call, choice 0 shown
    result.seconds["app without reranker"] = round(time.monotonic() - clock, 1)
    result.trainings.append(timed(result, "adapter train (1)", lambda: train_adapter(result.log, result.adapter, settings)))
    options = {"reranker": result.adapter, "rerank_n": settings.samples, "log": result.log, "cache": work / "cache"}
    with OpenAI(base_url=base_url, api_key="local", **options) as client:
        result.passes.append(timed(result, "held-out (1)", lambda: judge(client, held_out)))
        timed(result, "app with reranker", lambda: serve(client, second))
        result.trainings.append(timed(result, "adapter train (2)", lambda: train_adapter(result.log, result.adapter, settings)))
        result.passes.append(timed(result, "held-out (2)", lambda: judge(client, held_out)))
    return result


def table(result: LoopResult) -> str:
    """The held-out table: one row per training, accuracies on the same samples of the same questions."""
    lines = ["adapter                   first sample  majority@K  adapter@K  (single  oracle@K)"]
    for name, rows in zip(("after training 1", "after re-training (reload)"), result.passes):
        acc = summary(rows)
        lines.append(f"{name:<26}{acc['first']:>12.3f}{acc['majority']:>12.3f}{acc['adapter']:>11.3f}  ({acc['single']:.3f}  {acc['oracle']:.3f})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the loop on a fresh llama.cpp server in a temporary folder; print the timings and the held-out table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=LoopSettings.seed)
    parser.add_argument("--train", type=int, default=LoopSettings.train)
    parser.add_argument("--held-out", type=int, default=LoopSettings.held_out)
    parser.add_argument("--epochs", type=int, default=LoopSettings.epochs)
    parser.add_argument("--json", type=Path, help="also write the timings, trainings and table here")
    args = parser.parse_args(argv)
    settings = LoopSettings(train=args.train, held_out=args.held_out, epochs=args.epochs, seed=args.seed)
    with LlamaServer() as base_url:
        result = run_loop(base_url, Path(tempfile.mkdtemp(prefix="feedback-loop-")), settings)
    print(f"log: {result.log}, adapter: {result.adapter} ({sorted(p.name for p in result.adapter.iterdir())})")
    print("seconds:", json.dumps(result.seconds))
    print(f"held-out: {settings.held_out} questions never asked in training, K = {settings.samples} samples each")
    print(table(result))
    if args.json:
        out = {"settings": vars(args) | {"json": None}, "seconds": result.seconds, "trainings": result.trainings}
        args.json.write_text(json.dumps(out | {"table": [summary(rows) for rows in result.passes]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
