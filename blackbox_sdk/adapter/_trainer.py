"""Training the adapter on ranking groups: the config, the loop (AdamW, warm-up, grad clip) and its metrics."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import AdapterError
from ._energy import import_torch, needs_grad_scaler
from ._groups import RankingGroup
from ._loss import LOSSES, group_loss
from ._model import Adapter


@dataclass
class TrainConfig:
    """How to train an adapter; the defaults suit all-MiniLM-L6-v2 with its top 2 layers training."""

    epochs: int = 3  # passes over the training groups
    lr: float = 5e-5  # AdamW learning rate after warm-up
    weight_decay: float = 0.01  # AdamW weight decay (the paper's code)
    warmup_steps: int = 10  # linear warm-up, then constant (the paper's code)
    groups_per_batch: int = 8  # questions' groups per optimiser step
    max_negatives: int = 7  # negatives per group per step, drawn at random when there are more
    loss: str = "nce"  # "nce" (the paper, Eq. 2) or "batch" (the official code's form)
    temperature: float = 1.0  # scores are divided by this inside the loss
    l2: float = 0.01  # weight of the energy L2 term mean(g^2), which keeps scores near 0
    grad_clip: float = 1.0  # max gradient norm
    eval_fraction: float = 0.2  # share of questions held out by `split_groups`
    seed: int = 0  # shuffling, negative draws and the split
    progress: bool = True  # a tqdm progress bar per epoch

    def __post_init__(self) -> None:
        """Reject options that cannot train, before any model work."""
        if self.loss not in LOSSES:
            raise AdapterError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.epochs < 0 or self.groups_per_batch < 1 or self.max_negatives < 1 or self.warmup_steps < 0:
            raise AdapterError("epochs and warmup_steps must be >= 0, groups_per_batch and max_negatives >= 1")
        if not (self.lr > 0 and self.temperature > 0 and self.l2 >= 0 and self.grad_clip > 0):
            raise AdapterError("lr, temperature and grad_clip must be > 0 and l2 >= 0")
        infinite = [name for name in ("lr", "temperature", "l2") if not math.isfinite(getattr(self, name))]
        if infinite:  # an infinite l2 "diverged: lower the learning rate"; an infinite temperature trained on no gradient
            raise AdapterError(f"{infinite[0]} must be finite, not {getattr(self, infinite[0])}")
        if not 0 <= self.eval_fraction < 1:
            raise AdapterError(f"eval_fraction must be in [0, 1), not {self.eval_fraction}")


@dataclass(frozen=True)
class RankingMetrics:
    """How well an adapter ranks held-out groups: pairwise and top-1 accuracy."""

    pair_accuracy: float  # share of (positive, negative) pairs where the positive scores higher
    top1_accuracy: float  # share of groups whose positive outscores all its negatives
    groups: int


@dataclass
class TrainResult:
    """What a training run did: per-step loss, per-epoch held-out metrics, time."""

    steps: list[dict[str, float]] = field(default_factory=list)  # {"step", "epoch", "loss"}
    evals: list[dict[str, float]] = field(default_factory=list)  # {"epoch", "pair_accuracy", "top1_accuracy"}
    seconds: float = 0.0
    train_groups: int = 0
    eval_groups: int = 0

    def final_metrics(self) -> dict[str, float]:
        """The last held-out metrics and the last loss, for cards and reports."""
        out: dict[str, float] = {"train_seconds": round(self.seconds, 2), "train_groups": self.train_groups}
        if self.steps:
            out["final_loss"] = self.steps[-1]["loss"]
        if self.evals:
            out.update({k: v for k, v in self.evals[-1].items() if k != "epoch"})
            out["eval_groups"] = self.eval_groups
        return out


def evaluate(adapter: Adapter, groups: Sequence[RankingGroup]) -> RankingMetrics:
    """Pairwise and top-1 ranking accuracy of the adapter on groups, scored in one batched pass."""
    pairs = list(dict.fromkeys((g.question, t) for g in groups for t in (g.positive, *g.negatives)))
    scores = dict(zip(pairs, adapter.score_pairs(pairs)))
    wins = total = top1 = 0
    for g in groups:
        prior = [adapter.config.consensus * c for c in g.log_copies()]
        pos = scores[(g.question, g.positive)] + prior[0]
        neg = [scores[(g.question, n)] + p for n, p in zip(g.negatives, prior[1:])]
        wins += sum(pos > n for n in neg)
        total += len(neg)
        top1 += all(pos > n for n in neg)
    return RankingMetrics(wins / max(total, 1), top1 / max(len(groups), 1), len(groups))


def _batch_tensors(adapter: Adapter, batch: Sequence[RankingGroup], config: TrainConfig, rng: random.Random) -> Any:
    """Forward one batch of groups: scores padded to (G, 1+N) and the mask of real entries."""
    torch = import_torch()
    rows = [(g.positive, *_draw(g.negatives, config.max_negatives, rng)) for g in batch]
    texts = [adapter.config.render(g.question, t) for g, row in zip(batch, rows) for t in row]
    flat = adapter.forward_texts(texts)  # (sum of row lengths,)
    width = max(len(r) for r in rows)
    scores = torch.zeros(len(rows), width, device=flat.device)  # (G, 1+N)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=flat.device)  # (G, 1+N)
    start = 0
    for i, row in enumerate(rows):
        scores[i, : len(row)] = flat[start : start + len(row)]
        mask[i, : len(row)] = True
        start += len(row)
    return scores, mask


def _draw(negatives: Sequence[str], limit: int, rng: random.Random) -> list[str]:
    """At most `limit` negatives, a random subset when there are more."""
    return list(negatives) if len(negatives) <= limit else rng.sample(list(negatives), limit)


class _Optimizer:
    """AdamW with linear warm-up, gradient clipping and (fp16 only) loss scaling: one `step` per batch."""

    def __init__(self, adapter: Adapter, config: TrainConfig) -> None:
        torch = import_torch()
        self.torch, self.clip = torch, config.grad_clip
        self.params = list(adapter.trainable_parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(adapter.device))

    def step(self, loss: Any) -> None:
        """Backpropagate one batch's loss and update the trainable parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()


