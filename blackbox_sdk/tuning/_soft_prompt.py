"""The tuned artefact: a soft prompt's embeds and what it was tuned for, saved as safetensors + JSON.

A `SoftPrompt` is what tuning returns and serving registers; `classify` scores texts with it on a
target (by default the one it was tuned on). A deep prompt (BBTv2) also carries `layers`, the
vectors added inside every decoder layer after the first; it is scored on local models only.
Saving and loading use no pickle. A client given a saved folder serves it as a `SavedSoftPrompt`,
which reads the folder again when a save changes it, as a served adapter's hot reload does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as to_safetensors

from .._exceptions import TuningError
from .._logging import logger
from ._examples import checked_texts
from ._local_scorer import LocalScorer
from ._scorer import resolve_target
from ._template import Placement, PromptTemplate

TENSORS_FILE = "soft_prompt.safetensors"
INFO_FILE = "soft_prompt.json"
DIGEST_KEY = "tensors_sha256"  # in INFO_FILE beside the description: the tensors file's digest, so a save cut between the two is caught


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
    layers: int = Field(default=1, ge=1)  # prompt layers: 1, or the model's decoder layers for a deep prompt
    d: int | None = Field(default=None, ge=1)
    seed: int | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)


def _default_name(embeds: torch.Tensor) -> str:
    """A stable name from the prompt's values: `bbt-` and 12 hex digits."""
    digest = hashlib.sha256(embeds.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
    return f"bbt-{digest[:12]}"


class SoftPrompt:
    """A tuned soft prompt: embeds [L, H] (float32), a deep prompt's layers [n - 1, L, H], and its SoftPromptInfo."""

    def __init__(
        self,
        embeds: torch.Tensor,
        info: SoftPromptInfo,
        *,
        layers: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        target: Any = None,
    ) -> None:
        if embeds.ndim != 2 or tuple(embeds.shape) != (info.prompt_len, info.hidden_size):
            raise TuningError(
                f"soft prompt embeds must be [{info.prompt_len}, {info.hidden_size}], got {list(embeds.shape)}"
            )
        want = (info.layers - 1, info.prompt_len, info.hidden_size)
        if (layers is None) != (info.layers == 1) or (layers is not None and tuple(layers.shape) != want):
            got = "none" if layers is None else list(layers.shape)
            raise TuningError(f"a soft prompt of {info.layers} layer(s) needs layers {list(want)}, got {got}")
        embeds, layers = embeds.detach().float().cpu(), None if layers is None else layers.detach().float().cpu()
        if not torch.isfinite(embeds).all() or (layers is not None and not torch.isfinite(layers).all()):
            raise TuningError("soft prompt embeds must be finite (as float32, how they are kept)")
        if z is not None:
            _check_z(z, info)
        self.embeds = embeds
        self.layers = layers
        self.info = info
        self.z = None if z is None else z.detach().float().cpu()
        self.target = target  # what classify() scores on by default; not saved

    @classmethod
    def create(
        cls,
        embeds: torch.Tensor,
        *,
        layers: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        target: Any = None,
        name: str | None = None,
        **fields: Any,
    ) -> SoftPrompt:
        """A SoftPrompt from embeds (and a deep prompt's layers) and SoftPromptInfo fields (the name defaults to a hash of the
        values); TuningError for a field SoftPromptInfo refuses."""
        if embeds.ndim != 2:
            raise TuningError(f"soft prompt embeds must be [L, H], got {list(embeds.shape)}")
        if taken := sorted({"prompt_len", "hidden_size"} & fields.keys()):
            raise TuningError(f"{', '.join(taken)}: set by the embeds' shape [L, H], not a field to pass")
        count = 1 if layers is None else 1 + int(layers.shape[0])
        stacked = embeds if layers is None else torch.cat([embeds[None], layers])
        try:
            info = SoftPromptInfo(
                name=name or _default_name(stacked), prompt_len=embeds.shape[0], hidden_size=embeds.shape[1], layers=count, **fields
            )
        except ValidationError as exc:
            raise TuningError(f"bad soft prompt fields: {exc}") from None
        return cls(embeds, info, layers=layers, z=z, target=target)

    @property
    def name(self) -> str:
        """The name the serving path registers it under."""
        return self.info.name

    @property
    def placement(self) -> Placement:
        """Where it goes in the input (only `prefix` can be served by prepending)."""
        return self.info.placement

    @property
    def deep(self) -> bool:
        """Whether it adds vectors inside the model's layers too (BBTv2); such a prompt is scored on local models only."""
        return self.layers is not None

    def stacked(self) -> torch.Tensor:
        """Every layer's vectors [n, L, H]: the embeds, then a deep prompt's layers."""
        return self.embeds[None] if self.layers is None else torch.cat([self.embeds[None], self.layers])

    @property
    def template(self) -> str:
        """The template it was tuned with."""
        return self.info.template

    @property
    def verbalizer(self) -> dict[str, str]:
        """Label -> answer word."""
        return dict(self.info.verbalizer)

    def save(self, folder: str | Path) -> Path:
        """Write soft_prompt.safetensors, then soft_prompt.json naming the tensors' digest, into folder (created), each
        file whole; a save cut between the two is caught by `load`. Returns the folder."""
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise TuningError(f"can't save a soft prompt to {path}: it is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"embeds": self.embeds.contiguous()}
        if self.layers is not None:
            tensors["layers"] = self.layers.contiguous()
        if self.z is not None:
            tensors["z"] = self.z.contiguous()
        data = to_safetensors(tensors)  # save_file would make it 0600, unlike the JSON beside it
        document = {**json.loads(self.info.model_dump_json()), DIGEST_KEY: hashlib.sha256(data).hexdigest()}
        _write_whole(path / TENSORS_FILE, data)
        _write_whole(path / INFO_FILE, (json.dumps(document, indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, folder: str | Path, *, target: Any = None) -> SoftPrompt:
        """Read a folder written by save (no pickle); TuningError when files are missing or inconsistent."""
        path = Path(folder)
        if not (path / TENSORS_FILE).is_file() or not (path / INFO_FILE).is_file():
            raise TuningError(f"{path} holds no saved soft prompt ({TENSORS_FILE} + {INFO_FILE})")
        info, digest = _read_info(path / INFO_FILE)
        try:
            data = (path / TENSORS_FILE).read_bytes()
            tensors = load_tensors(data)
        except (SafetensorError, OSError) as exc:
            raise TuningError(f"{path / TENSORS_FILE} can't be read as safetensors: {exc}") from None
        if "embeds" not in tensors:
            raise TuningError(f"{path / TENSORS_FILE} has no 'embeds' tensor")
        prompt = cls(tensors["embeds"], info, layers=tensors.get("layers"), z=tensors.get("z"), target=target)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:  # None: an older save, which kept none
            raise TuningError(f"{path / TENSORS_FILE} is not the one {INFO_FILE} was saved with (a save cut short?): save the prompt again")
        return prompt

    def classify(self, texts: Sequence[str], target: Any = None) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) per text, scored on target (default: the model it was tuned on)."""
        texts = checked_texts(texts)
        if not texts:
            return []
        scorer = resolve_target(self._target(target))
        hidden = scorer.embedding_table().shape[1]
        if hidden != self.info.hidden_size:
            raise TuningError(f"this soft prompt is for hidden size {self.info.hidden_size}, the target has {hidden}")
        deep = {} if self.layers is None else {"layers": self.layers[None]}
        if deep and not isinstance(scorer, LocalScorer):
            raise TuningError("a deep soft prompt adds vectors inside the model's layers: classify it on a local model")
        template = PromptTemplate(self.info.template, self.info.verbalizer, scorer.tokenizer, self.info.placement)
        examples = template.encode(texts)
        logprobs = scorer.label_logprobs(self.embeds[None], examples, template.label_token_ids, **deep)[0]
        probs = torch.softmax(logprobs, dim=-1)  # [N, C], over the labels only
        return [label_and_probs(template.labels, row) for row in probs]

    def _target(self, target: Any) -> Any:
        """The target to score on: the one given, else the one it was tuned on."""
        if target is None and self.target is None:
            raise TuningError("no target to classify on: pass target= (an HFBackend, hf: client or EmbedsEndpoint)")
        return self.target if target is None else target


class SavedSoftPrompt:
    """A soft prompt served from its folder: read again (at most once per `reload_interval` seconds, three stats
    otherwise) when a save changed its files, so a prompt re-tuned into the same folder is served without a restart.
    A save that can't be read, or one of a deep prompt, keeps the loaded prompt, with one warning."""

    def __init__(self, folder: str | Path, reload_interval: float = 1.0) -> None:
        self.folder, self.reload_interval = Path(folder), reload_interval
        self._stamp = _stamp(self.folder)
        self._prompt = SoftPrompt.load(self.folder)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> SoftPrompt:
        """The prompt the folder holds now: read again when its files changed since the last read."""
        with self._lock:
            if time.monotonic() - self._checked >= self.reload_interval:
                self._checked = time.monotonic()
                stamp = _stamp(self.folder)
                if stamp is not None and stamp != self._stamp:
                    self._stamp = stamp
                    self._reload(stamp)
            return self._prompt

    def _reload(self, stamp: object) -> None:
        """Read the folder again; keep the loaded prompt when the new save can't be served."""
        try:
            prompt = SoftPrompt.load(self.folder)
            if prompt.deep:
                raise TuningError("it is deep (BBTv2), which a request can't carry")
        except TuningError as exc:
            if _stamp(self.folder) == stamp:  # not a save caught between its two files: say so once
                logger.warning("soft prompt %s: its new save can't be served, %s keeps serving: %s", self.folder, self._prompt.name, exc)
            return
        self._prompt = prompt

    def __getattr__(self, name: str) -> Any:
        """A SoftPrompt's attributes (`embeds`, `name`, `layers`, ...), of the prompt the folder holds now."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.current(), name)


def _stamp(folder: Path) -> tuple[tuple[int, int, int], ...] | None:
    """(inode, mtime ns, size) of a saved prompt's two files: whether a save may have changed them (None: one is missing)."""
    try:
        stats = [os.stat(folder / name) for name in (TENSORS_FILE, INFO_FILE)]
    except (OSError, ValueError):
        return None
    return tuple((info.st_ino, info.st_mtime_ns, info.st_size) for info in stats)


def _write_whole(path: Path, data: bytes) -> None:
    """Write a file whole: a temporary file beside it renamed over it, so a reader never sees half of it."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _read_info(path: Path) -> tuple[SoftPromptInfo, object]:
    """A saved description and the tensors' digest written beside it (None when an older save kept none); TuningError
    for a file that can't be read or is not a description."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise TuningError(f"{path} can't be read: {exc}") from None
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past what the parser takes
        raise TuningError(f"{path} is not a valid soft prompt description: {exc}") from None
    digest = document.pop(DIGEST_KEY, None) if isinstance(document, dict) else None
    try:
        return SoftPromptInfo.model_validate(document), digest
    except ValidationError as exc:
        raise TuningError(f"{path} is not a valid soft prompt description: {exc}") from None


def _check_z(z: torch.Tensor, info: SoftPromptInfo) -> None:
    """TuningError unless z is a search point A maps: [d] (one layer) or [layers, d], finite, d as the saved config has it."""
    configured = info.config.get("d", info.d)
    if info.d is None or configured != info.d:
        raise TuningError(f"a soft prompt with z needs its d, and one d: the description says d={info.d}, its config d={configured}")
    want = (info.d,) if info.layers == 1 else (info.layers, info.d)
    if tuple(z.shape) != want:
        raise TuningError(f"z must be {list(want)} (d={info.d}, {info.layers} layer(s): A maps R^d to each layer's prompt), got {list(z.shape)}")
    if not torch.isfinite(z.float()).all():
        raise TuningError("z must be finite")


def label_and_probs(labels: Sequence[str], probs: torch.Tensor) -> tuple[str, dict[str, float]]:
    """The most probable label and the label -> probability map of one example."""
    values = [float(p) for p in probs]
    return labels[max(range(len(values)), key=values.__getitem__)], dict(zip(labels, values, strict=True))
