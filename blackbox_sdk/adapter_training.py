"""Training the BBox-Adapter: ranking NCE loss, a small trainer, and offline training from the call log.

Loss (Sun et al. 2024, Eq. 2): for each question, a positive answer x+ and negatives x_1..x_N,

    loss = mean over groups of [ logsumexp_k(g(x_k) / T) - g(x+) / T ]  +  l2 * mean(g(x)^2)

with k over the positive and its negatives. The official code's batch form ("batch") is also here:
mean(E+ / T) - mean(E- / T) + l2 * mean(E^2) over every positive and negative of a batch, E = -g.

`train_from_log` builds the groups from the call log's feedback (references, `correct` labels,
positive rewards and preferred candidates are positives; `incorrect` labels, non-preferred
candidates and negative rewards are negatives), holds out a share of the questions, trains, and
writes the adapter folder, its training curve (PNG) and metrics. `cli_main` is
`blackbox-sdk adapter train --log calls.db --out adapters/<name>`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .adapter import Adapter, AdapterConfig, _import_torch, normalize_answer
from .errors import AdapterError

__all__ = [
    "RankingGroup",
    "RankingMetrics",
    "TrainConfig",
    "TrainResult",
    "batch_energy_loss",
    "build_groups",
    "cli_main",
    "evaluate",
    "groups_from_log",
    "line_prefixes",
    "nce_loss",
    "plot_curve",
    "read_log",
    "split_groups",
    "train",
    "train_from_log",
]

LOSSES = ("nce", "batch")
LOG_FORMAT = "blackbox-calllog/1"
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class RankingGroup:
    """One question's positive answer against its negatives: the unit the NCE loss ranks."""

    question: str
    positive: str
    negatives: tuple[str, ...]
    copies: tuple[int, ...] = ()  # copies of (positive, *negatives) among the samples; () = one each

    def log_copies(self) -> list[float]:
        """log(copies) per entry, positive first: the sampling prior that `Adapter.score` adds."""
        return [math.log(c) for c in self.copies] if self.copies else [0.0] * (1 + len(self.negatives))


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


def nce_loss(scores: Any, mask: Any, *, temperature: float = 1.0, l2: float = 0.0) -> Any:
    """Ranking NCE: scores (G, 1+N) with the positive in column 0, mask (G, 1+N) marking real entries."""
    torch = _import_torch()
    logits = (scores / temperature).masked_fill(~mask, -math.inf)  # (G, 1+N)
    ranking = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()  # scalar
    return ranking + l2 * scores[mask].square().mean()


def batch_energy_loss(scores: Any, positive: Any, *, temperature: float = 1.0, l2: float = 0.0) -> Any:
    """The official code's form: mean(E+/T) - mean(E-/T) + l2 mean(E^2), E = -scores, positive a bool mask."""
    torch = _import_torch()
    energy = -scores  # (B,)
    pos, neg = energy[positive] / temperature, energy[~positive] / temperature
    zero = torch.zeros((), device=scores.device)
    pos_term = pos.mean() if pos.numel() else zero
    neg_term = neg.mean() if neg.numel() else zero
    return pos_term - neg_term + l2 * energy.square().mean()


def line_prefixes(answer: str) -> list[str]:
    """The answer's line prefixes, shortest first, ending with the whole answer (for step scoring)."""
    lines = answer.split("\n")
    return ["\n".join(lines[: i + 1]) for i in range(len(lines)) if lines[i].strip() or i == len(lines) - 1]


def build_groups(
    question: str, positives: Iterable[str], negatives: Iterable[str], *, expand_prefixes: bool = False
) -> list[RankingGroup]:
    """One group per distinct positive against all distinct negatives (none if either side is empty).

    Repeats in the lists are the black box's samples agreeing: each group records every entry's
    copies (as `normalize_answer` counts them), so `evaluate` judges it the way `Adapter.score`
    picks among samples. Training ranks the adapter's own score g and ignores the copies.
    """
    pos_all = _texts(a for p in positives for a in (line_prefixes(p) if expand_prefixes else [p]))
    neg_all = _texts(a for n in negatives for a in (line_prefixes(n) if expand_prefixes else [n]))
    pos = tuple(dict.fromkeys(pos_all))
    neg = tuple(n for n in dict.fromkeys(neg_all) if n not in pos)
    if not pos or not neg:
        return []
    copies = Counter(normalize_answer(t) for t in [*pos_all, *neg_all])
    return [RankingGroup(question, p, neg, tuple(copies[normalize_answer(t)] for t in (p, *neg))) for p in pos]


def _texts(texts: Iterable[str]) -> list[str]:
    """Non-blank texts, stripped, repeats kept."""
    return [t.strip() for t in texts if t and t.strip()]


