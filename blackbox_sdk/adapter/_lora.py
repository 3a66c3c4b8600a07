"""LoRA adapters through peft on one shared base encoder: one base in memory, one delta per adapter.

A `SharedBase` holds a frozen base encoder (its tokenizer and SHA-256) wrapped as a peft
`PeftModel`; every LoRA adapter loaded on it is one named peft adapter (`load_adapter`), made
active under the base's lock for its forward passes (`set_adapter`). `shared_base` hands out one
base per (folder, device), so the proxy's per-key rerankers and several clients on the same
encoder load it once. A saved adapter keeps its deltas in peft's own format in `lora/`
(`adapter_config.json` and `adapter_model.safetensors`), readable by `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from .._exceptions import AdapterError
from ..local import sha256_files
from ._config import AdapterConfig
from ._energy import import_torch
from ._folder import LORA_DIR, PEFT_WEIGHTS, read_tensors

PEFT_CONFIG = "adapter_config.json"
_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


@overload
def layer_index(name: str, missing: int) -> int: ...


@overload
def layer_index(name: str, missing: None = None) -> int | None: ...


def layer_index(name: str, missing: int | None = None) -> int | None:
    """The transformer layer a parameter or module belongs to, from its name (`missing` for embeddings etc.)."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else missing


def import_peft() -> Any:
    """peft, or an AdapterError that says which extra to install."""
    try:
        import peft
    except ImportError:
        raise AdapterError("LoRA adapters need peft: pip install 'blackbox-sdk[adapter]'") from None
    return peft


def base_fingerprint(folder: Path) -> str:
    """SHA-256 over the base folder's safetensors weights, so an adapter never meets the wrong base."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"base encoder {folder} has no .safetensors weights (pickled weights are refused)")
    return sha256_files(files)


def load_base(config: AdapterConfig) -> tuple[Any, Any, str]:
    """The base encoder (safetensors only) in fp32 whatever dtype its file keeps, its left-truncating tokenizer and its fingerprint, on the CPU."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    base = config.base_path()
    fingerprint = base_fingerprint(base)
    hf_logging.disable_progress_bar()
    try:
        encoder = AutoModel.from_pretrained(base, use_safetensors=True, dtype=torch.float32)  # weights kept in fp16/bf16 train in fp32 too
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: weights cut short, damaged
        raise AdapterError(f"can't load base encoder {base}: {exc}") from exc
    tokenizer.truncation_side = "left"
    check_max_length(config, encoder, tokenizer)
    return encoder, tokenizer, fingerprint


class BeyondTheBase(AdapterError):
    """A `max_length` of more tokens than the base encoder reads (loading an adapter names its folder's config file)."""


def check_max_length(config: AdapterConfig, encoder: Any, tokenizer: Any) -> None:
    """BeyondTheBase when `max_length` is more tokens than the base encoder reads: a long answer would fail each call it is scored in."""
    limit = min(getattr(encoder.config, "max_position_embeddings", 1 << 62), tokenizer.model_max_length)
    if config.max_length > limit:
        raise BeyondTheBase(f"max_length {config.max_length} is more than the {limit} tokens base encoder {config.base_model!r} reads; use at most {limit}")


