"""The paper's online adaptation rounds (BBox-Adapter, Sun et al. 2024, Algorithm 1), resumable.

Each round:
  1. sample K fresh candidates per training question from the black box (through the SDK client,
     so they are cached, budgeted and logged; round r asks for n = r*K and keeps the last K, so a
     re-run finds every round's samples in the cache),
  2. label them with a feedback function (a ground-truth checker, `ai_judge` through the same
     client, or `log_labels` from the call log's feedback),
  3. positives = references + accepted candidates + the best earlier positive; negatives =
     rejected candidates + the previous adapter's wrong picks (kept across rounds),
  4. train the adapter (continuing from the last round), choose its `consensus` weight on a
     quarter of the training questions kept out of training, one draw of K samples per round each
     (`calibrate_consensus`), evaluate on held-out questions, save a checkpoint and the JSON state.
A crash loses at most the round in progress: `online_train` with the same state file picks up
after the last completed round.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .adapter import Adapter, AdapterConfig, normalize_answer
from .adapter_training import (
    RankingGroup,
    TrainConfig,
    TrainResult,
    _judgements,
    build_groups,
    plot_curve,
    read_log,
    train,
)
from .errors import AdapterError

__all__ = [
    "ClientAnswerSampler",
    "OnlineConfig",
    "OnlineQuestion",
    "OnlineReport",
    "Samples",
    "ai_judge",
    "calibrate_consensus",
    "client_answer_sampler",
    "log_labels",
    "online_train",
]

STATE_VERSION = 1


class OnlineQuestion(BaseModel):
    """A training or held-out question: its text, an optional reference answer, and what the labeler checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    reference: str | None = None  # a ground-truth answer, used as a positive
    gold: Any = None  # JSON data for the labeler (the number, the accepted names, ...)


@dataclass
class Samples:
    """K sampled answers to one question and what getting them cost."""

    answers: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    call_id: str | None = None  # the call log's id when answers[0] is the call's choice 0 (for feedback)


AnswerSampler = Callable[[str, int, int], Samples]  # (question, k, round) -> k fresh samples for that round
Labeler = Callable[[OnlineQuestion, str], "bool | None"]  # (question, answer) -> correct? None = no label


