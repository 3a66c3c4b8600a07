"""Writing an adapter folder: the head (and a full adapter's top layers), a LoRA adapter's peft deltas, the JSON document and the card."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._card import check_metadata, render_card
from ._energy import import_torch
from ._folder import CARD_FILE, CONFIG_FILE, FORMAT_NAME, FULL_FORMAT, LORA_DIR, LORA_FORMAT, SAVE_DTYPES, WEIGHTS_FILE
from ._folder import new_revision, swapped_in, writable_target

_OWN_ENTRIES = frozenset({CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, LORA_DIR})


def save_folder(adapter: Any, folder: Path, dtype: str) -> Path:
    """Write an Adapter's folder by an atomic swap (see `swapped_in`), with a fresh revision; returns its absolute path."""
    from safetensors.torch import save as to_safetensors

    torch = import_torch()
    if dtype not in SAVE_DTYPES:
        raise AdapterError(f"dtype must be one of {SAVE_DTYPES}, not {dtype!r}")
    check_metadata(adapter.metadata)
    folder = writable_target(folder)
    lora = adapter.lora_name is not None
    params = dict(adapter.model.named_parameters())
    names = [n for n in adapter.trainable_names() if not lora or n.startswith("head.")]
    tensors = {n: params[n].detach().to("cpu", getattr(torch, dtype)).contiguous() for n in names}
    document = {
        "format": FORMAT_NAME,
        "version": LORA_FORMAT if lora else FULL_FORMAT,
        "revision": new_revision(),
        "config": asdict(adapter.config),
        "base_sha256": adapter.base_sha256,
        "dtype": dtype,
        "metadata": adapter.metadata,
    }
    try:
        with swapped_in(folder, _OWN_ENTRIES.__contains__) as temp:
            (temp / WEIGHTS_FILE).write_bytes(to_safetensors(tensors, metadata={"format": "pt"}))  # save_file would make it 0600
            if lora:
                tensors.update(adapter.base.save(adapter.lora_name, temp, dtype, adapter.config.base_model))
            (temp / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            (temp / CARD_FILE).write_text(render_card(adapter.config, adapter.metadata, tensors))
    except OSError as exc:  # a full disk, a quota: the half-written folder is gone, the old one untouched
        raise AdapterError(f"can't write the adapter to {folder}: {exc.strerror or exc}") from exc
    return folder