@dataclass(eq=False)
class SharedBase:
    """A frozen base encoder that LoRA adapters share: the peft model, tokenizer, fingerprint and a lock."""

    plain: Any  # the base encoder; peft injects each adapter's LoRA layers into it
    tokenizer: Any
    sha256: str
    shared: bool  # handed out by `shared_base` to every adapter on this (folder, device)
    peft: Any = None  # the PeftModel over `plain`, from the first adapter on
    lock: threading.RLock = field(default_factory=threading.RLock)
    _names: Iterator[int] = field(default_factory=itertools.count)
    _dropped: list[str] = field(default_factory=list)  # names of adapters collected since the last load (`Attachment`)

    @property
    def encoder(self) -> Any:
        """The module an EnergyModel runs: the PeftModel (the plain encoder before any adapter)."""
        return self.peft if self.peft is not None else self.plain

    def new_name(self) -> str:
        """A fresh peft adapter name on this base."""
        return f"adapter{next(self._names)}"

    def add(self, config: AdapterConfig, name: str) -> None:
        """Add a freshly initialised LoRA adapter (the random A, zero B of LoRA: g starts as the base's)."""
        with self.lock, _quiet():  # the module tree is walked and changed: never while another adapter scores or loads on it
            lora = lora_config(config, self.plain)
            if self.peft is None:
                self.peft = import_peft().get_peft_model(self.plain, lora, adapter_name=name)
            else:
                self.peft.add_adapter(name, lora)
            self._sweep()

    def load(self, folder: Path, name: str, config: AdapterConfig) -> None:
        """Load a saved adapter's LoRA deltas (peft format, safetensors) under `name`, checked against the adapter's `config`."""
        where = folder / LORA_DIR
        if not (where / PEFT_WEIGHTS).is_file() or not (where / PEFT_CONFIG).is_file():
            raise AdapterError(f"{folder} is a LoRA adapter without {LORA_DIR}/{PEFT_WEIGHTS} and {LORA_DIR}/{PEFT_CONFIG}")
        stored = set(read_tensors(where / PEFT_WEIGHTS))  # dtypes and values checked before peft reads them
        with self.lock:  # the module tree is changed and walked: never while another adapter scores or loads on this base
            self._attach(where, name, config, stored)
            self._sweep()
            self.plain.requires_grad_(False)

    def _attach(self, where: Path, name: str, config: AdapterConfig, stored: set[str]) -> None:
        """peft's load of the deltas in `where` under `name` (under the lock), undone unless they are exactly the `stored` ones at the config's scale."""
        from safetensors import SafetensorError

        peft = import_peft()
        try:
            with _quiet():
                if self.peft is None:
                    self.peft = peft.PeftModel.from_pretrained(self.plain, str(where), adapter_name=name, is_trainable=False)
                else:
                    self.peft.load_adapter(str(where), adapter_name=name, is_trainable=False)
                wanted = set(peft.get_peft_model_state_dict(self.peft, adapter_name=name, save_embedding_layers=False))
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:  # what peft lets through from a damaged folder
            self.discard(name)
            raise AdapterError(f"can't load the LoRA deltas in {where} (damaged, or not made for this config?): {exc}") from exc
        if stored != wanted:  # peft loads what matches and leaves the rest as initialised (B = 0): an untrained delta
            self.discard(name)
            lacking = f", lacking {min(wanted - stored)}" if wanted - stored else ""
            others = f", and {len(stored - wanted)} it does not make ({min(stored - wanted)}...)" if stored - wanted else ""
            raise AdapterError(f"{where / PEFT_WEIGHTS} holds {len(stored & wanted)} of the {len(wanted)} deltas its config makes"
                               f"{lacking}{others}: damaged, or not made for this config?")
        mismatch = other_scale(self.peft, name, config)
        if mismatch is not None:  # peft's own config rules the deltas: they would score otherwise than the adapter was trained
            self.discard(name)
            rank, scale = mismatch
            raise AdapterError(f"{where / PEFT_CONFIG} makes deltas of rank {rank} scaled by {scale:.3g}, but the adapter's config says lora_rank "
                               f"{config.lora_rank} and lora_alpha {config.lora_alpha:g} (scale {config.lora_alpha / config.lora_rank:.3g}): "
                               "damaged, or not made for this config?")

    def discard(self, name: str) -> None:
        """Undo a failed load of `name`: drop its deltas, or the whole base from the shared ones when nothing else is on it."""
        with self.lock:
            if self.peft is None or list(self.peft.peft_config) == [name]:
                forget_base(self)  # peft keeps one adapter, or a failed first load left layers in `plain`: a later load builds a fresh base
            else:
                self.remove(name)

    def remove(self, name: str) -> None:
        """Drop an adapter's deltas (the last one stays: peft keeps at least one adapter)."""
        with self.lock, _quiet():
            if self.peft is not None and name in self.peft.peft_config and len(self.peft.peft_config) > 1:
                self.peft.delete_adapter(name)
                # peft makes each layer's first remaining adapter active, and the first layer's the model's: on layers that
                # adapter lacks another one stays active, which `active` would never switch; one adapter active on all layers
                self.peft.set_adapter(next(iter(self.peft.peft_config)))

    def drop_later(self, name: str) -> None:
        """Note that the adapter holding `name` is gone; its deltas leave at the base's next load (a collector's callback
        may run mid-forward or under a lock held, where taking them off at once is not safe)."""
        self._dropped.append(name)

    def _sweep(self) -> None:
        """Take off the deltas of adapters collected since (under the lock, after a load: the new adapter keeps peft's one)."""
        while self._dropped:
            self.remove(self._dropped.pop())

    @contextlib.contextmanager
    def active(self, name: str) -> Iterator[None]:
        """Hold the base with `name` the active adapter, for one forward pass."""
        with self.lock:
            if self.peft.active_adapter != name:
                self.peft.set_adapter(name)
            yield

    def save(self, name: str, folder: Path, dtype: str, base_model: str) -> dict[str, Any]:
        """Write `name`'s deltas to folder/lora in peft's format; returns them (for the card's count)."""
        from safetensors.torch import save as to_safetensors

        torch = import_torch()
        where = folder / LORA_DIR
        where.mkdir(parents=True, exist_ok=True)
        state = import_peft().get_peft_model_state_dict(self.peft, adapter_name=name, save_embedding_layers=False)  # no hub look-up
        tensors = {k: v.detach().to("cpu", getattr(torch, dtype)).contiguous() for k, v in state.items()}
        (where / PEFT_WEIGHTS).write_bytes(to_safetensors(tensors, metadata={"format": "pt"}))
        config = self.peft.peft_config[name]
        document = {**config.to_dict(), "base_model_name_or_path": base_model, "inference_mode": True}
        (where / PEFT_CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True, default=list) + "\n")
        return tensors