@dataclass
class OnlineConfig:
    """How the rounds run; `train` and `adapter` configure each round's training and the model."""

    rounds: int = 2  # online rounds (the paper: 2-3)
    samples: int = 8  # fresh candidates per training question per round
    epochs_per_round: int = 2  # passes over the round's groups
    validation_fraction: float = 0.25  # training questions kept out of training, to choose `consensus` on
    consensus_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # the consensus weights tried on them (4: near majority vote)
    write_feedback: bool = True  # label the sampled calls in the client's call log, when it has one
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))

    def __post_init__(self) -> None:
        """Reject options that cannot run."""
        if self.rounds < 1 or self.samples < 1 or self.epochs_per_round < 1:
            raise AdapterError("rounds, samples and epochs_per_round must be >= 1")
        if not 0 <= self.validation_fraction < 1:
            raise AdapterError(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if not self.consensus_grid or min(self.consensus_grid) < 0:
            raise AdapterError("consensus_grid must hold at least one weight, all >= 0")

    def fingerprint(self, questions: Sequence[OnlineQuestion]) -> str:
        """A hash of the config and the questions, so a state file is never resumed by another run."""
        data = {"config": asdict(self), "questions": [q.model_dump(mode="json") for q in questions]}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class OnlineReport:
    """Per-round numbers (samples, tokens, cost, training, held-out accuracy) and where the adapter is."""

    rounds: list[dict[str, Any]]
    baseline: dict[str, float]
    adapter_path: str
    state_path: str

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


@dataclass
class _State:
    """What survives a crash: completed rounds, their reports, kept positives and hard negatives."""

    fingerprint: str
    completed: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    best_positive: dict[str, str] = field(default_factory=dict)
    hard_negatives: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> _State:
        """The saved state for this run, or a fresh one; a state of another run is an error."""
        if not path.is_file():
            return cls(fingerprint)
        data = json.loads(path.read_text())
        if data.get("version") != STATE_VERSION or data.get("fingerprint") != fingerprint:
            raise AdapterError(f"{path} belongs to another online run (other config or questions): remove it or pick another")
        data.pop("version")
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write the state atomically (temp file, then rename)."""
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=2) + "\n")
        temp.replace(path)


@dataclass
class ClientAnswerSampler:
    """`(question, k, round) -> Samples` through the SDK client's chat API, fresh per round and cached."""

    client: Any
    model: str
    messages: Sequence[dict[str, str]] = ()  # system prompt and few-shot turns before the question
    create_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, question: str, k: int, round_number: int) -> Samples:
        """k fresh answers for this round: with a cache, ask for n = round*k (earlier rounds' are cached) and keep the last k."""
        cached = getattr(getattr(self.client, "options", None), "cache", None) is not None
        response = self.client.chat.completions.create(
            model=self.model,
            messages=[*self.messages, {"role": "user", "content": question}],
            n=k * round_number if cached else k,
            **self.create_kwargs,
        )
        answers = [choice.message.content or "" for choice in response.choices][-k:]
        usage = response.usage
        share = len(answers) / max(len(response.choices), 1)  # usage covers every choice returned
        info = getattr(response, "blackbox", None)
        return Samples(
            answers,
            prompt_tokens=round(usage.prompt_tokens * share) if usage else 0,
            completion_tokens=round(usage.completion_tokens * share) if usage else 0,
            cost_usd=float(getattr(info, "cost_usd", 0.0) or 0.0),
            call_id=getattr(info, "call_id", None) if len(response.choices) == k else None,  # answers[0] is choice 0
        )


def client_answer_sampler(client: Any, model: str, *, messages: Sequence[dict[str, str]] = (), **create_kwargs: Any) -> ClientAnswerSampler:
    """An answer sampler for `online_train` on an SDK client (create_kwargs: temperature, max_tokens, stop, ...)."""
    return ClientAnswerSampler(client, model, list(messages), create_kwargs)


def ai_judge(client: Any, model: str, *, instructions: str = "Reply with yes or no only.") -> Labeler:
    """A labeler that asks a model (through the same client) whether an answer is correct."""

    def judge(item: OnlineQuestion, answer: str) -> bool:
        reference = f"\nA correct answer: {item.reference}" if item.reference else ""
        prompt = f"Question: {item.question}{reference}\nProposed answer: {answer}\nIs the proposed answer correct? {instructions}"
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=3)
        return (response.choices[0].message.content or "").strip().lower().startswith("yes")

    return judge


def log_labels(log_path: str | Path, *, high_reward: float = 0.5, low_reward: float = 0.0) -> Labeler:
    """A labeler from the call log's feedback: good, bad, or None for answers never judged."""
    good: set[tuple[str, str]] = set()
    bad: set[tuple[str, str]] = set()
    for record in read_log(log_path):
        messages = (record.get("request") or {}).get("messages") or []
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1], str):
            continue
        pos, neg = _judgements(record, high_reward, low_reward)
        good.update((users[-1], a.strip()) for a in pos)
        bad.update((users[-1], a.strip()) for a in neg)

    def label(item: OnlineQuestion, answer: str) -> bool | None:
        key = (item.question, answer.strip())
        return True if key in good else False if key in bad else None

    return label


