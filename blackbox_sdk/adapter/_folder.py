"""An adapter folder on disk: its JSON document, an atomic swap when it is (re)written, and a cheap change stamp.

Writers build the new folder beside the old one and rename it into place, so a reader (a client or
proxy reloading the adapter) sees the old folder or the new one, never half of either. Each write
gets a fresh `revision` in `adapter_config.json`, which is what a reader compares.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError

FORMAT_NAME = "blackbox-sdk-adapter"
FULL_FORMAT = 1  # the head and whole top layers in adapter.safetensors
LORA_FORMAT = 2  # the head in adapter.safetensors, the LoRA deltas in lora/ (peft's format)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"


def read_document(folder: Path) -> dict[str, Any]:
    """The folder's JSON document, checked for format and version."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{folder} is not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        document = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{config_path} is not valid JSON: {exc}") from exc
    if document.get("format") != FORMAT_NAME or document.get("version") not in (FULL_FORMAT, LORA_FORMAT):
        raise AdapterError(f"{config_path} is not a {FORMAT_NAME} v{FULL_FORMAT} or v{LORA_FORMAT} config")
    return document


def new_revision() -> str:
    """A fresh revision token for one write of a folder."""
    return uuid.uuid4().hex


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of the folder's config file: one stat tells whether it may have changed (None: absent)."""
    try:
        info = os.stat(folder / CONFIG_FILE)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@contextmanager
def swapped_in(folder: Path, written: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success it replaces `folder` by renames.

    Entries of the old folder for which `written(name)` is false (a card's curve, a run's state,
    checkpoints) are moved into the new folder first, so rewriting an adapter keeps them.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f".{folder.name}.new-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if not folder.exists():
        temp.rename(folder)
        return
    for entry in folder.iterdir():
        if not written(entry.name) and not (temp / entry.name).exists():
            entry.rename(temp / entry.name)
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
