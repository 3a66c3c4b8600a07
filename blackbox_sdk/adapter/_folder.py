"""An adapter folder on disk: its JSON document, an atomic swap when it is (re)written, and a cheap change stamp.

Writers build the new folder beside the old one and rename it into place, so a reader (a client or
proxy reloading the adapter) sees the old folder or the new one, never half of either. Each write
gets a fresh `revision` in `adapter_config.json`, which is what a reader compares.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._config import AdapterConfig
from ._energy import import_torch

FORMAT_NAME = "blackbox-sdk-adapter"
FULL_FORMAT = 1  # the head and whole top layers in adapter.safetensors
LORA_FORMAT = 2  # the head in adapter.safetensors, the LoRA deltas in lora/ (peft's format)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
LORA_DIR = "lora"
PEFT_WEIGHTS = "adapter_model.safetensors"  # a LoRA adapter's deltas in LORA_DIR, in peft's format
SAVE_DTYPES = ("float32", "float16", "bfloat16")  # what `save` writes, and all that loading takes
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")  # torch.save's weights: refused by name, never opened
# What the SDK writes into an adapter folder (and a training run into its output folder): a folder
# holding nothing else, or holding an adapter, may be written; any other non-empty folder is the user's.
SDK_ENTRIES = frozenset(
    {CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, LORA_DIR, "curve.png", "metrics.json", "online_state.json", "online_report.json",
     "checkpoints", "recipes", "recipes.json", "recipe.json"}
)


def read_document(folder: Path) -> dict[str, Any]:
    """The folder's JSON document, checked for format, version and the types of its fields."""
    config_path = folder / CONFIG_FILE
    try:
        found = config_path.is_file() and (folder / WEIGHTS_FILE).is_file()
    except OSError as exc:  # a name too long, a folder it may not search: pathlib answers False only for a missing one
        raise AdapterError(f"can't look for an adapter folder at {folder}: {exc.strerror or exc}") from None
    if not found:
        raise AdapterError(_why_not_found(folder))
    try:
        document = json.loads(config_path.read_bytes())
    except OSError as exc:
        raise AdapterError(f"can't read {config_path}: {exc}") from exc
    except ValueError as exc:  # not UTF-8, or not JSON
        raise AdapterError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME or document.get("version") not in (FULL_FORMAT, LORA_FORMAT):
        raise AdapterError(f"{config_path} is not a {FORMAT_NAME} v{FULL_FORMAT} or v{LORA_FORMAT} config")
    names: dict[type, str] = {dict: "an object", str: "a string", type(None): "null"}
    kinds = {"config": (dict,), "base_sha256": (str,), "metadata": (dict, type(None)), "revision": (str, type(None))}
    for key, allowed in kinds.items():
        if not isinstance(document.get(key), allowed):
            wanted = " or ".join(names[kind] for kind in allowed)
            raise AdapterError(f"{config_path}: {key!r} must be {wanted}, not {json.dumps(document.get(key))[:40]}")
    return document


def _why_not_found(folder: Path) -> str:
    """Why a path is no adapter folder: weights pickled in place of safetensors (never read), or the adapter folder
    beside it whose name is close (a misspelled `reranker="adapters/capitls"`), or what a folder needs."""
    plain = f"{folder} is not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
    try:
        if folder.is_dir():
            pickled = sorted(entry.name for entry in folder.iterdir() if entry.suffix in PICKLED_SUFFIXES)
            return f"{folder} holds {pickled[0]}, weights in pickle form, which are never loaded: save them as {WEIGHTS_FILE}" if pickled else plain
        adapters = [entry.name for entry in folder.parent.iterdir() if (entry / CONFIG_FILE).is_file() and (entry / WEIGHTS_FILE).is_file()]
    except (OSError, ValueError):  # a parent it may not list, a name the system refuses
        return plain
    close = difflib.get_close_matches(folder.name, adapters, n=1, cutoff=0.75)
    return f"{plain}; did you mean {folder.parent / close[0]}?" if close else plain


def read_config(folder: Path) -> tuple[dict[str, Any], AdapterConfig]:
    """The folder's checked JSON document and the AdapterConfig in it (an error names the folder)."""
    document = read_document(folder)
    try:
        config = AdapterConfig.from_dict(document["config"])
    except AdapterError as exc:
        raise AdapterError(f"{folder / CONFIG_FILE}: {exc}") from exc
    if (document["version"] == LORA_FORMAT) != (config.lora_rank > 0):
        raise AdapterError(f"{folder / CONFIG_FILE}: version {document['version']} does not match lora_rank {config.lora_rank}")
    return document, config


