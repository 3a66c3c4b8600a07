"""Hostile data for tests: a pickle payload that proves, by its side effect, whether it was unpickled, and adapter
folders that can't load."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


class RunsOnUnpickle:
    """A pickle payload that makes a folder when unpickled: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "capitals"  # a LoRA adapter
BROKEN_ADAPTERS = ("missing", "empty", "config-not-json", "weights-cut", "lora-weights-garbage", "base-missing", "base-unloadable")


def broken_adapter(root: Path, how: str) -> tuple[Path, str]:
    """An adapter folder under `root` broken as `how` (one of BROKEN_ADAPTERS) says, and the file its error names."""
    folder = root / f"adapter-{how}"
    if how == "missing":
        return folder, str(folder)
    if how == "empty":
        folder.mkdir()
        return folder, str(folder)
    shutil.copytree(SHIPPED_ADAPTER, folder)
    if how.startswith("base-"):  # the folder itself reads and checks; the base encoder it names does not load
        return folder, _unloadable_base(root, folder, how)
    damaged = {"config-not-json": "adapter_config.json", "weights-cut": "adapter.safetensors", "lora-weights-garbage": "lora/adapter_model.safetensors"}[how]
    target = folder / damaged
    if how == "config-not-json":
        target.write_text("{not json")
    elif how == "weights-cut":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_bytes(b"garbage")
    return folder, str(target)


def _unloadable_base(root: Path, folder: Path, how: str) -> str:
    """Point `folder`'s config at a base encoder folder that is missing ("base-missing") or holds a config.json but
    no weights ("base-unloadable"); that base folder, which the error names."""
    base = root / f"encoder-{how}"
    if how == "base-unloadable":
        base.mkdir()
        (base / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    document = json.loads((folder / "adapter_config.json").read_text())
    document["config"]["base_model"] = str(base)
    (folder / "adapter_config.json").write_text(json.dumps(document))
    return str(base)
