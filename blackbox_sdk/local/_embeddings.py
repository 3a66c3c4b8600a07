"""The model at the embedding level: /embeddings vectors (mean-pooled last hidden states), and the
hooks Black-Box Tuning needs (a forward pass on input embeddings, soft prompts checked for use).
"""

from __future__ import annotations

import torch

from .._exceptions import ConfigError
from ._loading import LoadedModel
from ._prompts import text_prompt_ids
from ._requests import LocalRequestError

EMBEDDING_BATCH = 16  # inputs per forward pass when embedding


def embedding_ids(lm: LoadedModel, item: str | list[int], param: str) -> list[int]:
    """Token ids of one embedding input, refused when longer than the context or out of vocabulary."""
    ids = text_prompt_ids(lm.tokenizer, item) if isinstance(item, str) else item
    vocab = lm.input_embeddings().num_embeddings
    if any(not 0 <= t < vocab for t in ids):
        raise LocalRequestError(f"{param} holds token ids outside 0..{vocab - 1}", param=param)
    if len(ids) > lm.context_length:
        raise LocalRequestError(
            f"{param} has {len(ids)} tokens; this model's context is {lm.context_length}",
            param=param,
            code="context_length_exceeded",
        )
    return ids


def embed(lm: LoadedModel, id_lists: list[list[int]], dimensions: int | None) -> torch.Tensor:
    """L2-normalised mean of the last hidden states over each input's tokens, cut to `dimensions`: [N, D] float32."""
    hidden = lm.model.config.hidden_size
    if dimensions is not None and dimensions > hidden:  # refused before any forward pass
        raise LocalRequestError(f"dimensions must be at most {hidden} for this model", param="dimensions")
    parts = [_embed_batch(lm, id_lists[i : i + EMBEDDING_BATCH]) for i in range(0, len(id_lists), EMBEDDING_BATCH)]
    vectors = torch.nn.functional.normalize(torch.cat(parts), dim=-1)  # [N, H]
    return vectors if dimensions is None else torch.nn.functional.normalize(vectors[:, :dimensions], dim=-1)


def _embed_batch(lm: LoadedModel, id_lists: list[list[int]]) -> torch.Tensor:
    """Mean-pooled last hidden states [B, H] of one right-padded batch."""
    width = max(len(ids) for ids in id_lists)
    ids = torch.tensor([x + [lm.pad_id] * (width - len(x)) for x in id_lists], device=lm.device)  # [B, T]
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in id_lists], device=lm.device)  # [B, T]
    with lm.lock, torch.inference_mode():
        hidden = lm.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, T, H]
    weights = mask.unsqueeze(-1).float()  # [B, T, 1]
    return (hidden * weights).sum(1) / weights.sum(1)  # [B, H]


def forward_embeds(
    lm: LoadedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int
) -> torch.Tensor:
    """Logits [B, logits_to_keep, V] (float32) of the last positions for inputs_embeds [B, T, H]; no grads."""
    _check_embeds(lm, inputs_embeds, attention_mask, logits_to_keep)
    embeds = inputs_embeds.to(lm.device, lm.model.dtype)  # [B, T, H]
    mask = attention_mask.to(lm.device, torch.long)  # [B, T]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T], left padding aware
    with lm.lock, torch.inference_mode():
        out = lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=logits_to_keep)
    return out.logits.float()  # [B, logits_to_keep, V]


def _check_embeds(
    lm: LoadedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int
) -> None:
    """Refuse embeddings or masks of the wrong shape before the forward pass."""
    hidden = lm.input_embeddings().embedding_dim
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != hidden:
        raise ConfigError(f"inputs_embeds must have shape [B, T, {hidden}], got {list(inputs_embeds.shape)}")
    if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise ConfigError(f"attention_mask must have shape {list(inputs_embeds.shape[:2])}")
    if not 1 <= logits_to_keep <= inputs_embeds.shape[1]:
        raise ConfigError(f"logits_to_keep must be in 1..{inputs_embeds.shape[1]}, got {logits_to_keep}")


def soft_prompt_tensor(lm: LoadedModel, name: str, embeds: torch.Tensor) -> torch.Tensor:
    """A soft prompt [L, H] checked and copied onto the model's device and dtype, ready to prepend."""
    hidden = lm.input_embeddings().embedding_dim
    if not isinstance(name, str) or not name:
        raise ConfigError("a soft prompt needs a non-empty name")
    if embeds.ndim != 2 or embeds.shape[1] != hidden or embeds.shape[0] < 1:
        raise ConfigError(f"a soft prompt must have shape [L, {hidden}], got {list(embeds.shape)}")
    if not torch.isfinite(embeds).all():
        raise ConfigError("a soft prompt must hold finite numbers only")
    return embeds.detach().to(lm.device, lm.model.dtype).clone()