class Attachment:
    """An adapter's hold on its deltas on a base: once nothing holds it (the adapter and any reload's copy collected),
    the deltas leave the base at its next load, so clients and proxy keys that come and go never pile them up."""

    def __init__(self, base: SharedBase, name: str) -> None:
        weakref.finalize(self, base.drop_later, name).atexit = False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence peft's and transformers' notices that say nothing to our users (deprecations, the active adapter's switch,
    and peft 0.22's keys missing from or unexpected in a folder, which `_attach` refuses with an AdapterError naming them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted.*")
        warnings.filterwarnings("ignore", message=".*Found (missing|unexpected) adapter keys")
        yield


def other_scale(peft_model: Any, name: str, config: AdapterConfig) -> tuple[int, float] | None:
    """The (rank, scale) of the first of `name`'s LoRA layers that differs from the config's `lora_rank` and
    `lora_alpha / lora_rank` (peft's config may set another alpha, per-module patterns or rsLoRA's scale); None when all agree."""
    scale = config.lora_alpha / config.lora_rank
    for module in peft_model.modules():
        ranks, scales = getattr(module, "r", None), getattr(module, "scaling", None)
        if isinstance(ranks, dict) and isinstance(scales, dict) and name in ranks:
            if ranks[name] != config.lora_rank or not math.isclose(scales[name], scale, rel_tol=1e-6):
                return ranks[name], scales[name]
    return None


def lora_config(config: AdapterConfig, encoder: Any) -> Any:
    """peft's LoraConfig: rank `lora_rank` on every linear map of the top `trainable_layers` layers."""
    from torch import nn

    names = (n.removesuffix(".base_layer") for n, m in encoder.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n)
    linear = [name for name in names if layer_index(name + ".") is not None]
    depth = 1 + max((layer_index(n + ".") or 0 for n in linear), default=-1)
    top = depth if config.trainable_layers == -1 else min(config.trainable_layers, depth)
    if not linear or top < 1:
        raise AdapterError("a LoRA adapter needs an encoder with linear layers and trainable_layers >= 1 (or -1)")
    return import_peft().LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=sorted({n.rsplit(".", 1)[-1] for n in linear}),
        layers_to_transform=list(range(depth - top, depth)),
        bias="none",
    )


_BASES: dict[tuple[str, str], SharedBase] = {}
_BASES_LOCK = threading.Lock()


def shared_base(config: AdapterConfig, device: str, *, shared: bool = True) -> SharedBase:
    """The one base encoder for this config's base folder on `device` (loaded on first use), or a private one."""
    key = (str(config.base_path().resolve()), str(import_torch().device(device)))
    with _BASES_LOCK:
        if shared and key in _BASES:
            check_max_length(config, _BASES[key].plain, _BASES[key].tokenizer)
            return _BASES[key]
        encoder, tokenizer, fingerprint = load_base(config)
        encoder.requires_grad_(False)
        base = SharedBase(encoder.to(device).eval(), tokenizer, fingerprint, shared)
        if shared:
            _BASES[key] = base
        return base


def forget_base(base: SharedBase) -> None:
    """Hand out no more adapters on `base` (the next `shared_base` for its folder and device loads a fresh one)."""
    with _BASES_LOCK:
        for key in [key for key, known in _BASES.items() if known is base]:
            del _BASES[key]
