"""Soft prompts: the template they fill, the models that score them, and the saved artefact.

A soft prompt is L vectors in a model's input-embedding space. Each example becomes
`head + <soft prompt> + tail`, and the model's next-token log-probabilities after the tail, read at
the verbalizer tokens, score the labels. Where the soft prompt goes (`placement`):

- `prefix`: before everything (the paper): `<p> Review: {text} It was`
- `after_text`: right after the text: `Review: {text} <p> It was`
- `suffix`: right before the answer: `Review: {text} It was <p>`

With `after_text` and `suffix` the head (template start and text) does not depend on the prompt,
so `LocalScorer` computes each example's KV cache once and every candidate prompt reuses it.

This module holds what tuning and serving share: `PromptTemplate` (template + verbalizer,
validated up front, tokenised), `LocalScorer` (label log-probs from a local `HFBackend`),
`resolve_target` (backend, client or embeddings endpoint -> scorer; anything else is refused
before a call is spent) and `SoftPrompt` (embeds + metadata, safetensors + JSON, `classify`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file
from safetensors.torch import save as to_safetensors

from .errors import EmbeddingsNotSupportedError, TuningError

__all__ = [
    "EncodedExamples",
    "LocalScorer",
    "Placement",
    "PromptTemplate",
    "Scorer",
    "SoftPrompt",
    "SoftPromptInfo",
    "resolve_target",
]

Placement = Literal["prefix", "after_text", "suffix"]
TEXT_SLOT = "{text}"
LABEL_SLOT = "{label}"
TENSORS_FILE = "soft_prompt.safetensors"
INFO_FILE = "soft_prompt.json"
DEFAULT_BATCH = 256  # sequences per forward pass
CACHED_HEADS = 4  # example sets whose head KV caches a LocalScorer keeps (train, dev, test, ...)


# ---------------------------------------------------------------- template and verbalizer


@dataclass(frozen=True)
class EncodedExamples:
    """Examples as token ids split around the soft prompt: `head + <soft> + tail`, answer next."""

    heads: tuple[tuple[int, ...], ...]
    tails: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]  # class index of each example; -1 when unknown (classify)
    key: str  # content hash, so scorers can cache per example set

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.heads)

    def tokens_per_sequence(self, prompt_len: int) -> list[int]:
        """Positions each example's sequence holds with a soft prompt of prompt_len vectors."""
        return [len(h) + prompt_len + len(t) for h, t in zip(self.heads, self.tails, strict=True)]


def _split_template(template: str) -> tuple[str, str, str]:
    """(before text, between text and label without its trailing space, that space); TuningError if malformed."""
    if template.count(TEXT_SLOT) != 1 or template.count(LABEL_SLOT) != 1:
        raise TuningError(f"the template needs exactly one {TEXT_SLOT} and one {LABEL_SLOT} slot, got {template!r}")
    before, rest = template.split(TEXT_SLOT)
    if LABEL_SLOT in before:
        raise TuningError(f"{LABEL_SLOT} must come after {TEXT_SLOT}: a causal LM reads the answer after the text")
    between, after = rest.split(LABEL_SLOT)
    if after.strip():
        raise TuningError(
            f"{LABEL_SLOT} must end the template (a causal LM predicts it last), found {after!r} after it"
        )
    stripped = between.rstrip()
    return before, stripped, between[len(stripped) :]


class PromptTemplate:
    """A template such as `"Review: {text} It was {label}"` and a verbalizer {label: word}, tokenizer-checked."""

    def __init__(self, template: str, verbalizer: Mapping[str, str], tokenizer: Any, placement: Placement) -> None:
        self.template = template
        self.verbalizer = dict(verbalizer)
        self.placement = placement
        self._tokenizer = tokenizer
        self._before, self._between, separator = _split_template(template)
        self.labels = list(self.verbalizer)
        self.label_token_ids = self._label_tokens(separator)
        self._bos = self._leading_bos()

    def _label_tokens(self, separator: str) -> list[int]:
        """One distinct token per label (the word as it follows the template, space included)."""
        if len(self.verbalizer) < 2:
            raise TuningError(f"a verbalizer needs at least two labels, got {self.verbalizer}")
        ids = []
        for label, word in self.verbalizer.items():
            if not isinstance(word, str) or not word.strip():
                raise TuningError(f"label {label!r} has an empty verbalizer word")
            tokens = self._tokenizer.encode(separator + word.strip(), add_special_tokens=False)
            if len(tokens) != 1:
                raise TuningError(
                    f"verbalizer word {separator + word.strip()!r} for label {label!r} is {len(tokens)} tokens "
                    f"{tokens}; each must be a single token"
                )
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            raise TuningError(f"verbalizer words map to the same token: {dict(zip(self.labels, ids, strict=True))}")
        return ids

    def _leading_bos(self) -> list[int]:
        """[bos] when the tokenizer puts one in front of a text by itself, else []."""
        bos = self._tokenizer.bos_token_id
        return [bos] if bos is not None and self._tokenizer.encode("x")[:1] == [bos] else []

    def _ids(self, text: str) -> tuple[int, ...]:
        """Token ids of a piece of text, no special tokens."""
        return tuple(self._tokenizer.encode(text, add_special_tokens=False)) if text else ()

    def split(self, text: str) -> tuple[str, str]:
        """(head, tail) text of one example around the soft prompt, by placement."""
        full_head = self._before + text
        if self.placement == "prefix":
            return "", full_head + self._between
        if self.placement == "after_text":
            return full_head, self._between
        return full_head + self._between, ""

    def encode(self, texts: Sequence[str], labels: Sequence[str] | None = None) -> EncodedExamples:
        """Token ids of texts (and class indexes of labels) for scoring."""
        pieces = [self.split(text) for text in texts]
        heads = tuple(tuple(self._bos) + self._ids(head) for head, _ in pieces)
        tails = tuple(self._ids(tail) for _, tail in pieces)
        classes = tuple(self.labels.index(label) for label in labels) if labels is not None else (-1,) * len(texts)
        key = hashlib.sha256(json.dumps([heads, tails]).encode()).hexdigest()
        return EncodedExamples(heads=heads, tails=tails, labels=classes, key=key)


