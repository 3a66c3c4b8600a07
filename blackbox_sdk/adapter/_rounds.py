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
     (`calibrate_consensus`) and judge its picks there against majority vote's (`_verdict.py`),
     evaluate on held-out questions, save a checkpoint and the JSON state.
A crash loses at most the round in progress: `online_train` with the same state file picks up
after the last completed round.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError, BackendError
from ._curve import plot_curve
from ._folder import writable_target
from ._groups import RankingGroup, build_groups
from ._labelers import Labeler
from ._model import Adapter
from ._online_config import OnlineConfig, OnlineQuestion, OnlineReport
from ._confidence import choose_confidence
from ._picks import calibrate_and_judge, held_out_accuracy, pick
from ._sampling import AnswerSampler, Samples
from ._trainer import TrainConfig, TrainResult, train
from ._verdict import ONLINE_ADVICE, Verdict, announce, judge

STATE_VERSION = 1


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
            if path.exists():  # a folder: its first save, after a round's paid sampling, would fail
                raise AdapterError(f"the online run's state {path} is not a file: name a file, or leave state_path out")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # now, not at the first save, after a round's paid sampling
            except OSError as exc:
                raise AdapterError(f"can't keep the online run's state at {path}: {exc.strerror or exc}") from exc
            return cls(fingerprint)
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise AdapterError(f"can't read the online run's state {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # not UTF-8, or not JSON
            raise AdapterError(f"{path} is not an online run's state (not valid JSON: {exc}): remove it or pick another") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or data.get("fingerprint") != fingerprint:
            raise AdapterError(f"{path} belongs to another online run (other config or questions): remove it or pick another")
        data.pop("version")
        try:
            return cls(**data)
        except TypeError as exc:  # keys this version does not keep
            raise AdapterError(f"{path} is not an online run's state ({exc}): remove it or pick another") from exc

    def save(self, path: Path) -> None:
        """Write the state atomically (temp file, then rename)."""
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=2) + "\n")
        temp.replace(path)


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
        return Adapter.load(checkpoint if checkpoint.exists() else self.out_dir, device=self.device, shared=False)  # it trains: a base of its own

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
            self.state.baseline = held_out_accuracy(None, self.eval_items, self.eval_samples, self.eval_labels)

    def round_groups(self, adapter: Adapter, round_number: int, totals: dict[str, float]) -> list[RankingGroup]:
        """Sample, label and build this round's ranking groups (Algorithm 1's positives and negatives)."""
        groups: list[RankingGroup] = []
        for item in self.train_items:
            samples, labels = self.sample_and_label(item, round_number)
            _add_to_totals(totals, samples, labels)
            if round_number > 1 and samples.answers:
                self.keep_wrong_pick(adapter, item.question, samples.answers, labels)
            self.write_feedback(samples, labels, item)
            positives = [*([item.reference] if item.reference else []), *(a for a, ok in zip(samples.answers, labels) if ok)]
            if item.question in self.state.best_positive:
                positives.append(self.state.best_positive[item.question])
            rejected = [a for a, ok in zip(samples.answers, labels) if ok is False]
            negatives = [*rejected, *self.state.hard_negatives.get(item.question, [])]
            groups += build_groups(item.question, positives, negatives)
        return groups

    def keep_wrong_pick(self, adapter: Adapter, question: str, answers: list[str], labels: list[bool | None]) -> None:
        """Keep the previous round's adapter's pick as a hard negative when it is labeled wrong."""
        choice = pick(adapter, question, answers)
        hard = self.state.hard_negatives.setdefault(question, [])
        if labels[choice] is False and answers[choice].strip() not in hard:
            hard.append(answers[choice].strip())

    def write_feedback(self, samples: Samples, labels: list[bool | None], item: OnlineQuestion) -> None:
        """Label the returned answer (and give the reference) in the client's call log."""
        client: Any = getattr(self.sampler, "client", None)
        log = getattr(getattr(client, "options", None), "log", None)
        if not (self.config.write_feedback and log is not None and samples.call_id and labels):
            return
        kwargs: dict[str, Any] = {"reference": item.reference} if item.reference else {}
        if labels[0] is not None:
            kwargs["label"] = "correct" if labels[0] else "incorrect"
        if kwargs:
            log.feedback(samples.call_id, **kwargs)  # the log's own: an async client's `feedback` is a coroutine

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
            adapter.config.consensus, row["validation_accuracy"], verdict = calibrate_and_judge(adapter, self.validation, self.config.consensus_grid)
            row["consensus"] = adapter.config.consensus
            row["validation_majority_accuracy"], row["validation_questions"] = verdict.majority_accuracy, verdict.questions
            row["verdict"] = verdict.to_dict()
            adapter.config.confidence, adaptive = choose_confidence(adapter, self.validation)
            row.update(adaptive)
        row.update(held_out_accuracy(adapter, self.eval_items, self.eval_samples, self.eval_labels))
        row["loss_curve"] = [round(s["loss"], 4) for s in result.steps]
        return row

    def eval_groups(self) -> list[RankingGroup]:
        """Ranking groups of the held-out questions (their samples' labels), for ranking accuracy."""
        groups: list[RankingGroup] = []
        for item in self.eval_items:
            answers, labels = self.eval_samples[item.question], self.eval_labels[item.question]
            groups += build_groups(item.question, [a for a, ok in zip(answers, labels) if ok], [a for a, ok in zip(answers, labels) if ok is False])
        return groups

    def complete_round(self, adapter: Adapter, number: int) -> None:
        """Run round `number`, checkpoint its adapter and save the state, so a crash resumes after it."""
        row = self.run_round(adapter, number)
        adapter.save(self.checkpoint(number))
        self.state.rounds.append(row)
        self.state.completed = number
        self.state.save(self.state_path)
        if number > 1:
            shutil.rmtree(self.checkpoint(number - 1), ignore_errors=True)

    def finish(self, adapter: Adapter) -> None:
        """Save the final adapter to the output folder with its card, curve and report; drop checkpoints."""
        adapter.metadata = self.metadata(adapter)
        adapter.save(self.out_dir)
        plot_curve(_rounds_curve(self.state.rounds), self.out_dir / "curve.png", title=f"{self.out_dir.name}: online rounds")
        shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)

    def verdict(self) -> Verdict:
        """The last completed round's verdict on the validation questions (not judged without any)."""
        last = self.state.rounds[-1] if self.state.rounds else {}
        return Verdict.from_dict(last["verdict"]) if "verdict" in last else judge([], where="validation", advice=ONLINE_ADVICE)

    def metadata(self, adapter: Adapter) -> dict[str, Any]:
        """The final adapter's card data: what it was trained on, the recipe, the last round's and the baseline's metrics."""
        last = self.state.rounds[-1] if self.state.rounds else {}
        return {
            "name": self.out_dir.name,
            "trained_on": f"{len(self.train_items)} questions, {self.config.rounds} online rounds of {self.config.samples} samples each"
            + (f"; consensus {adapter.config.consensus:g} chosen on {len(self.val_items)} more" if self.val_items else ""),
            "recipe": {"rounds": self.config.rounds, "samples": self.config.samples, "epochs_per_round": self.config.epochs_per_round},
            "training": {**asdict(self.config.train), "epochs": self.config.epochs_per_round},
            "metrics": {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} | {
                f"baseline_{k}": v for k, v in self.state.baseline.items()
            },
            "verdict": self.verdict().to_dict(),
        }


