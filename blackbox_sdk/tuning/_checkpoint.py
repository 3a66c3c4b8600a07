"""Resumable checkpoints of a search, with no pickle: JSON (the fitness values CMA-ES was told,
history, counters, step sizes) plus safetensors (the strategies' means, the selected z).

Resuming re-creates the search with the same seed and replays ask/tell with the stored fitness
values; the replayed means and step sizes are checked against the stored ones. A plain BBT
checkpoint is the one-layer case (a mean [d] and one step size read as [1, d] and [sigma]).
Each save writes its tensors under a new name (`bbt_state-<hash>.safetensors`) and then replaces
the JSON that names them, so a crash at any point leaves the previous pair whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as to_safetensors

from .._exceptions import TuningError
from ._cma import LayerSearch
from ._config import BBTConfig
from ._state import Best, DevRecord, GenerationRecord, SearchState
from ._template import EncodedExamples, PromptTemplate

STATE_JSON = "bbt_state.json"
STATE_TENSORS = "bbt_state.safetensors"  # the tensors of a checkpoint whose JSON names none (written before names)
STATE_FORMAT = 1
_RESUME_IRRELEVANT = {"budget", "dev_every", "batch_size", "checkpoint_dir", "checkpoint_every", "progress"}


def fingerprint(
    config: BBTConfig,
    model_id: str,
    template: PromptTemplate,
    train: EncodedExamples,
    dev: EncodedExamples | None,
    p0: torch.Tensor,
) -> str:
    """A hash of everything a checkpoint must agree on to be resumed (not the budget or bookkeeping; a saved p0 by value)."""
    settings = config.model_dump(mode="json", exclude=_RESUME_IRRELEVANT)
    if isinstance(config.p0, Path):
        values = p0.detach().float().cpu().contiguous().numpy().tobytes()
        settings["p0"] = "sha256:" + hashlib.sha256(values).hexdigest()
    what = {
        "config": settings,
        "model": model_id,
        "template": template.template,
        "verbalizer": template.verbalizer,
        "train": [train.key, [template.labels[i] for i in train.labels]],
        "dev": [dev.key, [template.labels[i] for i in dev.labels]] if dev else None,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def prepare_folder(folder: Path) -> None:
    """Create the checkpoint folder up front, so a path that can't hold one is refused before any call, not after the budget."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TuningError(f"checkpoint_dir {folder} can't be used as a folder ({type(error).__name__}: {error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TuningError(f"checkpoint_dir {folder} is not writable")


def save_checkpoint(folder: Path, state: SearchState, fingerprint: str) -> None:
    """Write the checkpoint atomically: new tensors under their own name, then the JSON naming them, then drop the old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": torch.as_tensor(state.search.means(), dtype=torch.float64)}
    if state.best is not None:
        tensors["best_z"] = torch.as_tensor(state.best.z, dtype=torch.float64)
    data = to_safetensors(tensors)
    name = f"bbt_state-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
    _write_atomically(folder / name, data)
    _write_atomically(folder / STATE_JSON, json.dumps({**_document(state, fingerprint), "tensors": name}).encode())
    for old in folder.glob("bbt_state*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write data to path through a synced temporary file and a rename: readers see the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


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
    try:
        document = json.loads((folder / STATE_JSON).read_text())
        same = isinstance(document, dict) and document.get("format") == STATE_FORMAT
        if not same or document.get("fingerprint") != fingerprint:
            raise TuningError(f"the checkpoint in {folder} is for other settings or data; use another checkpoint_dir")
        return _state(config, layers, document, load_file(str(folder / Path(document.get("tensors", STATE_TENSORS)).name)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError, ArithmeticError, RecursionError) as error:
        raise TuningError(f"the checkpoint in {folder} is damaged ({type(error).__name__}: {error}); use another checkpoint_dir") from None


def _numbers(values: Any, where: str, *, integers: bool = False, nullable: tuple[str, ...] = ()) -> None:
    """ValueError (a damaged checkpoint) unless every value of a record is a finite number (an integer when asked, not a
    bool), or None for the nullable keys: an edited one would fail the run later, after calls are spent."""
    items = values.items() if isinstance(values, dict) else enumerate(values if isinstance(values, list) else [values])
    for key, value in items:
        kinds = (int,) if integers else (int, float)
        if value is None and key in nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise ValueError(f"{where} holds {value!r:.40}, not a finite number")


def _check_document(document: dict[str, Any]) -> None:
    """ValueError unless the counters (not negative), fitness values, history and selection of a checkpoint are finite numbers."""
    counters = {k: document[k] for k in ("calls", "dev_calls", "tokens")}
    _numbers(counters, "a counter", integers=True)
    if min(counters.values()) < 0:
        raise ValueError(f"a counter is negative: {counters}")
    _numbers(document["elapsed"], "elapsed")
    for values in document["fitness"]:
        _numbers(values, "fitness")
    for record in [*document["generations"], *document["dev"]]:
        _numbers(record, "the history")
    if document["best"] is not None:
        _numbers(document["best"], "the selection", nullable=("dev_accuracy", "dev_loss"))


def _state(config: BBTConfig, layers: int, document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SearchState:
    """The search state a checkpoint's JSON and tensors describe, checked, rebuilt by replay."""
    _check_document(document)
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
        if not np.isfinite(state.best.z).all():
            raise ValueError("the selected z is not finite")
    return state
