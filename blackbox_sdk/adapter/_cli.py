"""`blackbox-sdk adapter train --log calls.db --out adapters/<name>`: offline training from the command line.

``--log`` also takes a ``postgresql://`` URL (a fleet's log, read through ``call_log.open_call_log``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli_errors import report_error
from .._exceptions import BlackBoxError
from ._config import AdapterConfig
from ._loss import LOSSES
from ._offline import train_from_log
from ._trainer import TrainConfig


def _parser() -> argparse.ArgumentParser:
    """The `blackbox-sdk adapter train` arguments."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="blackbox-sdk adapter train", description="Train a BBox-Adapter reranker from the call log.")
    parser.add_argument("--log", required=True, help="call log: the SQLite file, its JSONL export, or a postgresql:// URL")
    parser.add_argument("--out", required=True, type=Path, help="adapter folder to write, e.g. adapters/<name>")
    parser.add_argument("--base", default=AdapterConfig.base_model, help="HF encoder folder ('default' = all-MiniLM-L6-v2)")
    parser.add_argument("--trainable-layers", type=int, default=AdapterConfig.trainable_layers, help="top encoder layers to train (-1 = all)")
    parser.add_argument("--lora-rank", type=int, default=AdapterConfig.lora_rank, help="> 0: train LoRA deltas of this rank (a folder of a few MB)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"passes over the training groups (default {defaults.epochs})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW learning rate after warm-up (default {defaults.lr})")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear learning-rate warm-up steps")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss, help=f"nce: the paper's ranking NCE; batch: the official code's form (default {defaults.loss})")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help=f"scores are divided by this in the loss (default {defaults.temperature})")
    parser.add_argument("--l2", type=float, default=defaults.l2, help=f"weight of the energy L2 term, keeping scores near 0 (default {defaults.l2})")
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction, help=f"share of questions held out to evaluate (default {defaults.eval_fraction})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"shuffling, negative draws and the split (default {defaults.seed})")
    parser.add_argument("--expand-prefixes", action="store_true", help="also train on each answer's line prefixes (for beam search)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The training options given on the command line."""
    return TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        loss=args.loss,
        temperature=args.temperature,
        l2=args.l2,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )


def cli_main(argv: list[str]) -> int:
    """`blackbox-sdk adapter train ...`: train from the call log, print the metrics (JSON) and the verdict line; 0 on success, 1 on error."""
    args = _parser().parse_args(argv)
    try:
        report = train_from_log(
            args.log,
            args.out,
            adapter_config=AdapterConfig(base_model=args.base, trainable_layers=args.trainable_layers, lora_rank=args.lora_rank),
            train_config=_train_config(args),
            expand_prefixes=args.expand_prefixes,
            device=args.device,
        )
    except BlackBoxError as exc:  # AdapterError, and a call log that can't be read (CallLogError)
        return report_error(exc)
    print(json.dumps({k: v for k, v in report.items() if k != "evals"}, indent=2))
    if report["verdict"]["beats_majority"] is not False:  # a failed verdict was said already, by train_from_log's warning
        print(f"verdict: {report['verdict']['summary']}", file=sys.stderr)  # beside the JSON, which stays machine-readable
    return 0