def calibrate_consensus(
    adapter: Adapter, validation: Sequence[tuple[str, Sequence[str], Sequence[bool | None]]], grid: Sequence[float]
) -> tuple[float, float]:
    """The consensus weight from `grid` whose picks are right most often on (question, samples, labels)
    held out from training, and that accuracy; ties go to the weight nearest 1 (the paper's model)."""
    table = []
    for question, answers, labels in validation:
        raw = adapter.score_pairs([(question, a) for a in answers])
        copies = Counter(normalize_answer(a) for a in answers)
        table.append((raw, [math.log(copies[normalize_answer(a)]) for a in answers], labels))

    def accuracy(weight: float) -> float:
        right = 0
        for raw, log_copies, labels in table:
            best = max(range(len(raw)), key=lambda i: raw[i] + weight * log_copies[i])
            right += bool(labels[best])
        return right / max(len(table), 1)

    best = max(grid, key=lambda w: (accuracy(w), -abs(w - 1.0)))
    return best, accuracy(best)


def _pick(adapter: Adapter, question: str, answers: Sequence[str]) -> int:
    """The index of the adapter's choice among sampled answers."""
    scores = adapter.score(question, answers)
    return max(range(len(answers)), key=lambda i: scores[i])


def _evaluate_items(
    adapter: Adapter | None, items: Sequence[OnlineQuestion], sampled: dict[str, list[str]], labels: dict[str, list[bool | None]]
) -> dict[str, float]:
    """Held-out accuracy: one sample (the share of samples right), the adapter's pick (when there is one), any correct."""
    if not items:
        return {}
    single = sum(sum(map(bool, labels[q.question])) / max(len(labels[q.question]), 1) for q in items)
    oracle = sum(any(labels[q.question]) for q in items)
    out = {"single_accuracy": single / len(items), "oracle_accuracy": oracle / len(items)}
    if adapter is not None:
        picks = sum(bool(labels[q.question][_pick(adapter, q.question, sampled[q.question])]) for q in items)
        out["rerank_accuracy"] = picks / len(items)
    return out


