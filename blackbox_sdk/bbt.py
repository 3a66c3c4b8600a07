"""Black-Box Tuning (Sun et al., ICML 2022): search a soft prompt with CMA-ES, forward calls only.

The search runs in z in R^d; the soft prompt is `p = A z + p0` (L vectors of the model's hidden
size H), with A a fixed random normal map d -> L*H of std `alpha * std_e / (sqrt(d) * sigma0)` as
BBTv2 scales it (std_e: std of the word-embedding matrix), so A z starts with per-entry std about
`alpha * std_e`. Each CMA-ES generation scores the whole population on the training set in
batched forwards (popsize x examples sequences, no gradients) and reads only the verbalizer
tokens' log-probs at the answer position.

Counting: one *call* is one candidate evaluated on the whole training set (the paper's unit), so a
generation costs `popsize` calls and `budget` caps them; dev evaluations (one call each, on the dev
set) are counted apart in `dev_calls`. Every evaluation is announced to `on_calls(n_calls,
n_tokens)` before it runs, n_tokens being the prompt tokens a server would bill; a budget hook may
raise there to stop the search (the checkpoint written so far stays resumable). When the target is
an SDK client with a budget or a call log, each evaluation is also one call to them (`ClientMeter`):
reserved before its forward pass, settled after, logged with route "bbt".

Checkpoints hold no pickle: JSON (the fitness values CMA-ES was told, history, counters) plus
safetensors (mean, best z). Resuming re-creates the CMA-ES with the same seed and replays ask/tell
with the stored fitness values, which rebuilds its state exactly without a forward call; the
replayed mean is checked against the stored one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file

from .bbt_meter import ClientMeter, EvaluationKind
from .errors import TuningError
from .soft_prompt import (
    EncodedExamples,
    Placement,
    PromptTemplate,
    Scorer,
    SoftPrompt,
    resolve_target,
)

__all__ = [
    "BBTConfig",
    "ClientMeter",
    "DevRecord",
    "GenerationRecord",
    "SoftPrompt",
    "Tuner",
    "build_projection",
    "population_losses",
    "sample_few_shot",
]

Example = tuple[str, str]  # (text, label)
OnCalls = Callable[[int, int], None]
STATE_JSON = "bbt_state.json"
STATE_TENSORS = "bbt_state.safetensors"
STATE_FORMAT = 1
_RESUME_IRRELEVANT = {"budget", "dev_every", "batch_size", "checkpoint_dir", "checkpoint_every", "progress"}


class BBTConfig(BaseModel):
    """Options of a black-box tuning run; defaults are the paper's (official code) settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: int = Field(500, ge=1)  # dimension of the search space z
    prompt_len: int = Field(50, ge=1)  # L: soft-prompt vectors
    popsize: int = Field(20, ge=2)  # CMA-ES population per generation
    sigma0: float = Field(1.0, gt=0)  # CMA-ES initial step size (the ICML paper: 0.5 with bounds)
    alpha: float = Field(1.0, gt=0)  # A's scale: A z starts with per-entry std ~ alpha * std_e
    bounds: tuple[float, float] | None = None  # box on every z coordinate, e.g. (-5, 5); None: unbounded
    budget: int = Field(
        8000, ge=1
    )  # training calls (candidate x whole train set); a run stops at budget // popsize generations
    loss: Literal["ce", "hinge", "neg_acc"] = "ce"  # cross entropy, multi-class hinge, or minus accuracy
    margin: float = Field(2.0, gt=0)  # hinge margin, in log-prob units
    p0: Literal["zeros", "vocab"] | Path = "zeros"  # offset: zeros, word embeddings, or a saved SoftPrompt folder
    p0_words: str | None = (
        None  # with p0="vocab": text whose token embeddings (cycled to L) start the prompt; None: random tokens
    )
    placement: Placement = "prefix"  # where the prompt goes: prefix (paper), after_text or suffix (KV cache reused)
    dev_every: int = Field(100, ge=1)  # training calls between dev evaluations (the paper: 100)
    seed: int = 0  # seeds A, random p0 words and CMA-ES sampling
    batch_size: int = Field(256, ge=1)  # sequences per forward pass
    checkpoint_dir: Path | None = None  # where the resumable CMA-ES state goes; None: no checkpoints
    checkpoint_every: int = Field(10, ge=1)  # generations between checkpoints
    progress: bool = True  # tqdm bar with the best loss and dev accuracy

    @model_validator(mode="after")
    def _check(self) -> BBTConfig:
        """Refuse a budget below one generation and inverted bounds."""
        if self.budget < self.popsize:
            raise TuningError(f"budget ({self.budget} calls) is below one generation (popsize {self.popsize})")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise TuningError(f"bounds must be (low, high) with low < high, got {self.bounds}")
        return self