# ---------------------------------------------------------------- scorers


@runtime_checkable
class Scorer(Protocol):
    """Something that scores soft prompts: label log-probs of every (prompt, example) pair."""

    model_id: str
    tokenizer: Any
    device: torch.device

    def embedding_table(self) -> torch.Tensor:
        """The model's input-embedding matrix [V, H]."""
        ...

    def label_logprobs(
        self, prompts: torch.Tensor, examples: EncodedExamples, label_ids: Sequence[int]
    ) -> torch.Tensor:
        """Next-token log-probs [P, N, C] at the verbalizer tokens, for prompts [P, L, H] on N examples."""
        ...

    def tokens_sent(self, prompt_len: int, examples: EncodedExamples) -> int:
        """Prompt tokens one candidate costs on these examples, as a server would bill them."""
        ...


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [N, T] and their mask [N, T] (T may be 0)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long).reshape(len(rows), width)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long).reshape(
        len(rows), width
    )
    return ids, mask


@dataclass
class _Block:
    """A left-padded block of token embeddings [N, T, H] with its mask [N, T]."""

    embeds: torch.Tensor
    mask: torch.Tensor


@dataclass
class _HeadCache:
    """Each example's head KV cache: per layer keys/values [N, heads, T, D], and the head mask [N, T]."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor


class LocalScorer:
    """Scores soft prompts on a local HFBackend in batched forwards, reusing head KV caches when it can."""

    def __init__(self, backend: Any, *, batch_size: int = DEFAULT_BATCH, reuse_cache: bool = True) -> None:
        if batch_size < 1:
            raise TuningError(f"batch_size must be at least 1, got {batch_size}")
        self.backend = backend
        self.model_id: str = backend.model_id
        self.tokenizer = backend.tokenizer
        self.device: torch.device = backend.device
        self.batch_size = batch_size
        self.reuse_cache = reuse_cache
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._heads: dict[str, _HeadCache] = {}

    def embedding_table(self) -> torch.Tensor:
        """The backend's input-embedding matrix [V, H]."""
        return self.backend.input_embeddings().weight

    def tokens_sent(self, prompt_len: int, examples: EncodedExamples) -> int:
        """Prompt tokens one candidate costs on these examples (every position, as a server bills them)."""
        return sum(examples.tokens_per_sequence(prompt_len))

    def _embed(self, rows: Sequence[Sequence[int]]) -> _Block:
        """Left-padded token embeddings of id rows, on the model's device and dtype."""
        ids, mask = _left_pad(rows, self._pad)
        with torch.inference_mode():
            embeds = self.backend.input_embeddings()(ids.to(self.device))  # [N, T, H]
        return _Block(embeds, mask.to(self.device))

    def label_logprobs(
        self, prompts: torch.Tensor, examples: EncodedExamples, label_ids: Sequence[int]
    ) -> torch.Tensor:
        """Log-probs [P, N, C] (float32, CPU) of the label tokens for every prompt [P, L, H] on every example."""
        count, n = prompts.shape[0], len(examples)
        pairs = [(p, i) for p in range(count) for i in range(n)]  # prompt-major
        tails = self._embed(examples.tails)
        if self.reuse_cache and _cacheable(examples):
            forward = functools.partial(self._cached, self._head_cache(examples))
        else:
            forward = functools.partial(self._full, self._embed(examples.heads))
        labels = torch.tensor(list(label_ids), device=self.device)
        prompts = prompts.to(self.device)
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            p_idx = torch.tensor([p for p, _ in chunk], device=self.device)
            n_idx = torch.tensor([i for _, i in chunk], device=self.device)
            logits = forward(prompts[p_idx], tails, n_idx)  # [B, V]
            out.append(torch.log_softmax(logits.float(), dim=-1)[:, labels].cpu())  # [B, C]
        return torch.cat(out).reshape(count, n, len(label_ids))

    def _full(self, heads: _Block, soft: torch.Tensor, tails: _Block, n_idx: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, V] of head + soft + tail sequences in one forward pass."""
        dtype = heads.embeds.dtype
        embeds = torch.cat([heads.embeds[n_idx], soft.to(dtype), tails.embeds[n_idx]], dim=1)  # [B, T, H]
        ones = torch.ones(soft.shape[:2], dtype=torch.long, device=self.device)  # [B, L]
        mask = torch.cat([heads.mask[n_idx], ones, tails.mask[n_idx]], dim=1)  # [B, T]
        return self.backend.forward_embeds(embeds, mask, logits_to_keep=1)[:, -1]  # [B, V]

    def _head_cache(self, examples: EncodedExamples) -> _HeadCache:
        """Each example's head KV cache, computed once per example set and kept."""
        if examples.key not in self._heads:
            if len(self._heads) >= CACHED_HEADS:
                self._heads.pop(next(iter(self._heads)))
            self._heads[examples.key] = self._compute_heads(examples)
        return self._heads[examples.key]

    def _compute_heads(self, examples: EncodedExamples) -> _HeadCache:
        """Run every head once (left-padded) and keep its keys and values."""
        block = self._embed(examples.heads)
        chunks = []  # per chunk of examples: per layer (keys, values)
        for start in range(0, len(examples), self.batch_size):
            rows = slice(start, start + self.batch_size)
            mask = block.mask[rows]  # [b, T_head]
            with torch.inference_mode():
                out = self.backend.model(
                    inputs_embeds=block.embeds[rows], attention_mask=mask, position_ids=_positions(mask), use_cache=True
                )
            chunks.append([(layer.keys, layer.values) for layer in out.past_key_values.layers])
        layers = [
            (torch.cat([c[i][0] for c in chunks]), torch.cat([c[i][1] for c in chunks])) for i in range(len(chunks[0]))
        ]
        return _HeadCache(layers, block.mask)

    def _cached(self, head: _HeadCache, soft: torch.Tensor, tails: _Block, n_idx: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, V] of soft + tail run on top of the examples' head caches."""
        from transformers import DynamicCache

        cache = DynamicCache([(k[n_idx], v[n_idx]) for k, v in head.layers])
        embeds = torch.cat([soft.to(tails.embeds.dtype), tails.embeds[n_idx]], dim=1)  # [B, L + T_tail, H]
        new = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)  # [B, L + T_tail]
        mask = torch.cat([head.mask[n_idx], new], dim=1)  # [B, T_head + L + T_tail]
        positions = _positions(mask)[:, -embeds.shape[1] :]  # [B, L + T_tail]
        with torch.inference_mode():
            out = self.backend.model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                logits_to_keep=1,
            )
        return out.logits[:, -1]  # [B, V]