class _Run:
    """One online run: the sampler, labeler, questions, config, and its files."""

    def __init__(
        self,
        sampler: AnswerSampler,
        label: Labeler,
        train_items: Sequence[OnlineQuestion],
        eval_items: Sequence[OnlineQuestion],
        config: OnlineConfig,
        out_dir: Path,
        state_path: Path,
        device: str | None,
    ) -> None:
        self.sampler, self.label, self.config, self.device = sampler, label, config, device
        self.train_items, self.val_items = _split_validation(list(train_items), config.validation_fraction, config.train.seed)
        self.eval_items = list(eval_items)
        self.out_dir, self.state_path = out_dir, state_path
        self.state = _State.load(state_path, config.fingerprint([*train_items, *self.eval_items]))
        self.eval_samples: dict[str, list[str]] = {}
        self.eval_labels: dict[str, list[bool | None]] = {}
        self.validation: list[tuple[str, list[str], list[bool | None]]] = []  # one entry per question and draw

    def checkpoint(self, number: int) -> Path:
        """The folder of round `number`'s adapter."""
        return self.out_dir / "checkpoints" / f"round-{number}"

    def adapter(self) -> Adapter:
        """The adapter after the last completed round (its checkpoint, or the final folder), or a fresh one."""
        if not self.state.completed:
            return Adapter.create(self.config.adapter, seed=self.config.train.seed, device=self.device)
        checkpoint = self.checkpoint(self.state.completed)
        return Adapter.load(checkpoint if checkpoint.exists() else self.out_dir, device=self.device)

    def sample_and_label(self, item: OnlineQuestion, round_number: int) -> tuple[Samples, list[bool | None]]:
        """K fresh samples for a question (this round's) and the labeler's verdict on each."""
        samples = self.sampler(item.question, self.config.samples, round_number)
        labels = [self.label(item, answer) for answer in samples.answers]
        return samples, labels

    def prepare_eval(self) -> None:
        """Sample and label the held-out questions once, and the validation questions once per round (cached afterwards).

        A validation question gets `rounds` disjoint draws of K samples, so the consensus weight is
        chosen on rounds x more picks than there are validation questions: one draw is too noisy.
        """
        for item in self.val_items:
            for number in range(1, self.config.rounds + 1):
                samples, labels = self.sample_and_label(item, number)
                self.validation.append((item.question, samples.answers, labels))
        for item in self.eval_items:
            samples, labels = self.sample_and_label(item, 1)
            self.eval_samples[item.question], self.eval_labels[item.question] = samples.answers, labels
        if not self.state.baseline:
            self.state.baseline = _evaluate_items(None, self.eval_items, self.eval_samples, self.eval_labels)

    def round_groups(self, adapter: Adapter, round_number: int, totals: dict[str, float]) -> list[RankingGroup]:
        """Sample, label and build this round's ranking groups (Algorithm 1's positives and negatives)."""
        groups: list[RankingGroup] = []
        for item in self.train_items:
            samples, labels = self.sample_and_label(item, round_number)
            totals["samples"] += len(samples.answers)
            totals["prompt_tokens"] += samples.prompt_tokens
            totals["completion_tokens"] += samples.completion_tokens
            totals["cost_usd"] += samples.cost_usd
            accepted = [a for a, ok in zip(samples.answers, labels) if ok]
            rejected = [a for a, ok in zip(samples.answers, labels) if ok is False]
            if round_number > 1 and samples.answers:
                pick = _pick(adapter, item.question, samples.answers)
                hard = self.state.hard_negatives.setdefault(item.question, [])
                if labels[pick] is False and samples.answers[pick].strip() not in hard:
                    hard.append(samples.answers[pick].strip())
            self.write_feedback(samples, labels, item)
            totals["accepted"] += len(accepted)
            positives = [*([item.reference] if item.reference else []), *accepted]
            if item.question in self.state.best_positive:
                positives.append(self.state.best_positive[item.question])
            negatives = [*rejected, *self.state.hard_negatives.get(item.question, [])]
            groups += build_groups(item.question, positives, negatives)
        return groups

    def write_feedback(self, samples: Samples, labels: list[bool | None], item: OnlineQuestion) -> None:
        """Label the returned answer (and give the reference) in the client's call log."""
        client = getattr(self.sampler, "client", None)
        log = getattr(getattr(client, "options", None), "log", None)
        if not (self.config.write_feedback and log is not None and samples.call_id and labels):
            return
        kwargs: dict[str, Any] = {"reference": item.reference} if item.reference else {}
        if labels[0] is not None:
            kwargs["label"] = "correct" if labels[0] else "incorrect"
        if kwargs:
            client.feedback(samples.call_id, **kwargs)

    def keep_best_positives(self, adapter: Adapter, groups: Sequence[RankingGroup]) -> None:
        """Remember, per question, the positive the trained adapter scores highest."""
        by_question: dict[str, list[str]] = {}
        for g in groups:
            by_question.setdefault(g.question, []).append(g.positive)
        for question, positives in by_question.items():
            scores = adapter.score_pairs([(question, p) for p in positives])
            self.state.best_positive[question] = positives[max(range(len(positives)), key=lambda i: scores[i])]

    def run_round(self, adapter: Adapter, number: int) -> dict[str, Any]:
        """One round: sample, label, train, evaluate; returns its report row."""
        totals: dict[str, float] = {"samples": 0, "accepted": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        groups = self.round_groups(adapter, number, totals)
        eval_groups = self.eval_groups()
        config = TrainConfig(**{**asdict(self.config.train), "epochs": self.config.epochs_per_round, "seed": self.config.train.seed + number})
        result: TrainResult = train(adapter, groups, config, eval_groups=eval_groups) if groups else TrainResult()
        self.keep_best_positives(adapter, groups)
        row: dict[str, Any] = {"round": number, "groups": len(groups), **totals, **result.final_metrics()}
        if self.validation:
            adapter.config.consensus, row["validation_accuracy"] = calibrate_consensus(adapter, self.validation, self.config.consensus_grid)
            row["consensus"] = adapter.config.consensus
        row.update(_evaluate_items(adapter, self.eval_items, self.eval_samples, self.eval_labels))
        row["loss_curve"] = [round(s["loss"], 4) for s in result.steps]
        return row

    def eval_groups(self) -> list[RankingGroup]:
        """Ranking groups of the held-out questions (their samples' labels), for ranking accuracy."""
        groups: list[RankingGroup] = []
        for item in self.eval_items:
            answers, labels = self.eval_samples[item.question], self.eval_labels[item.question]
            groups += build_groups(item.question, [a for a, ok in zip(answers, labels) if ok], [a for a, ok in zip(answers, labels) if ok is False])
        return groups

    def finish(self, adapter: Adapter) -> None:
        """Save the final adapter to the output folder with its card, curve and report; drop checkpoints."""
        last = self.state.rounds[-1] if self.state.rounds else {}
        adapter.metadata = {
            "name": self.out_dir.name,
            "trained_on": f"{len(self.train_items)} questions, {self.config.rounds} online rounds of {self.config.samples} samples each"
            + (f"; consensus {adapter.config.consensus:g} chosen on {len(self.val_items)} more" if self.val_items else ""),
            "recipe": {"rounds": self.config.rounds, "samples": self.config.samples, "epochs_per_round": self.config.epochs_per_round},
            "training": {**asdict(self.config.train), "epochs": self.config.epochs_per_round},
            "metrics": {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} | {
                f"baseline_{k}": v for k, v in self.state.baseline.items()
            },
        }
        adapter.save(self.out_dir)
        losses = [x for r in self.state.rounds for x in r["loss_curve"]]
        steps = [{"step": i + 1, "epoch": 0, "loss": v} for i, v in enumerate(losses)]
        evals = [
            {"epoch": r["round"], "pair_accuracy": r["pair_accuracy"], "top1_accuracy": r["top1_accuracy"]}
            for r in self.state.rounds
            if "pair_accuracy" in r
        ]
        plot_curve(TrainResult(steps=steps, evals=evals), self.out_dir / "curve.png", title=f"{self.out_dir.name}: online rounds")
        shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)


