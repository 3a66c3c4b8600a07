"""Loading a local causal LM: a GGUF file or a HuggingFace model folder, on a chosen device and
dtype, checked before transformers reads it, into a `LoadedModel` that generation uses.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from .._exceptions import BackendError, ConfigError
from ._converted import converted_folder, discard_converted, is_converted, mark_used, save_converted
from ._packaged import existing_path

GGUF_MAGIC = b"GGUF"
DEFAULT_CONTEXT = 2048  # context window assumed when the config names none
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM with its tokenizer and the token facts generation needs; `lock` serialises every use of the model."""

    model: Any
    tokenizer: Any
    device: torch.device
    name: str
    context_length: int
    eos_ids: list[int]
    pad_id: int
    lock: threading.Lock = field(default_factory=threading.Lock)  # not re-entrant

    def input_embeddings(self) -> torch.nn.Embedding:
        """The model's token-embedding table."""
        return self.model.get_input_embeddings()


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else must be a usable torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on cuda, float32 elsewhere; else one of float32/bfloat16/float16."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"invalid dtype {dtype!r}: use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load the model at an existing path onto device, with the token ids that end and pad a reply."""
    model, tokenizer = _load(path, device, dtype)
    eos_ids = _eos_ids(path, model, tokenizer)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        name=path.name,
        context_length=int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT),
        eos_ids=eos_ids,
        pad_id=eos_ids[0] if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
    )


def _eos_ids(path: Path, model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a reply, from the generation config and the tokenizer."""
    configured = model.generation_config.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise BackendError(f"{path} defines no end-of-sequence token, so replies could not end")
    return ids


def _check_gguf(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes."""
    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise BackendError(f"{path} is not a GGUF file: pass a .gguf file or a HuggingFace model folder")


def _check_causal_folder(path: Path) -> None:
    """Refuse a folder whose config.json names no causal-LM architecture (an encoder, say)."""
    if not (path / "config.json").is_file():
        raise BackendError(f"{path} has no config.json, so it is not a HuggingFace model folder")
    config = AutoConfig.from_pretrained(path)
    known = {name for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for name in _as_tuple(names)}
    architectures = list(getattr(config, "architectures", None) or [])
    if not known.intersection(architectures):
        raise BackendError(f"{path} holds {architectures or 'an unnamed architecture'}, not a causal language model")


def _as_tuple(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """A mapping value (one class name or several) as a tuple."""
    return (names,) if isinstance(names, str) else tuple(names)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' loading progress bars (its GGUF reader's plain tqdm too), restoring them afterwards."""
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    was_enabled = hf_logging.is_progress_bar_enabled()
    bar = getattr(gguf_reader, "tqdm", None)
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_reader.tqdm = bar
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a model folder or a GGUF file, the GGUF from its converted folder once there is one."""
    if not path.is_file():
        return _from_pretrained(path, {}, device, dtype, check=True)
    _check_gguf(path)
    converted = converted_folder(path, dtype)
    if converted is not None and is_converted(converted):
        try:
            loaded = _from_pretrained(converted, {}, device, dtype)
        except BackendError as exc:  # a damaged conversion: the GGUF is still there, and is converted again
            discard_converted(converted, exc)
        else:
            mark_used(converted)
            return loaded
    model, tokenizer = _from_pretrained(path.parent, {"gguf_file": path.name}, device, dtype)
    if converted is not None and not is_converted(converted):
        with _quiet_progress():
            save_converted(model, tokenizer, converted)
    return model, tokenizer


def _from_pretrained(source: Path, extra: dict[str, str], device: torch.device, dtype: torch.dtype, *, check: bool = False) -> tuple[Any, Any]:
    """transformers' tokenizer and model from a folder (with `gguf_file`: a GGUF in it; with `check`: a causal-LM folder
    is checked first), wrapping failures in BackendError."""
    try:
        if check:
            _check_causal_folder(source)
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except BackendError:
        raise
    except Exception as exc:  # any failure to read the files means the model can't be loaded
        raise BackendError(f"can't load a causal LM from {source / extra.get('gguf_file', '')}: {exc}") from exc
    return model.to(device).eval(), tokenizer