def read_tensors(path: Path) -> dict[str, Any]:
    """A weights file's tensors on the CPU, checked: AdapterError for a file safetensors can't read, a tensor of
    another dtype than `save` writes (an int head would load as zeros) or one holding NaN or infinity."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors: dict[str, Any] = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"can't read {path} (damaged or incomplete?): {exc}") from exc
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in SAVE_DTYPES:
            raise AdapterError(f"{path}: {name} is {dtype}, not one of {', '.join(SAVE_DTYPES)}")
        if not bool(tensor.isfinite().all()):
            raise AdapterError(f"{path}: {name} holds NaN or infinite values (weights of a diverged training?)")
    return tensors


def check_folder(path: str | Path) -> None:
    """AdapterError unless `path` is an adapter folder whose config and weights read and check, without loading the base
    encoder (a base missing or of another fingerprint is found by `Adapter.load`, which the proxy's startup check runs)."""
    folder = Path(path).expanduser()
    _, config = read_config(folder)
    import_torch()  # the weights are read as torch tensors: without torch, say which extra to install
    read_tensors(folder / WEIGHTS_FILE)
    if config.lora_rank:
        read_tensors(folder / LORA_DIR / PEFT_WEIGHTS)


def new_revision() -> str:
    """A fresh revision token for one write of a folder."""
    return uuid.uuid4().hex


def stamp(folder: Path) -> tuple[tuple[int, int, int] | None, ...] | None:
    """(inode, mtime ns, size) of the folder's config and weights files: three stats tell whether it may have changed (None: no config)."""
    stats: list[tuple[int, int, int] | None] = []
    for name in (CONFIG_FILE, WEIGHTS_FILE, f"{LORA_DIR}/{PEFT_WEIGHTS}"):
        try:
            info = os.stat(folder / name)
        except (OSError, ValueError):  # ValueError: a NUL byte in the path, which no file has
            if name == CONFIG_FILE:
                return None
            stats.append(None)
            continue
        stats.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stats)


class ChangedWhileRead(AdapterError):
    """The folder was swapped (or rewritten) while it was being read: what was read may mix two revisions."""


def check_unchanged(folder: Path, before: Any, revision: str | None) -> None:
    """ChangedWhileRead unless the folder still has the stamp taken before reading it and the revision read."""
    try:
        same = stamp(folder) == before and read_document(folder).get("revision") == revision
    except AdapterError:
        same = False
    if not same:
        raise ChangedWhileRead(f"{folder} changed while it was read (a new revision was swapped in)")


def writable_target(path: str | Path) -> Path:
    """The absolute folder an adapter may be written to at `path`; AdapterError for a file, a symbolic link, or a folder of other files."""
    folder = Path(os.path.abspath(path))
    if folder.parent == folder:
        raise AdapterError(f"can't write an adapter to {folder}: name a folder below it")
    if folder.is_symlink():
        raise AdapterError(f"can't write an adapter to {path}: it is a symbolic link (to {os.path.realpath(folder)}); name a real folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise AdapterError(f"can't write an adapter to {path}: {where}, not a folder")
    if existing == folder:
        foreign = sorted(set(os.listdir(folder)) - SDK_ENTRIES)
        if foreign and not _holds_adapter(folder):
            raise AdapterError(
                f"can't write an adapter to {path}: it is a folder of other files ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}), not an adapter folder; name a new or empty folder"
            )
    return folder


def _holds_adapter(folder: Path) -> bool:
    """Whether the folder's config file is an adapter's document (its weights may be damaged: it is still an adapter folder)."""
    try:
        document = json.loads((folder / CONFIG_FILE).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT_NAME


@contextmanager
def swapped_in(folder: Path, written: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success it replaces `folder` by renames.

    Entries of the old folder for which `written(name)` is false (a card's curve, a run's state,
    checkpoints) are moved into the new folder first, so rewriting an adapter keeps them. The
    target is checked first (`writable_target`): a file, a link or a folder of other files is refused.
    """
    folder = writable_target(folder)
    temp = folder.parent / f".{folder.name}.new-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp.mkdir()
    except OSError as exc:
        raise AdapterError(f"can't write an adapter to {folder}: {exc}") from exc
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    try:
        _swap(folder, temp, written)
    except OSError as exc:  # a rename that found the folder gone or back: another writer swapping it at the same time
        shutil.rmtree(temp, ignore_errors=True)
        raise AdapterError(f"can't swap the new adapter into {folder}: {exc.strerror or exc} (another writer saving there at the same time?)") from exc


def _swap(folder: Path, temp: Path, written: Callable[[str], bool]) -> None:
    """Put `temp` in `folder`'s place by renames, first moving in the old folder's entries that `written` is false for;
    a folder moved away and not replaced is put back."""
    if not folder.exists():
        temp.rename(folder)
        return
    for entry in folder.iterdir():
        if not written(entry.name) and not (temp / entry.name).exists():
            entry.rename(temp / entry.name)
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    folder.rename(old)
    try:
        temp.rename(folder)
    except OSError:
        if not folder.exists():
            old.rename(folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
