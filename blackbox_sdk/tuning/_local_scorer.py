"""Scoring soft prompts on a local HFBackend: batched forwards, with each example's head KV cache reused.

With `after_text` and `suffix` placement the head (template start and text) does not depend on the
prompt, so `LocalScorer` computes each example's KV cache once and every candidate runs on top of it.
A deep prompt (BBTv2) also adds a vector to the hidden state at every prompt position on the way
into each decoder layer after the first, through forward pre-hooks on those layers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .._exceptions import TuningError
from ._template import EncodedExamples

DEFAULT_BATCH = 256  # sequences per forward pass
CACHED_HEADS = 4  # example sets whose head KV caches a LocalScorer keeps (train, dev, test, ...)


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

    def layer_count(self) -> int:
        """The model's decoder layers: a deep prompt has one vector block per layer."""
        return len(_decoder_layers(self.backend.model))

    def hidden_stds(self, examples: EncodedExamples) -> list[float]:
        """The std of the hidden state entering each decoder layer, over the examples' tokens but each one's first.

        The first position is left out because decoder LMs park huge activations there (SmolLM2's
        reach 20,000 against a std of about 5 elsewhere), which would swamp the scale of a deep prompt.
        """
        rows = [list(h) + list(t) for h, t in zip(examples.heads, examples.tails, strict=True)]
        block = self._embed(rows)
        sums = [torch.zeros((), dtype=torch.float64) for _ in range(self.layer_count())]
        squares, count = [s.clone() for s in sums], 0
        for start in range(0, len(rows), self.batch_size):
            mask = block.mask[start : start + self.batch_size]
            keep = mask.bool() & (_positions(mask) > 0)  # real tokens after each row's first
            with torch.inference_mode():
                states = self.backend.model(
                    inputs_embeds=block.embeds[start : start + self.batch_size],
                    attention_mask=mask,
                    position_ids=_positions(mask),
                    output_hidden_states=True,
                ).hidden_states  # the embeddings, then each layer's output
            for layer in range(self.layer_count()):
                values = states[layer][keep].double()
                sums[layer] += values.sum().cpu()
                squares[layer] += values.square().sum().cpu()
            count += int(keep.sum()) * int(block.embeds.shape[-1])
        if count < 2:
            raise TuningError("the examples are too short to measure hidden-state scales for a deep prompt")
        return [float(((q - s * s / count) / (count - 1)).sqrt()) for s, q in zip(sums, squares, strict=True)]

    def label_logprobs(
        self,
        prompts: torch.Tensor,
        examples: EncodedExamples,
        label_ids: Sequence[int],
        *,
        layers: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probs [P, N, C] (float32, CPU) of the label tokens for every prompt [P, L, H] on every example.

        `layers` [P, n - 1, L, H] makes them deep prompts: row l is added at the prompt positions to
        the hidden state entering decoder layer l + 1 (n: `layer_count()`).
        """
        count, n = prompts.shape[0], len(examples)
        if layers is not None and tuple(layers.shape) != (count, self.layer_count() - 1, *prompts.shape[1:]):
            raise TuningError(
                f"deep prompt layers must be [{count}, {self.layer_count() - 1}, {prompts.shape[1]}, "
                f"{prompts.shape[2]}], got {list(layers.shape)}"
            )
        pairs = [(p, i) for p in range(count) for i in range(n)]  # prompt-major
        tails = self._embed(examples.tails)
        if self.reuse_cache and _cacheable(examples):
            forward = functools.partial(self._cached, self._head_cache(examples))
            start_of_prompt = 0  # the forward begins with the prompt, after the cached head
        else:
            heads = self._embed(examples.heads)
            forward = functools.partial(self._full, heads)
            start_of_prompt = int(heads.embeds.shape[1])  # heads are left-padded to one width
        labels = torch.tensor(list(label_ids), device=self.device)
        prompts = prompts.to(self.device)
        out = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            p_idx = torch.tensor([p for p, _ in chunk], device=self.device)
            n_idx = torch.tensor([i for _, i in chunk], device=self.device)
            deltas = None if layers is None else layers.to(self.device)[p_idx]
            with _added_to_layers(self.backend.model, deltas, start_of_prompt):
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
            chunks.append([(layer.keys, layer.values) for layer in _returned_cache(out).layers])
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
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1, **_cache_argument(self.backend.model, cache)
            )
        return out.logits[:, -1]  # [B, V]


def _decoder_layers(model: Any) -> Any:
    """The model's stack of decoder layers (where a deep prompt's hooks go)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise TuningError(f"{type(model).__name__} has no decoder layer stack to put a deep prompt into")
    return layers


@contextmanager
def _added_to_layers(model: Any, deltas: torch.Tensor | None, start: int) -> Iterator[None]:
    """While open, add deltas[:, l] [B, L, H] to the hidden state at positions start..start+L entering decoder layer l + 1."""
    if deltas is None:
        yield
        return

    def hook_for(delta: torch.Tensor) -> Any:
        def add(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            hidden = args[0] if args else kwargs["hidden_states"]
            end = start + delta.shape[1]
            shifted = torch.cat([hidden[:, :start], hidden[:, start:end] + delta.to(hidden.dtype), hidden[:, end:]], dim=1)
            if args:
                return (shifted, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": shifted}

        return add

    handles = [
        layer.register_forward_pre_hook(hook_for(deltas[:, i]), with_kwargs=True)
        for i, layer in enumerate(list(_decoder_layers(model))[1:])
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward returned, under this transformers version's name (reading the old name warns from 5.x)."""
    return out["cache"] if "cache" in out else out.past_key_values


def _cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache under the name this transformers version takes (`cache` from 5.x, `past_key_values` before)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _cacheable(examples: EncodedExamples) -> bool:
    """Heads worth caching: every example has one, and all tails are the same length (no padding after the prompt)."""
    return all(examples.heads) and len({len(t) for t in examples.tails}) == 1


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the count of real tokens before each one (as forward_embeds does)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
