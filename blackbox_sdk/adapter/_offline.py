"""Offline training from the call log: groups from its feedback, a held-out split, training, the saved folder.

`train_from_log` writes the adapter folder, its training curve (PNG) and metrics; the
`blackbox-sdk adapter train` command runs it. On the held-out questions' logged calls with two or
more labelled candidates it also judges the adapter's pick against majority vote's (`_verdict.py`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._config import AdapterConfig
from ._curve import plot_curve
from ._consensus import normalize_answer
from ._energy import checked_device
from ._folder import writable_target
from ._feedback import groups_from_log, judgements, log_name, logged_question, read_records, shown_log, training_record
from ._groups import split_groups
from ._model import Adapter
from ._picks import pick
from ._trainer import TrainConfig, train
from ._verdict import OFFLINE_ADVICE, Pick, announce, judge, majority_pick


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
    device = checked_device(device)
    out = writable_target(out_dir)  # a file, a link or a folder of the user's files is refused before any training
    records = read_records(log_path, training_record)  # what training reads of each call, not its whole request
    groups = groups_from_log(records, high_reward=high_reward, low_reward=low_reward, expand_prefixes=expand_prefixes)
    if not groups:
        raise AdapterError(
            f"{shown_log(log_path)}: no question has both a positive and a negative answer; add feedback "
            "(label, preferred, reward or reference) to calls with several candidates"
        )
    train_groups, eval_groups = split_groups(groups, train_config.eval_fraction, train_config.seed)
    if not train_groups:
        train_groups, eval_groups = eval_groups, []
    adapter = Adapter.create(adapter_config, seed=train_config.seed, device=device)
    result = train(adapter, train_groups, train_config, eval_groups=eval_groups)
    held_out = {g.question for g in eval_groups}
    verdict = judge(_held_out_picks(adapter, records, held_out, high_reward, low_reward), where="held-out", advice=OFFLINE_ADVICE)
    metrics = result.final_metrics()
    adapter.metadata = {
        "name": out.name,
        "trained_on": f"call log {log_name(log_path)}: {len(records)} calls, {len({g.question for g in groups})} questions, "
        f"{len(groups)} ranking groups",
        "training": asdict(train_config),
        "metrics": metrics,
        "verdict": verdict.to_dict(),
    }
    adapter.save(out)
    report = {"out": str(Path(out_dir)), "calls": len(records), **metrics, "verdict": verdict.to_dict(), "evals": result.evals}
    try:
        plot_curve(result, out / "curve.png", title=f"{out.name}: training from {log_name(log_path)}")
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:  # a full disk after the save: the adapter is whole, say what is missing
        raise AdapterError(f"the adapter is saved in {out}, but its curve.png and metrics.json can't be written: {exc.strerror or exc}") from exc
    announce(verdict, "train_from_log")
    return report


def _held_out_picks(adapter: Adapter, records: list[dict[str, Any]], questions: set[str], high_reward: float, low_reward: float) -> list[Pick]:
    """Per logged call of a held-out question with two or more labelled candidates: the adapter's pick and majority vote's among them."""
    good: dict[str, set[str]] = {}
    bad: dict[str, set[str]] = {}
    for record in records:
        question = logged_question(record)
        if question in questions and not record.get("error"):
            pos, neg = judgements(record, high_reward, low_reward)
            good.setdefault(question, set()).update(map(normalize_answer, pos))
            bad.setdefault(question, set()).update(map(normalize_answer, neg))
    picks = []
    for record in records:
        question = logged_question(record)
        if question not in good or record.get("error"):
            continue
        judged = good[question] | bad[question]
        labelled = [(text, key in good[question]) for text in record.get("candidates") or [] if (key := normalize_answer(text)) in judged]
        if len(labelled) >= 2:
            answers = [text for text, _ in labelled]
            picks.append(Pick(question, labelled[pick(adapter, question, answers)][1], labelled[majority_pick(answers)][1]))
    return picks