def _add_to_totals(totals: dict[str, float], samples: Samples, labels: list[bool | None]) -> None:
    """Count one question's samples, accepted answers, tokens and cost into the round's totals."""
    totals["samples"] += len(samples.answers)
    totals["accepted"] += sum(1 for ok in labels if ok)
    totals["prompt_tokens"] += samples.prompt_tokens
    totals["completion_tokens"] += samples.completion_tokens
    totals["cost_usd"] += samples.cost_usd


def _rounds_curve(rounds: list[dict[str, Any]]) -> TrainResult:
    """The rounds' losses, one after the other, and their held-out ranking accuracy, for `plot_curve`."""
    losses = [x for r in rounds for x in r["loss_curve"]]
    steps = [{"step": i + 1, "epoch": 0, "loss": v} for i, v in enumerate(losses)]
    evals = [
        {"epoch": r["round"], "pair_accuracy": r["pair_accuracy"], "top1_accuracy": r["top1_accuracy"]}
        for r in rounds
        if "pair_accuracy" in r
    ]
    return TrainResult(steps=steps, evals=evals)


def _split_validation(items: list[OnlineQuestion], fraction: float, seed: int) -> tuple[list[OnlineQuestion], list[OnlineQuestion]]:
    """(trained on, validation): a seeded `fraction` of the training questions, at least one left to train."""
    count = min(round(len(items) * fraction), len(items) - 1)
    chosen = set(random.Random(seed).sample(range(len(items)), count)) if count > 0 else set()
    return [q for i, q in enumerate(items) if i not in chosen], [q for i, q in enumerate(items) if i in chosen]


def check_encoder(config: OnlineConfig) -> None:
    """AdapterError before any sampling when the base encoder is not installed (the default's mpnet comes in five packages)."""
    try:
        config.adapter.base_path()
    except BackendError as exc:
        lighter = "or train on the packaged all-MiniLM-L6-v2 (config=RECIPES['minilm-lora'].config())"
        raise AdapterError(f"the online rounds' encoder is not installed: {exc}; {lighter}") from None


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
    check_encoder(config)
    out = writable_target(out_dir)  # a file, a link or a folder of the user's files is refused before any sampling
    out.mkdir(parents=True, exist_ok=True)  # absolute: `.` stays this folder when its last save renames the working directory away
    state_file = Path(state_path) if state_path is not None else out / "online_state.json"
    run = _Run(sampler, label, train_items, eval_items, config, out, state_file, device)
    adapter = None
    if run.state.completed < config.rounds:  # a finished run samples nothing and loads no model again
        adapter = run.adapter()
        run.prepare_eval()
        for number in range(run.state.completed + 1, config.rounds + 1):
            run.complete_round(adapter, number)
    if run.checkpoint(config.rounds).exists():
        run.finish(adapter or run.adapter())
    verdict = run.verdict()
    report = OnlineReport(run.state.rounds, run.state.baseline, str(out), str(state_file), verdict)
    (out / "online_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    announce(verdict, "online_train")
    return report