def train(
    adapter: Adapter,
    groups: Sequence[RankingGroup],
    config: TrainConfig | None = None,
    *,
    eval_groups: Sequence[RankingGroup] = (),
) -> TrainResult:
    """Train the adapter's trainable part on groups (AdamW, warm-up, grad clip; GPU mixed precision)."""
    config = config or TrainConfig()
    if not groups:
        raise AdapterError("no training groups: every question needs at least one positive and one negative")
    import_torch()  # without the extra, say which one to install before anything else fails
    from tqdm.auto import tqdm

    rng = random.Random(config.seed)
    optimizer = _Optimizer(adapter, config)
    result = TrainResult(train_groups=len(groups), eval_groups=len(eval_groups))
    started = time.perf_counter()
    order = list(groups)
    for epoch in range(1, config.epochs + 1):
        adapter.model.train()
        rng.shuffle(order)
        batches = [order[i : i + config.groups_per_batch] for i in range(0, len(order), config.groups_per_batch)]
        bar = tqdm(batches, desc=f"adapter epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            scores, mask = _batch_tensors(adapter, batch, config, rng)
            loss = group_loss(config.loss, scores, mask, temperature=config.temperature, l2=config.l2)
            if not math.isfinite(float(loss.detach())):  # nothing is saved from a run that diverged
                raise AdapterError(f"training diverged at step {len(result.steps) + 1} (epoch {epoch}): the loss is {float(loss.detach())}; lower the learning rate (lr={config.lr})")
            optimizer.step(loss)
            result.steps.append({"step": len(result.steps) + 1, "epoch": epoch, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{result.steps[-1]['loss']:.3f}")
        if eval_groups:
            metrics = evaluate(adapter, eval_groups)
            result.evals.append({"epoch": epoch, "pair_accuracy": metrics.pair_accuracy, "top1_accuracy": metrics.top1_accuracy})
    adapter.model.eval()
    result.seconds = time.perf_counter() - started
    return result
