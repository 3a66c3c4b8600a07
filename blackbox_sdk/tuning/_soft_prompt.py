"""The tuned artefact: a soft prompt's embeds and what it was tuned for, saved as safetensors + JSON.

A `SoftPrompt` is what tuning returns and serving registers; `classify` scores texts with it on a
target (by default the one it was tuned on). Saving and loading use no pickle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file
from safetensors.torch import save as to_safetensors

from .._exceptions import TuningError
from ._scorer import resolve_target
from ._template import Placement, PromptTemplate

TENSORS_FILE = "soft_prompt.safetensors"
INFO_FILE = "soft_prompt.json"


class SoftPromptInfo(BaseModel):
    """What a saved soft prompt was tuned for and how well it did (the JSON beside the tensors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model_id: str
    template: str
    verbalizer: dict[str, str]
    placement: Placement
    prompt_len: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    d: int | None = Field(default=None, ge=1)
    seed: int | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


def _default_name(embeds: torch.Tensor) -> str:
    """A stable name from the prompt's values: `bbt-` and 12 hex digits."""
    digest = hashlib.sha256(embeds.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return f"bbt-{digest[:12]}"


class SoftPrompt:
    """A tuned soft prompt: embeds [L, H] (float32) plus its SoftPromptInfo; saved as safetensors + JSON."""

    def __init__(
        self, embeds: torch.Tensor, info: SoftPromptInfo, *, z: torch.Tensor | None = None, target: Any = None
    ) -> None:
        if embeds.ndim != 2 or tuple(embeds.shape) != (info.prompt_len, info.hidden_size):
            raise TuningError(
                f"soft prompt embeds must be [{info.prompt_len}, {info.hidden_size}], got {list(embeds.shape)}"
            )
        if not torch.isfinite(embeds).all():
            raise TuningError("soft prompt embeds must be finite")
        self.embeds = embeds.detach().float().cpu()
        self.info = info
        self.z = None if z is None else z.detach().float().cpu()
        self.target = target  # what classify() scores on by default; not saved

    @classmethod
    def create(
        cls,
        embeds: torch.Tensor,
        *,
        z: torch.Tensor | None = None,
        target: Any = None,
        name: str | None = None,
        **fields: Any,
    ) -> SoftPrompt:
        """A SoftPrompt from embeds and SoftPromptInfo fields (the name defaults to a hash of the values)."""
        if embeds.ndim != 2:
            raise TuningError(f"soft prompt embeds must be [L, H], got {list(embeds.shape)}")
        info = SoftPromptInfo(
            name=name or _default_name(embeds), prompt_len=embeds.shape[0], hidden_size=embeds.shape[1], **fields
        )
        return cls(embeds, info, z=z, target=target)

    @property
    def name(self) -> str:
        """The name the serving path registers it under."""
        return self.info.name

    @property
    def placement(self) -> Placement:
        """Where it goes in the input (only `prefix` can be served by prepending)."""
        return self.info.placement

    @property
    def template(self) -> str:
        """The template it was tuned with."""
        return self.info.template

    @property
    def verbalizer(self) -> dict[str, str]:
        """Label -> answer word."""
        return dict(self.info.verbalizer)

    def save(self, folder: str | Path) -> Path:
        """Write soft_prompt.safetensors and soft_prompt.json into folder (created); returns the folder."""
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"embeds": self.embeds.contiguous()}
        if self.z is not None:
            tensors["z"] = self.z.contiguous()
        # save_file would make it 0600, unlike the JSON beside it
        (path / TENSORS_FILE).write_bytes(to_safetensors(tensors))
        (path / INFO_FILE).write_text(self.info.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path, *, target: Any = None) -> SoftPrompt:
        """Read a folder written by save (no pickle); TuningError when files are missing or inconsistent."""
        path = Path(folder)
        if not (path / TENSORS_FILE).is_file() or not (path / INFO_FILE).is_file():
            raise TuningError(f"{path} holds no saved soft prompt ({TENSORS_FILE} + {INFO_FILE})")
        try:
            info = SoftPromptInfo.model_validate_json((path / INFO_FILE).read_text())
        except ValidationError as exc:
            raise TuningError(f"{path / INFO_FILE} is not a valid soft prompt description: {exc}") from None
        tensors = load_file(str(path / TENSORS_FILE))
        if "embeds" not in tensors:
            raise TuningError(f"{path / TENSORS_FILE} has no 'embeds' tensor")
        return cls(tensors["embeds"], info, z=tensors.get("z"), target=target)

    def classify(self, texts: Sequence[str], target: Any = None) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) per text, scored on target (default: the model it was tuned on)."""
        scorer = resolve_target(self._target(target))
        hidden = scorer.embedding_table().shape[1]
        if hidden != self.info.hidden_size:
            raise TuningError(f"this soft prompt is for hidden size {self.info.hidden_size}, the target has {hidden}")
        template = PromptTemplate(self.info.template, self.info.verbalizer, scorer.tokenizer, self.info.placement)
        logprobs = scorer.label_logprobs(self.embeds[None], template.encode(list(texts)), template.label_token_ids)[0]
        probs = torch.softmax(logprobs, dim=-1)  # [N, C], over the labels only
        return [label_and_probs(template.labels, row) for row in probs]

    def _target(self, target: Any) -> Any:
        """The target to score on: the one given, else the one it was tuned on."""
        if target is None and self.target is None:
            raise TuningError("no target to classify on: pass target= (an HFBackend, hf: client or EmbedsEndpoint)")
        return self.target if target is None else target


def label_and_probs(labels: Sequence[str], probs: torch.Tensor) -> tuple[str, dict[str, float]]:
    """The most probable label and the label -> probability map of one example."""
    values = [float(p) for p in probs]
    return labels[max(range(len(values)), key=values.__getitem__)], dict(zip(labels, values, strict=True))