def _split_validation(items: list[OnlineQuestion], fraction: float, seed: int) -> tuple[list[OnlineQuestion], list[OnlineQuestion]]:
    """(trained on, validation): a seeded `fraction` of the training questions, at least one left to train."""
    count = min(round(len(items) * fraction), len(items) - 1)
    chosen = set(random.Random(seed).sample(range(len(items)), count)) if count > 0 else set()
    return [q for i, q in enumerate(items) if i not in chosen], [q for i, q in enumerate(items) if i in chosen]


def online_train(
    sampler: AnswerSampler,
    train_items: Sequence[OnlineQuestion],
    label: Labeler,
    out_dir: str | Path,
    *,
    eval_items: Sequence[OnlineQuestion] = (),
    config: OnlineConfig | None = None,
    state_path: str | Path | None = None,
    device: str | None = None,
) -> OnlineReport:
    """Run (or resume) the online rounds and save the adapter to out_dir; returns the per-round report."""
    config = config or OnlineConfig()
    if not train_items:
        raise AdapterError("online training needs at least one training question")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_file = Path(state_path) if state_path is not None else out / "online_state.json"
    run = _Run(sampler, label, train_items, eval_items, config, out, state_file, device)
    adapter = run.adapter()
    run.prepare_eval()
    for number in range(run.state.completed + 1, config.rounds + 1):
        row = run.run_round(adapter, number)
        adapter.save(run.checkpoint(number))
        run.state.rounds.append(row)
        run.state.completed = number
        run.state.save(state_file)
        if number > 1:
            shutil.rmtree(run.checkpoint(number - 1), ignore_errors=True)
    if run.checkpoint(config.rounds).exists():
        run.finish(adapter)
    report = OnlineReport(run.state.rounds, run.state.baseline, str(out), str(state_file))
    (out / "online_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