@dataclass(frozen=True)
class GenerationRecord:
    """One CMA-ES generation: calls so far, this generation's best and mean loss, the best so far, sigma."""

    calls: int
    best_loss: float
    mean_loss: float
    best_so_far: float
    sigma: float
    seconds: float


@dataclass(frozen=True)
class DevRecord:
    """One dev evaluation of a generation's best candidate."""

    calls: int
    accuracy: float
    loss: float
    seconds: float


@dataclass
class _Best:
    """The selected candidate: best dev accuracy (ties: lower dev loss), or lowest train loss without dev."""

    z: np.ndarray
    train_loss: float
    train_accuracy: float
    dev_accuracy: float | None
    dev_loss: float | None
    calls: int
    seconds: float

    def beaten_by(self, accuracy: float | None, loss: float | None, train_loss: float) -> bool:
        """Whether a new candidate's scores beat this one's."""
        if accuracy is None or loss is None or self.dev_accuracy is None or self.dev_loss is None:
            return train_loss < self.train_loss
        return (accuracy, -loss) > (self.dev_accuracy, -self.dev_loss)


@dataclass
class _State:
    """Everything the search loop changes; all of it goes into a checkpoint."""

    es: Any
    fitness: list[list[float]] = field(default_factory=list)  # what CMA-ES was told, per generation
    calls: int = 0
    dev_calls: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    generations: list[GenerationRecord] = field(default_factory=list)
    dev: list[DevRecord] = field(default_factory=list)
    best: _Best | None = None


class _Normal:
    """CMA-ES's private N(0, 1) source, so the search neither reads nor moves numpy's global random state."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, count: int, dimension: int) -> np.ndarray:
        """A [count, dimension] array of standard normal numbers."""
        return self._rng.standard_normal((count, dimension))


# ---------------------------------------------------------------- pieces


def build_projection(
    d: int, prompt_len: int, hidden: int, *, std_e: float, alpha: float, sigma: float, seed: int
) -> torch.Tensor:
    """A: [L*H, d] float32 normal with std alpha * std_e / (sqrt(d) * sigma), from a seeded CPU generator."""
    generator = torch.Generator().manual_seed(seed)
    std = alpha * std_e / (math.sqrt(d) * sigma)
    return torch.randn(prompt_len * hidden, d, generator=generator) * std  # [L*H, d]


def population_losses(
    logprobs: torch.Tensor, labels: torch.Tensor, loss: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [P], accuracy [P]) from label log-probs [P, N, C] and class indexes [N], renormalised over the labels."""
    scores = torch.log_softmax(logprobs.float(), dim=-1)  # [P, N, C]
    target = labels.to(scores.device).expand(scores.shape[:2])  # [P, N]
    accuracy = (scores.argmax(-1) == target).float().mean(-1)  # [P]
    true = scores.gather(-1, target[..., None]).squeeze(-1)  # [P, N]
    if loss == "ce":
        return -true.mean(-1), accuracy
    if loss == "hinge":  # Crammer-Singer: the true label must beat the best other one by the margin
        others = scores.masked_fill(torch.nn.functional.one_hot(target, scores.shape[-1]).bool(), float("-inf"))
        return torch.relu(margin - (true - others.max(-1).values)).mean(-1), accuracy
    return -accuracy, accuracy


