"""GGUF files converted once: transformers reads a GGUF's metadata three times (config, tokenizer,
weights) with a pure-Python reader and de-quantises every tensor, tens of seconds each load; the
converted model folder (safetensors, its tokenizer and configs) loads in seconds.

The folder lives under `$XDG_CACHE_HOME/blackbox-sdk/models` (default ~/.cache), named by the
GGUF's SHA-256, the dtype and the transformers version, so a changed file or another transformers
converts again, and copies of one file share one folder; a GGUF over 512 MiB is not kept converted
(its float32 folder would take several times its size). It is written beside its final place and
moved in whole, so a crash or a second process converting at once leaves no half-written folder; a
cache that can't be written is skipped (the model loads from the GGUF as before). Deleting the
folder is always safe. Each load from a conversion marks it used; each new conversion removes the
ones no load used for UNUSED_KEPT_S (another transformers' or dtype's, a GGUF since replaced: half
a gigabyte each) and the work folders of conversions a killed process left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

from .._logging import logger
from ._packaged import cache_home, sha256_files

CONVERT_AT_MOST = 512 << 20  # bytes of GGUF: SmolLM2-135M's is 94 MiB, its conversion 513 MiB
COMPLETE = "converted.ok"  # written last: a folder without it was never finished; its time is the last load's
UNUSED_KEPT_S = 30 * 86400.0  # a conversion no load used this long is removed when another is made
WORK_KEPT_S = 86400.0  # a conversion's work folder this old was left by a killed process
_NAMED = re.compile(r"[0-9a-f]{32}-[^/]+-transformers-[^/]+")  # a conversion's folder name (`converted_folder`)


def converted_folder(gguf: Path, dtype: torch.dtype) -> Path | None:
    """Where the GGUF converted to `dtype` by this transformers lives (it may not exist yet); None for a GGUF too big
    to keep converted (de-quantised weights take several times its size, and hashing it would cost seconds each load)."""
    if gguf.stat().st_size > CONVERT_AT_MOST:
        return None
    name = f"{sha256_files([gguf])[:32]}-{str(dtype).removeprefix('torch.')}-transformers-{transformers.__version__}"
    return cache_home() / "models" / name


def is_converted(folder: Path) -> bool:
    """Whether a finished conversion is in the folder."""
    return (folder / COMPLETE).is_file()


def save_converted(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save the loaded model and tokenizer as the folder, moved into place whole; a failure only logs."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".converting-") as work:
            written = Path(work) / "model"
            with _unmarked(model):
                model.save_pretrained(written)
            tokenizer.save_pretrained(written)
            (written / COMPLETE).write_text("complete\n")
            os.replace(written, folder)
    except OSError as exc:  # a read-only or full cache, or another process moved its copy in first
        if not is_converted(folder):
            logger.debug("blackbox_sdk: could not keep the converted GGUF in %s: %s", folder, exc)
        return
    prune_converted(folder)


def mark_used(folder: Path) -> None:
    """Note that a load used the conversion now (its COMPLETE file's time), so that pruning keeps it; never fails a load."""
    with contextlib.suppress(OSError):
        os.utime(folder / COMPLETE)


def prune_converted(kept: Path) -> None:
    """Remove the conversions beside ``kept`` that no load used for UNUSED_KEPT_S and the work folders older than
    WORK_KEPT_S (named as this module names them: nothing else in the folder is touched); a failure only logs."""
    now = time.time()
    for other in kept.parent.iterdir():
        work = other.name.startswith(".converting-")
        if other == kept or not (work or _NAMED.fullmatch(other.name)):
            continue
        try:
            if (other if work else other / COMPLETE).stat().st_mtime < now - (WORK_KEPT_S if work else UNUSED_KEPT_S):
                shutil.rmtree(other)
                logger.debug("blackbox_sdk: removed the unused converted model %s", other)
        except OSError as exc:  # unfinished (no COMPLETE yet), or removed by another process meanwhile
            logger.debug("blackbox_sdk: left %s: %s", other, exc)


def discard_converted(folder: Path, exc: BaseException) -> None:
    """Warn of a conversion that no longer loads (edited, cut short by a full disk) and remove it, so that the load
    reading the GGUF instead keeps a fresh one."""
    logger.warning("blackbox_sdk: the converted model in %s does not load (%s): loading the GGUF and converting it again", folder, exc)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _unmarked(model: Any) -> Iterator[None]:
    """The model without transformers' marks of a GGUF load while it is saved: its tensors are de-quantised already,
    but `save_pretrained` refuses a model with a GGUF quantizer, and a config naming one would load as a GGUF again."""
    marks = [(owner, name, owner.__dict__[name]) for owner, name in ((model, "hf_quantizer"), (model.config, "quantization_config")) if name in owner.__dict__]
    for owner, name, _ in marks:
        delattr(owner, name)
    try:
        yield
    finally:
        for owner, name, value in marks:
            setattr(owner, name, value)
