"""What an adapter is: its base encoder, input template, pooling and trainable part (stored as JSON)."""

from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ..local import MPNET_ENCODER, default_encoder_path, mpnet_encoder_path

DEFAULT_BASE = "default"
_JSON_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "float | None": (int, float, type(None))}


@dataclass
class AdapterConfig:
    """What an adapter is (base encoder, input template, pooling, which part trains); stored as JSON."""

    base_model: str = DEFAULT_BASE  # "default" = all-MiniLM-L6-v2, "all-mpnet-base-v2", or the path of an HF encoder folder
    template: str = "Q: {question}\nA: {answer}"  # one text per (question, answer) pair
    max_length: int = 128  # tokens per text; longer texts lose their beginning (left truncation)
    pooling: str = "mean"  # "mean" over the tokens, or "cls" (the first token)
    trainable_layers: int = 2  # top encoder layers that adapt (whole, or through LoRA deltas); -1 = all
    lora_rank: int = 0  # > 0: those layers adapt through LoRA deltas of this rank (peft) on one shared frozen base
    lora_alpha: float = 16.0  # LoRA scaling numerator: the deltas are multiplied by lora_alpha / lora_rank
    score_batch_size: int = 64  # texts per forward pass when scoring
    consensus: float = 1.0  # weight of log(copies of the same answer among those scored together), see Adapter.score()
    confidence: float | None = None  # adaptive K's stop share for rerank_confidence="auto", chosen at training (None: every answer)

    def __post_init__(self) -> None:
        """Reject a config that could not score anything, before any model is loaded; a base folder's path made absolute
        (a relative one, saved with the adapter, pointed elsewhere from another working directory)."""
        if isinstance(self.base_model, str) and self.base_model not in (DEFAULT_BASE, MPNET_ENCODER):
            self.base_model = os.path.abspath(os.path.expanduser(self.base_model))
        _check_template(self.template)
        if self.pooling not in ("mean", "cls"):
            raise AdapterError(f"pooling must be 'mean' or 'cls', not {self.pooling!r}")
        if self.max_length < 8:
            raise AdapterError(f"max_length must be at least 8 tokens, not {self.max_length}")
        if self.trainable_layers < -1:
            raise AdapterError(f"trainable_layers must be -1 (all) or >= 0, not {self.trainable_layers}")
        if self.lora_rank < 0 or not (self.lora_alpha > 0 and math.isfinite(self.lora_alpha)):  # an infinite alpha scores NaN
            raise AdapterError(f"lora_rank must be >= 0 and lora_alpha > 0 (finite), not {self.lora_rank} and {self.lora_alpha}")
        if self.score_batch_size < 1:
            raise AdapterError(f"score_batch_size must be >= 1, not {self.score_batch_size}")
        if not (self.consensus >= 0 and math.isfinite(self.consensus)):
            raise AdapterError(f"consensus must be a finite number >= 0, not {self.consensus}")
        if self.confidence is not None and not 0 < self.confidence <= 1:
            raise AdapterError(f"confidence must be None or in (0, 1], not {self.confidence}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """A config from its JSON form; unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise AdapterError(f"an adapter config must be a JSON object, not {type(data).__name__}")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise AdapterError(f"unknown adapter config keys: {unknown}")
        for key, value in data.items():
            allowed = _JSON_TYPES[str(known[key])]
            if not isinstance(value, allowed) or isinstance(value, bool):
                raise AdapterError(f"adapter config {key!r} must be {known[key]}, not {value!r}")
        return cls(**data)

    def render(self, question: str, answer: str) -> str:
        """The text the encoder reads for one (question, answer) pair."""
        return self.template.format(question=question, answer=answer)

    def base_path(self) -> Path:
        """The folder of the base encoder (the names "default" and "all-mpnet-base-v2" resolve to packaged encoders)."""
        named = {DEFAULT_BASE: default_encoder_path, MPNET_ENCODER: mpnet_encoder_path}
        path = named[self.base_model]() if self.base_model in named else Path(self.base_model)
        if not (path / "config.json").is_file():
            raise NoBaseEncoder(
                f"base encoder folder {path} has no config.json (base_model is '{DEFAULT_BASE}' (all-MiniLM-L6-v2), "
                f"'{MPNET_ENCODER}' or an encoder folder's path; a Hugging Face hub name is not downloaded)"
            )
        return path


class NoBaseEncoder(AdapterError):
    """The base encoder a config names is not here: no such packaged name, or no encoder folder at its path."""


def _check_template(template: Any) -> None:
    """AdapterError unless the template renders with exactly the fields {question} and {answer}."""
    if not isinstance(template, str) or "{question}" not in template or "{answer}" not in template:
        raise AdapterError(f"template must contain {{question}} and {{answer}}: {template!r}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise AdapterError(f"template {template!r} can't be rendered: {exc}; write a literal brace as {{{{ or }}}}") from exc
    if names != {"question", "answer"}:
        raise AdapterError(f"template fields must be {{question}} and {{answer}} only, not {sorted(names - {'question', 'answer'})}: {template!r}")
    try:
        template.format(question="", answer="")
    except (ValueError, KeyError, IndexError) as exc:  # a field inside a format spec, a spec that does not apply to text
        raise AdapterError(f"template {template!r} can't be rendered: {exc!r}") from exc