def _checked_examples(data: Sequence[Any], labels: Sequence[str], name: str, *, balanced: bool) -> list[Example]:
    """(text, label) pairs with non-empty texts and known labels; balanced over every label when asked."""
    if not data:
        raise TuningError(f"the {name} set is empty")
    pairs: list[Example] = []
    for i, item in enumerate(data):
        pair = isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2
        if not (pair and isinstance(item[0], str) and isinstance(item[1], str)):
            raise TuningError(f"{name}[{i}] must be a (text, label) pair of strings, got {item!r}")
        if not item[0].strip():
            raise TuningError(f"{name}[{i}] has an empty text")
        if item[1] not in labels:
            raise TuningError(f"{name}[{i}] has label {item[1]!r}, not one of the verbalizer's {list(labels)}")
        pairs.append((item[0], item[1]))
    counts = {label: sum(1 for _, y in pairs if y == label) for label in labels}
    if balanced and len(set(counts.values())) != 1:
        raise TuningError(f"the {name} set is unbalanced ({counts}); use the same number of examples per label")
    return pairs


def sample_few_shot(examples: Sequence[Example], k: int = 16, *, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Disjoint k-per-label train and dev sets drawn from a labelled pool, as the paper builds them."""
    by_label: dict[str, list[Example]] = {}
    for text, label in examples:
        by_label.setdefault(label, []).append((text, label))
    short = {label: len(items) for label, items in by_label.items() if len(items) < 2 * k}
    if short:
        raise TuningError(f"need {2 * k} examples per label for k={k}, these have fewer: {short}")
    rng = random.Random(seed)
    train, dev = [], []
    for label in sorted(by_label):
        items = rng.sample(by_label[label], 2 * k)
        train += items[:k]
        dev += items[k:]
    return train, dev


# ---------------------------------------------------------------- the tuner


class Tuner:
    """Tunes a soft prompt for a classification template on a target that takes input embeddings."""

    def __init__(
        self,
        target: Any,
        *,
        template: str,
        verbalizer: Mapping[str, str],
        train: Sequence[Example],
        dev: Sequence[Example] | None = None,
        config: BBTConfig | None = None,
        on_calls: OnCalls | None = None,
    ) -> None:
        self.config = config or BBTConfig()
        self.target = target
        self.scorer: Scorer = resolve_target(target, batch_size=self.config.batch_size)
        self.template = PromptTemplate(template, verbalizer, self.scorer.tokenizer, self.config.placement)
        self.train = _checked_examples(train, self.template.labels, "train", balanced=True)
        self.dev = None if dev is None else _checked_examples(dev, self.template.labels, "dev", balanced=False)
        self._train = self._encode(self.train)
        self._dev = None if self.dev is None else self._encode(self.dev)
        self.on_calls = on_calls
        self.meter = ClientMeter.of(target)  # the client's budget and call log, if it has either
        table = self.scorer.embedding_table().detach()
        self.hidden = int(table.shape[1])
        self.std_e = float(table.float().std())
        self.p0 = self._initial_prompt(table)  # [L, H] float32 on the scorer's device
        self.projection = build_projection(
            self.config.d,
            self.config.prompt_len,
            self.hidden,
            std_e=self.std_e,
            alpha=self.config.alpha,
            sigma=self.config.sigma0,
            seed=self.config.seed,
        ).to(self.scorer.device)  # [L*H, d]
        self.history: list[GenerationRecord] = []
        self.dev_history: list[DevRecord] = []

    def _encode(self, data: Sequence[Example]) -> EncodedExamples:
        """Token ids and class indexes of a checked data set."""
        return self.template.encode([t for t, _ in data], [y for _, y in data])

    def _initial_prompt(self, table: torch.Tensor) -> torch.Tensor:
        """p0 [L, H]: zeros, word embeddings (chosen or random words), or a saved prompt's embeds."""
        length, p0 = self.config.prompt_len, self.config.p0
        if p0 == "zeros":
            return torch.zeros(length, self.hidden, device=self.scorer.device)
        if p0 == "vocab":
            ids = self._p0_token_ids(table.shape[0])
            return table[torch.tensor(ids, device=table.device)].float().to(self.scorer.device)
        saved = SoftPrompt.load(p0)
        if tuple(saved.embeds.shape) != (length, self.hidden):
            raise TuningError(f"p0 {p0} has shape {list(saved.embeds.shape)}, this run needs [{length}, {self.hidden}]")
        return saved.embeds.to(self.scorer.device)

    def _p0_token_ids(self, vocab: int) -> list[int]:
        """L token ids: p0_words' tokens cycled to L, or L random non-special tokens (seeded)."""
        length = self.config.prompt_len
        if self.config.p0_words is not None:
            ids = self.scorer.tokenizer.encode(self.config.p0_words, add_special_tokens=False)
            if not ids:
                raise TuningError("p0_words has no tokens")
            return [ids[i % len(ids)] for i in range(length)]
        special = set(self.scorer.tokenizer.all_special_ids)
        rng = random.Random(self.config.seed)
        return rng.sample([i for i in range(vocab) if i not in special], length)

    # ------------------------------------------------------------ scoring

    def prompts(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Soft prompts [P, L, H] (float32) for search points z [P, d]: A z + p0."""
        zs = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.scorer.device).reshape(-1, self.config.d)
        return (zs @ self.projection.T).reshape(-1, self.config.prompt_len, self.hidden) + self.p0  # [P, L, H]

    def _score(
        self, kind: EvaluationKind, prompts: torch.Tensor, examples: EncodedExamples, loss: str
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss [P], accuracy [P], prompt tokens billed) of one evaluation of prompts [P, L, H]: P calls, hook, meter."""
        calls, prompt_len = int(prompts.shape[0]), int(prompts.shape[1])
        tokens = calls * self.scorer.tokens_sent(prompt_len, examples)
        if self.on_calls is not None:
            self.on_calls(calls, tokens)
        with self._metered(kind, calls, len(examples), prompt_len, tokens):
            logprobs = self.scorer.label_logprobs(prompts, examples, self.template.label_token_ids)  # [P, N, C]
        losses, accuracy = population_losses(logprobs, torch.tensor(examples.labels), loss, self.config.margin)
        return losses, accuracy, tokens

    def _metered(
        self, kind: EvaluationKind, calls: int, examples: int, prompt_len: int, tokens: int
    ) -> AbstractContextManager[None]:
        """The client meter's call around one forward pass, or nothing when the target has no budget or log."""
        if self.meter is None:
            return nullcontext()
        return self.meter.call(kind, calls=calls, examples=examples, prompt_len=prompt_len, tokens=tokens)

    def score_population(self, z: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [P], accuracy [P]) of search points z [P, d] on the training set: one batched evaluation, P calls."""
        loss, accuracy, _ = self._score("train", self.prompts(z), self._train, self.config.loss)
        return loss, accuracy

    def evaluate(self, data: Sequence[Example], prompt: SoftPrompt | torch.Tensor) -> dict[str, float]:
        """Accuracy and cross entropy of one soft prompt (or embeds [L, H]) on labelled data: one call."""
        checked = self._encode(_checked_examples(data, self.template.labels, "data", balanced=False))
        embeds = prompt.embeds if isinstance(prompt, SoftPrompt) else prompt
        loss, accuracy, _ = self._score("evaluate", embeds[None].float(), checked, "ce")
        return {"accuracy": float(accuracy[0]), "loss": float(loss[0])}

    # ------------------------------------------------------------ the search

    def fit(self, *, resume: bool = True) -> SoftPrompt:
        """Run CMA-ES until the budget is spent and return the selected soft prompt (resuming a checkpoint if any)."""
        from tqdm.auto import tqdm

        state = self._resumed() if resume else None
        state = state or _State(es=self._new_es())
        self.history, self.dev_history = state.generations, state.dev
        started = time.perf_counter() - state.elapsed
        generations_left = self.config.budget // self.config.popsize - len(state.fitness)
        with tqdm(
            total=self.config.budget, initial=state.calls, unit="call", desc="BBT", disable=not self.config.progress
        ) as bar:
            for step in range(generations_left):
                self._generation(state, started, last=step == generations_left - 1)
                bar.update(self.config.popsize)
                bar.set_postfix(self._postfix(state))
                if self.config.checkpoint_dir is not None and (step + 1) % self.config.checkpoint_every == 0:
                    self._save(state)
        if state.best is None:
            raise TuningError("the budget allows no generation beyond the checkpoint; raise budget to continue")
        if self.config.checkpoint_dir is not None:
            self._save(state)
        return self._result(state, state.best)

    def _new_es(self) -> Any:
        """A fresh CMA-ES at z = 0 with its own seeded normal source."""
        import cma

        bounds = [None, None] if self.config.bounds is None else list(self.config.bounds)
        options = {
            "popsize": self.config.popsize,
            "bounds": bounds,
            "randn": _Normal(self.config.seed),
            "seed": float("nan"),
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        return cma.CMAEvolutionStrategy(np.zeros(self.config.d), self.config.sigma0, options)

    def _generation(self, state: _State, started: float, *, last: bool) -> None:
        """Ask, score the population on the train set in one batched evaluation, tell; dev-evaluate when due."""
        solutions = state.es.ask()
        losses, accuracy, tokens = self._score("train", self.prompts(np.stack(solutions)), self._train, self.config.loss)
        state.tokens += tokens
        fitness = [float(v) for v in losses]
        state.es.tell(solutions, fitness)
        state.fitness.append(fitness)
        before, state.calls = state.calls, state.calls + self.config.popsize
        seconds = time.perf_counter() - started
        state.elapsed = seconds
        winner = int(np.argmin(fitness))
        best_so_far = min(fitness[winner], state.generations[-1].best_so_far if state.generations else math.inf)
        state.generations.append(
            GenerationRecord(
                state.calls, fitness[winner], float(np.mean(fitness)), best_so_far, float(state.es.sigma), seconds
            )
        )
        due = state.calls // self.config.dev_every > before // self.config.dev_every or last
        if due or self._dev is None:
            self._select(state, np.asarray(solutions[winner]), fitness[winner], float(accuracy[winner]), seconds)

    def _select(self, state: _State, z: np.ndarray, train_loss: float, train_accuracy: float, seconds: float) -> None:
        """Dev-evaluate a candidate (when there is a dev set) and keep it if it beats the selected one."""
        dev_accuracy = dev_loss = None
        if self._dev is not None:
            loss, accuracy, tokens = self._score("dev", self.prompts(z[None]), self._dev, "ce")
            state.tokens += tokens
            state.dev_calls += 1
            dev_accuracy, dev_loss = float(accuracy[0]), float(loss[0])
            state.dev.append(DevRecord(state.calls, dev_accuracy, dev_loss, seconds))
        if state.best is None or state.best.beaten_by(dev_accuracy, dev_loss, train_loss):
            state.best = _Best(z.copy(), train_loss, train_accuracy, dev_accuracy, dev_loss, state.calls, seconds)

    def _postfix(self, state: _State) -> dict[str, str]:
        """The progress bar's best train loss and best dev accuracy."""
        shown = {"loss": f"{state.generations[-1].best_so_far:.4f}"}
        if state.best is not None and state.best.dev_accuracy is not None:
            shown["dev_acc"] = f"{state.best.dev_accuracy:.3f}"
        return shown

    def _result(self, state: _State, best: _Best) -> SoftPrompt:
        """The selected candidate as a SoftPrompt with its metadata and scores."""
        scores = {
            "train_loss": best.train_loss,
            "train_accuracy": best.train_accuracy,
            "calls": float(state.calls),
            "dev_calls": float(state.dev_calls),
            "tokens": float(state.tokens),
            "calls_to_best": float(best.calls),
            "seconds": state.elapsed,
            "seconds_to_best": best.seconds,
        }
        if best.dev_accuracy is not None and best.dev_loss is not None:
            scores |= {"dev_accuracy": best.dev_accuracy, "dev_loss": best.dev_loss}
        return SoftPrompt.create(
            self.prompts(best.z[None])[0].cpu(),
            z=torch.as_tensor(best.z, dtype=torch.float32),
            target=self.target,
            model_id=self.scorer.model_id,
            template=self.template.template,
            verbalizer=self.template.verbalizer,
            placement=self.config.placement,
            d=self.config.d,
            seed=self.config.seed,
            scores=scores,
            config=self.config.model_dump(mode="json"),
        )

    # ------------------------------------------------------------ checkpoints

    def _fingerprint(self) -> str:
        """A hash of everything a checkpoint must agree on to be resumed (not the budget or bookkeeping)."""
        settings = self.config.model_dump(mode="json", exclude=_RESUME_IRRELEVANT)
        what = {
            "config": settings,
            "model": self.scorer.model_id,
            "template": self.template.template,
            "verbalizer": self.template.verbalizer,
            "train": self._train.key,
            "dev": self._dev.key if self._dev else None,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def _save(self, state: _State) -> None:
        """Write the checkpoint (JSON + safetensors) atomically into checkpoint_dir."""
        folder = Path(str(self.config.checkpoint_dir))
        folder.mkdir(parents=True, exist_ok=True)
        best = None if state.best is None else {k: v for k, v in dataclasses.asdict(state.best).items() if k != "z"}
        document = {
            "format": STATE_FORMAT,
            "fingerprint": self._fingerprint(),
            "fitness": state.fitness,
            "calls": state.calls,
            "dev_calls": state.dev_calls,
            "tokens": state.tokens,
            "elapsed": state.elapsed,
            "sigma": float(state.es.sigma),
            "generations": [dataclasses.asdict(g) for g in state.generations],
            "dev": [dataclasses.asdict(r) for r in state.dev],
            "best": best,
        }
        tensors = {"mean": torch.as_tensor(np.asarray(state.es.mean), dtype=torch.float64)}
        if state.best is not None:
            tensors["best_z"] = torch.as_tensor(state.best.z, dtype=torch.float64)
        save_file(tensors, str(folder / (STATE_TENSORS + ".tmp")))
        (folder / (STATE_JSON + ".tmp")).write_text(json.dumps(document))
        os.replace(folder / (STATE_TENSORS + ".tmp"), folder / STATE_TENSORS)
        os.replace(folder / (STATE_JSON + ".tmp"), folder / STATE_JSON)

    def _resumed(self) -> _State | None:
        """The state of the checkpoint in checkpoint_dir rebuilt by replay, or None when there is none."""
        folder = self.config.checkpoint_dir
        if folder is None or not (folder / STATE_JSON).is_file():
            return None
        document = json.loads((folder / STATE_JSON).read_text())
        if document.get("format") != STATE_FORMAT or document.get("fingerprint") != self._fingerprint():
            raise TuningError(f"the checkpoint in {folder} is for other settings or data; use another checkpoint_dir")
        tensors = load_file(str(folder / STATE_TENSORS))
        state = _State(
            es=self._replayed(document["fitness"], tensors["mean"].numpy(), document["sigma"]),
            fitness=document["fitness"],
            calls=document["calls"],
            dev_calls=document["dev_calls"],
            tokens=document["tokens"],
            elapsed=document["elapsed"],
            generations=[GenerationRecord(**g) for g in document["generations"]],
            dev=[DevRecord(**r) for r in document["dev"]],
        )
        if document["best"] is not None:
            state.best = _Best(z=tensors["best_z"].numpy(), **document["best"])
        return state

    def _replayed(self, fitness: list[list[float]], mean: np.ndarray, sigma: float) -> Any:
        """A fresh CMA-ES told the stored fitness values again, generation by generation; checked after."""
        es = self._new_es()
        for values in fitness:
            es.tell(es.ask(), values)
        if not (np.allclose(es.mean, mean, rtol=0, atol=1e-12) and math.isclose(es.sigma, sigma, rel_tol=1e-12)):
            raise TuningError(
                "replaying the checkpoint did not rebuild the same CMA-ES state (another cma or numpy version?)"
            )
        return es

    # ------------------------------------------------------------ reporting

    def plot(self, path: str | Path) -> Path:
        """Write a convergence plot (PNG): train loss per generation and best so far, dev accuracy; returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not self.history:
            raise TuningError("nothing to plot yet: call fit() first")
        figure = Figure(figsize=(7, 4), dpi=120)
        FigureCanvasAgg(figure)
        axis = figure.add_subplot()
        calls = [g.calls for g in self.history]
        axis.plot(calls, [g.mean_loss for g in self.history], color="0.6", label="population mean loss")
        axis.plot(calls, [g.best_so_far for g in self.history], color="tab:blue", label="best train loss")
        axis.set_xlabel("training calls")
        axis.set_ylabel(f"train loss ({self.config.loss})")
        if self.dev_history:
            dev_axis = axis.twinx()
            dev_axis.plot(
                [r.calls for r in self.dev_history],
                [r.accuracy for r in self.dev_history],
                "o-",
                color="tab:orange",
                label="dev accuracy",
            )
            dev_axis.set_ylabel("dev accuracy")
            dev_axis.set_ylim(0, 1)
            dev_axis.legend(loc="upper right")
        axis.legend(loc="upper left")
        axis.set_title(
            f"BBT on {self.scorer.model_id}: d={self.config.d}, L={self.config.prompt_len}, {self.config.placement}"
        )
        figure.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
        return out
