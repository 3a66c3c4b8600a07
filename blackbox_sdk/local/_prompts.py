"""From a checked request to what generate needs: the prompt's token ids (chat template applied,
soft prompt attached) and the decoding settings, refused when they overflow the context window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._requests import ChatRequest, CompletionRequest, LocalRequestError, Message, Sampling, parse_messages
from ._structured import Structured

if TYPE_CHECKING:
    import torch

    from ._loading import LoadedModel

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
TEMPLATE_ROLES = {"developer": "system", "function": "tool"}  # roles read as ones chat templates know


@dataclass(frozen=True)
class Decoding:
    """One request's sampling settings, validated and in generate's terms."""

    max_new_tokens: int
    temperature: float  # 0 means greedy
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    top_logprobs: int | None  # None: no logprobs; k: the chosen token plus k alternatives
    structured: Structured | None = None  # the schema the answer is held to (response_format / text.format)


@dataclass(frozen=True)
class Prompt:
    """Token ids of one prompt plus an optional soft prompt prepended as embeddings."""

    ids: list[int]
    soft: torch.Tensor | None  # [L, H] or None

    @property
    def tokens(self) -> int:
        """Positions the model reads: real tokens plus soft-prompt vectors."""
        return len(self.ids) + (0 if self.soft is None else self.soft.shape[0])


def chat_template_tokens(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> int:
    """Tokens of OpenAI chat messages after a tokenizer's chat template: what the model itself reads. No messages
    (a Responses request with no input, counted under a budget before it is sent) are 0 tokens: the request itself
    gets the backend's 400, where the template would raise a bare ValueError."""
    if not messages:
        return 0
    return len(template_ids(tokenizer, parse_messages(messages)))


def text_prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a text prompt (/completions, /embeddings) as the model reads it: with the special tokens its
    tokenizer adds (a BOS), which its usage counts and a budget must reserve."""
    return list(tokenizer.encode(text))


def template_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of the conversation after the chat template, ready for the assistant's turn."""
    conversation = [{"role": TEMPLATE_ROLES.get(m.role, m.role), "content": m.content} for m in messages]
    if not tokenizer.chat_template:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"
        return tokenizer.encode(text)
    import jinja2  # chat templates need it (the [hf] extra): a core install imports blackbox_sdk.local without it

    try:
        return list(
            tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    except jinja2.TemplateError as exc:
        raise LocalRequestError(f"the model's chat template refused these messages: {exc}", param="messages") from None


def chat_decoding(
    lm: LoadedModel, request: ChatRequest, prompt: Prompt, structured: Structured | None = None
) -> Decoding:
    """Decoding settings of a chat request (max_completion_tokens wins over max_tokens)."""
    top = (request.top_logprobs or 0) if request.logprobs else None
    limit = request.max_completion_tokens or request.max_tokens
    return dataclasses.replace(_decoding(lm, request, prompt, limit, top), structured=structured)


def completion_plan(
    lm: LoadedModel, request: CompletionRequest, soft: torch.Tensor | None
) -> tuple[list[Prompt], Decoding]:
    """Prompts and decoding settings of a /completions request (default max_tokens 16)."""
    prompts = [Prompt(text_prompt_ids(lm.tokenizer, text), soft) for text in request.prompt]
    if request.echo and request.logprobs is not None:
        raise LocalRequestError("echo with logprobs is not supported locally", param="echo")
    limit = request.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
    longest = max(prompts, key=lambda p: p.tokens)
    return prompts, _decoding(lm, request, longest, limit, request.logprobs)


def _decoding(lm: LoadedModel, request: Sampling, prompt: Prompt, limit: int | None, top: int | None) -> Decoding:
    """Settings for generate, refusing a prompt plus reply longer than the context window."""
    room = lm.context_length - prompt.tokens
    if room < 1 or (limit is not None and limit > room):
        raise LocalRequestError(
            f"this model's context is {lm.context_length} tokens; the prompt has {prompt.tokens} "
            f"and {limit or 1} more were asked for",
            param="messages" if isinstance(request, ChatRequest) else "prompt",
            code="context_length_exceeded",
        )
    return Decoding(
        max_new_tokens=limit or room,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=tuple(request.stop),
        seed=request.seed,
        top_logprobs=top,
    )