def split_groups(
    groups: Sequence[RankingGroup], eval_fraction: float, seed: int = 0
) -> tuple[list[RankingGroup], list[RankingGroup]]:
    """Split by question (no question on both sides): (train, held-out)."""
    questions = sorted({g.question for g in groups})
    random.Random(seed).shuffle(questions)
    held = set(questions[: round(len(questions) * eval_fraction)])
    return [g for g in groups if g.question not in held], [g for g in groups if g.question in held]


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
    torch = _import_torch()
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


def _loss(scores: Any, mask: Any, config: TrainConfig) -> Any:
    """The configured loss on one batch."""
    if config.loss == "nce":
        return nce_loss(scores, mask, temperature=config.temperature, l2=config.l2)
    positive = mask.clone()
    positive[:, 1:] = False
    return batch_energy_loss(scores[mask], positive[mask], temperature=config.temperature, l2=config.l2)


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
    torch = _import_torch()
    from tqdm.auto import tqdm

    rng = random.Random(config.seed)
    params = list(adapter.trainable_parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (config.warmup_steps + 1)))
    scaler = torch.amp.GradScaler("cuda", enabled=_needs_scaler(adapter))
    result = TrainResult(train_groups=len(groups), eval_groups=len(eval_groups))
    started = time.perf_counter()
    order = list(groups)
    for epoch in range(1, config.epochs + 1):
        adapter.model.train()
        rng.shuffle(order)
        batches = [order[i : i + config.groups_per_batch] for i in range(0, len(order), config.groups_per_batch)]
        bar = tqdm(batches, desc=f"adapter epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            loss = _loss(*_batch_tensors(adapter, batch, config, rng), config)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            result.steps.append({"step": len(result.steps) + 1, "epoch": epoch, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{result.steps[-1]['loss']:.3f}")
        if eval_groups:
            metrics = evaluate(adapter, eval_groups)
            result.evals.append({"epoch": epoch, "pair_accuracy": metrics.pair_accuracy, "top1_accuracy": metrics.top1_accuracy})
    adapter.model.eval()
    result.seconds = time.perf_counter() - started
    return result


def _needs_scaler(adapter: Adapter) -> bool:
    """fp16 autocast (a GPU without bf16) needs loss scaling; bf16 and the CPU don't."""
    torch = _import_torch()
    return adapter.device.type == "cuda" and not torch.cuda.is_bf16_supported()


def plot_curve(result: TrainResult, path: str | Path, *, title: str = "BBox-Adapter training") -> Path:
    """Save the loss per step and held-out accuracy per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([s["step"] for s in result.steps], [s["loss"] for s in result.steps], color="tab:blue", lw=1)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    if result.evals:
        per_epoch = max(1, len(result.steps) // max(len(result.evals), 1))
        acc_axis = loss_axis.twinx()
        xs = [e["epoch"] * per_epoch for e in result.evals]
        acc_axis.plot(xs, [e["pair_accuracy"] for e in result.evals], "o-", color="tab:red", label="pairwise")
        acc_axis.plot(xs, [e["top1_accuracy"] for e in result.evals], "s--", color="tab:orange", label="top-1")
        acc_axis.set_ylabel("held-out ranking accuracy", color="tab:red")
        acc_axis.set_ylim(0, 1)
        acc_axis.legend(loc="lower right")
    loss_axis.set_title(title)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


# ---------------------------------------------------------------------------- the call log


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The call log's records as export dicts, from its JSONL export or from the SQLite file itself."""
    source = Path(path)
    if not source.is_file():
        raise AdapterError(f"no call log at {source}")
    with source.open("rb") as handle:
        is_sqlite = handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    text = _export_sqlite(source) if is_sqlite else source.read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{source}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or record.get("format") != LOG_FORMAT:
            raise AdapterError(f"{source}:{number}: not a {LOG_FORMAT} record")
        records.append(record)
    return records


def _export_sqlite(path: Path) -> str:
    """The JSONL export of a SQLite call log, in memory."""
    from .calllog import CallLog

    sink = io.StringIO()
    with CallLog(path) as log:
        log.export_jsonl(sink)
    return sink.getvalue()


