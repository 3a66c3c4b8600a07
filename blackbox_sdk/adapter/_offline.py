"""Offline training from the call log: groups from its feedback, a held-out split, training, the saved folder.

`train_from_log` writes the adapter folder, its training curve (PNG) and metrics; the
`blackbox-sdk adapter train` command runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._config import AdapterConfig
from ._curve import plot_curve
from ._feedback import groups_from_log, log_name, read_log
from ._groups import split_groups
from ._model import Adapter
from ._trainer import TrainConfig, train


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
        "trained_on": f"call log {log_name(log_path)}: {len(records)} calls, {len({g.question for g in groups})} questions, "
        f"{len(groups)} ranking groups",
        "training": asdict(train_config),
        "metrics": metrics,
    }
    adapter.save(out)
    plot_curve(result, out / "curve.png", title=f"{out.name}: training from {log_name(log_path)}")
    report = {"out": str(out), "calls": len(records), **metrics, "evals": result.evals}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