def _cacheable(examples: EncodedExamples) -> bool:
    """Heads worth caching: every example has one, and all tails are the same length (no padding after the prompt)."""
    return all(examples.heads) and len({len(t) for t in examples.tails}) == 1


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the count of real tokens before each one (as forward_embeds does)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def resolve_target(target: Any, *, batch_size: int = DEFAULT_BATCH) -> Scorer:
    """A scorer for an HFBackend, an `hf:` client, or an embeddings endpoint; EmbeddingsNotSupportedError otherwise."""
    from .hf_backend import HFBackend

    if isinstance(target, Scorer):
        if not getattr(target, "supports_prompt_embeds", True):
            raise EmbeddingsNotSupportedError(
                f"{type(target).__name__} was not told that its server takes prompt embeddings: pass "
                "supports_prompt_embeds=True only for a server that does (vLLM with --enable-prompt-embeds)"
            )
        return target
    backend = target if isinstance(target, HFBackend) else getattr(target, "backend", None)
    if backend is None or not getattr(backend, "supports_embeddings", False):
        raise EmbeddingsNotSupportedError(
            f"{type(target).__name__} can't take input embeddings: black-box tuning needs an HFBackend, a "
            "blackbox_sdk client with base_url='hf:...', or an EmbedsEndpoint for a server that accepts prompt_embeds"
        )
    return LocalScorer(backend, batch_size=batch_size)


# ---------------------------------------------------------------- the artefact


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
        (path / TENSORS_FILE).write_bytes(to_safetensors(tensors))  # save_file would make it 0600, unlike the JSON beside it
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
        return [_labelled(template.labels, row) for row in probs]

    def _target(self, target: Any) -> Any:
        """The target to score on: the one given, else the one it was tuned on."""
        if target is None and self.target is None:
            raise TuningError("no target to classify on: pass target= (an HFBackend, hf: client or EmbedsEndpoint)")
        return self.target if target is None else target


def _labelled(labels: Sequence[str], probs: torch.Tensor) -> tuple[str, dict[str, float]]:
    """The most probable label and the label -> probability map of one example."""
    values = [float(p) for p in probs]
    return labels[max(range(len(values)), key=values.__getitem__)], dict(zip(labels, values, strict=True))