def _question(record: dict[str, Any]) -> str | None:
    """The question a logged call answers: the last user message (chat) or the prompt (completions)."""
    request = record.get("request") or {}
    if record.get("route") == "chat":
        for message in reversed(request.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
        return None
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else None


def _judgements(record: dict[str, Any], high_reward: float, low_reward: float) -> tuple[set[str], set[str]]:
    """(positives, negatives) a record's feedback gives: references, labels, rewards, preferences."""
    candidates: list[str] = record.get("candidates") or []
    good: set[str] = set()
    bad: set[str] = set()
    for item in record.get("feedback") or []:
        if item.get("reference"):
            good.add(item["reference"])
        rated = item.get("candidate")
        if rated is not None and 0 <= rated < len(candidates):
            reward = item.get("reward")
            if item.get("label") == "correct" or (reward is not None and reward >= high_reward):
                good.add(candidates[rated])
            if item.get("label") == "incorrect" or (reward is not None and reward <= low_reward):
                bad.add(candidates[rated])
        preferred = item.get("preferred")
        if preferred is not None and 0 <= preferred < len(candidates):
            good.add(candidates[preferred])
            bad.update(c for i, c in enumerate(candidates) if i != preferred)
    return good, bad


def groups_from_log(
    records: Iterable[dict[str, Any]], *, high_reward: float = 0.5, low_reward: float = 0.0, expand_prefixes: bool = False
) -> list[RankingGroup]:
    """Ranking groups per question from logged feedback; a text judged good anywhere is never a negative."""
    good: dict[str, set[str]] = {}
    bad: dict[str, set[str]] = {}
    for record in records:
        question = _question(record)
        if question is None or record.get("error"):
            continue
        pos, neg = _judgements(record, high_reward, low_reward)
        good.setdefault(question, set()).update(pos)
        bad.setdefault(question, set()).update(neg)
    groups: list[RankingGroup] = []
    for question in sorted(good):
        positives = sorted(good[question])
        negatives = sorted(bad[question] - good[question])
        groups += build_groups(question, positives, negatives, expand_prefixes=expand_prefixes)
    return groups


def train_from_log(
    log_path: str | Path,
    out_dir: str | Path,
    *,
    adapter_config: AdapterConfig | None = None,
    train_config: TrainConfig | None = None,
    high_reward: float = 0.5,
    low_reward: float = 0.0,
    expand_prefixes: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Train an adapter from a call log and save it (weights, config, card, curve.png, metrics.json)."""
    train_config = train_config or TrainConfig()
    records = read_log(log_path)
    groups = groups_from_log(records, high_reward=high_reward, low_reward=low_reward, expand_prefixes=expand_prefixes)
    if not groups:
        raise AdapterError(
            f"{log_path}: no question has both a positive and a negative answer; add feedback "
            "(label, preferred, reward or reference) to calls with several candidates"
        )
    train_groups, eval_groups = split_groups(groups, train_config.eval_fraction, train_config.seed)
    if not train_groups:
        train_groups, eval_groups = eval_groups, []
    adapter = Adapter.create(adapter_config, seed=train_config.seed, device=device)
    result = train(adapter, train_groups, train_config, eval_groups=eval_groups)
    out = Path(out_dir)
    metrics = result.final_metrics()
    adapter.metadata = {
        "name": out.name,
        "trained_on": f"call log {Path(log_path).name}: {len(records)} calls, {len({g.question for g in groups})} questions, "
        f"{len(groups)} ranking groups",
        "training": asdict(train_config),
        "metrics": metrics,
    }
    adapter.save(out)
    plot_curve(result, out / "curve.png", title=f"{out.name}: training from {Path(log_path).name}")
    report = {"out": str(out), "calls": len(records), **metrics, "evals": result.evals}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _parser() -> argparse.ArgumentParser:
    """The `blackbox-sdk adapter train` arguments."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="blackbox-sdk adapter train", description="Train a BBox-Adapter reranker from the call log.")
    parser.add_argument("--log", required=True, type=Path, help="call log: the SQLite file or its JSONL export")
    parser.add_argument("--out", required=True, type=Path, help="adapter folder to write, e.g. adapters/<name>")
    parser.add_argument("--base", default=AdapterConfig.base_model, help="HF encoder folder ('default' = all-MiniLM-L6-v2)")
    parser.add_argument("--trainable-layers", type=int, default=AdapterConfig.trainable_layers, help="top encoder layers to train (-1 = all)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--l2", type=float, default=defaults.l2)
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--expand-prefixes", action="store_true", help="also train on each answer's line prefixes (for beam search)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_main(argv: list[str]) -> int:
    """`blackbox-sdk adapter train ...`: train from the call log, print the metrics; 0 on success, 1 on error."""
    args = _parser().parse_args(argv)
    try:
        report = train_from_log(
            args.log,
            args.out,
            adapter_config=AdapterConfig(base_model=args.base, trainable_layers=args.trainable_layers),
            train_config=TrainConfig(
                epochs=args.epochs,
                lr=args.lr,
                loss=args.loss,
                temperature=args.temperature,
                l2=args.l2,
                eval_fraction=args.eval_fraction,
                seed=args.seed,
                progress=not args.no_progress,
            ),
            expand_prefixes=args.expand_prefixes,
            device=args.device,
        )
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in report.items() if k != "evals"}, indent=2))
    return 0
