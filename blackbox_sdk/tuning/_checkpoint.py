"""Resumable checkpoints of a search, with no pickle: JSON (the fitness values CMA-ES was told,
history, counters, step sizes) plus safetensors (the strategies' means, the selected z).

Resuming re-creates the search with the same seed and replays ask/tell with the stored fitness
values; the replayed means and step sizes are checked against the stored ones. A plain BBT
checkpoint is the one-layer case (a mean [d] and one step size read as [1, d] and [sigma]).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._exceptions import TuningError
from ._cma import LayerSearch
from ._config import BBTConfig
from ._state import Best, DevRecord, GenerationRecord, SearchState
from ._template import EncodedExamples, PromptTemplate

STATE_JSON = "bbt_state.json"
STATE_TENSORS = "bbt_state.safetensors"
STATE_FORMAT = 1
_RESUME_IRRELEVANT = {"budget", "dev_every", "batch_size", "checkpoint_dir", "checkpoint_every", "progress"}


def fingerprint(
    config: BBTConfig, model_id: str, template: PromptTemplate, train: EncodedExamples, dev: EncodedExamples | None
) -> str:
    """A hash of everything a checkpoint must agree on to be resumed (not the budget or bookkeeping)."""
    what = {
        "config": config.model_dump(mode="json", exclude=_RESUME_IRRELEVANT),
        "model": model_id,
        "template": template.template,
        "verbalizer": template.verbalizer,
        "train": train.key,
        "dev": dev.key if dev else None,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def save_checkpoint(folder: Path, state: SearchState, fingerprint: str) -> None:
    """Write the checkpoint (JSON + safetensors) atomically into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": torch.as_tensor(state.search.means(), dtype=torch.float64)}
    if state.best is not None:
        tensors["best_z"] = torch.as_tensor(state.best.z, dtype=torch.float64)
    save_file(tensors, str(folder / (STATE_TENSORS + ".tmp")))
    (folder / (STATE_JSON + ".tmp")).write_text(json.dumps(_document(state, fingerprint)))
    os.replace(folder / (STATE_TENSORS + ".tmp"), folder / STATE_TENSORS)
    os.replace(folder / (STATE_JSON + ".tmp"), folder / STATE_JSON)


def _document(state: SearchState, fingerprint: str) -> dict[str, Any]:
    """The JSON part of a checkpoint: everything but the tensors."""
    best = None if state.best is None else {k: v for k, v in dataclasses.asdict(state.best).items() if k != "z"}
    return {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "fitness": state.fitness,
        "calls": state.calls,
        "dev_calls": state.dev_calls,
        "tokens": state.tokens,
        "elapsed": state.elapsed,
        "sigma": state.search.sigmas(),
        "generations": [dataclasses.asdict(g) for g in state.generations],
        "dev": [dataclasses.asdict(r) for r in state.dev],
        "best": best,
    }


def load_checkpoint(config: BBTConfig, fingerprint: str, layers: int) -> SearchState | None:
    """The state of the checkpoint in config.checkpoint_dir rebuilt by replay, or None when there is none."""
    folder = config.checkpoint_dir
    if folder is None or not (folder / STATE_JSON).is_file():
        return None
    document = json.loads((folder / STATE_JSON).read_text())
    if document.get("format") != STATE_FORMAT or document.get("fingerprint") != fingerprint:
        raise TuningError(f"the checkpoint in {folder} is for other settings or data; use another checkpoint_dir")
    tensors = load_file(str(folder / STATE_TENSORS))
    state = SearchState(
        search=LayerSearch.replayed(
            config, layers, document["fitness"], tensors["mean"].numpy(), np.atleast_1d(document["sigma"]).tolist()
        ),
        fitness=document["fitness"],
        calls=document["calls"],
        dev_calls=document["dev_calls"],
        tokens=document["tokens"],
        elapsed=document["elapsed"],
        generations=[GenerationRecord(**g) for g in document["generations"]],
        dev=[DevRecord(**r) for r in document["dev"]],
    )
    if document["best"] is not None:
        state.best = Best(z=tensors["best_z"].numpy().reshape(layers, config.d), **document["best"])
    return state
