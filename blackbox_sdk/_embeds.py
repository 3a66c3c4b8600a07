"""Prompt embeddings as the OpenAI-compatible wire carries them (vLLM's `prompt_embeds`): base64 of
`torch.save(tensor)`, shape (tokens, hidden). Written by tuning's EmbedsEndpoint, read by the
budget to count a request's prompt tokens before it is sent. Also the name a soft prompt is served
under (its own plus a digest of its values). torch is imported only here, inside the functions, and
tensors are read with ``weights_only=True`` (never a full unpickle).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from typing import Any

from ._exceptions import InvalidRequestError, MissingDependencyError


def _torch() -> Any:
    """torch, or MissingDependencyError naming the extra that brings it (the environment lacks it, not the request)."""
    try:
        import torch
    except ImportError as error:
        raise MissingDependencyError("prompt_embeds need torch to be read: pip install 'blackbox-sdk[tuning]'") from error
    return torch


def encode_embeds(tensor: Any) -> str:
    """base64 of torch.save(tensor) (a fresh contiguous CPU copy), as prompt_embeds carries it."""
    buffer = io.BytesIO()
    _torch().save(tensor.detach().cpu().contiguous().clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_embeds(text: str) -> Any:
    """The tensor in one prompt_embeds item, loaded with weights_only=True."""
    return _torch().load(io.BytesIO(base64.b64decode(text, validate=True)), weights_only=True)


def embeds_lengths(items: list[Any]) -> list[int]:
    """The prompt tokens of each prompt_embeds item (its first dimension); InvalidRequestError for an
    item that is not base64 of a saved 2-D tensor, MissingDependencyError without torch, before anything is sent or reserved."""
    lengths = []
    for index, item in enumerate(items):
        try:
            tensor = decode_embeds(item) if isinstance(item, str) else None
        except MissingDependencyError:  # no torch here: the environment's fault, not a bad item (it is a ValueError too)
            raise
        except (binascii.Error, ValueError, RuntimeError, EOFError, OSError) as error:
            raise InvalidRequestError(f"prompt_embeds[{index}] is not base64 of a saved tensor: {error}", param="prompt_embeds") from None
        if tensor is None or getattr(tensor, "ndim", None) != 2:
            raise InvalidRequestError(f"prompt_embeds[{index}] must be base64 of a 2-D tensor (tokens, hidden)", param="prompt_embeds")
        lengths.append(int(tensor.shape[0]))
    return lengths


def digest_name(name: str, embeds: Any) -> str:
    """A soft prompt's name plus a digest of its values [L, H], the name it is registered and sent under, so two prompts
    sharing a name (one re-tuned, say) never share a backend slot or a cache key."""
    values = embeds.detach().float().cpu().contiguous()
    digest = hashlib.sha256(repr(list(values.shape)).encode() + values.numpy().tobytes()).hexdigest()
    return f"{name}#{digest[:16]}"
