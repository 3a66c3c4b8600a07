"""A local HuggingFace causal LM (a model folder or a GGUF file) answering OpenAI-shaped requests.

`HFBackend` turns the JSON bodies of `/chat/completions`, `/completions` and `/embeddings` into
`model.generate` / forward calls and returns the JSON an OpenAI server would send; the transport
puts it behind an `httpx2` transport. It also exposes the embedding-level hooks that Black-Box
Tuning needs (`input_embeddings`, `forward_embeds`, `register_soft_prompt`).

Errors: a model that can't be loaded or run raises `BackendError`; a request that breaks OpenAI's
rules raises `LocalRequestError` (a `ConfigError`, so a `ValueError`) before any compute, carrying
the offending `param` so the transport can answer 400 the way OpenAI does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ._embeddings import embed, embedding_ids, forward_embeds, soft_prompt_tensor
from ._generation import generate
from ._loading import existing_path, load_model, resolve_device, resolve_dtype
from ._prompts import Decoding, Prompt, chat_decoding, chat_template_tokens, completion_plan, template_ids
from ._requests import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    LocalRequestError,
    parse_request,
)
from ._responses import chat_choice, completion_choice, embedding_list, envelope, usage
from ._streaming import chat_chunks, completion_chunks


class HFBackend:
    """A local HF causal LM (model folder or GGUF file) answering OpenAI-shaped requests."""

    supports_embeddings: bool = True

    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto") -> None:
        self.path = existing_path(path)
        self.device = resolve_device(device)
        self._lm = load_model(self.path, self.device, resolve_dtype(dtype, self.device))
        self.model, self.tokenizer = self._lm.model, self._lm.tokenizer
        self.model_id = self._lm.name
        self.created = int(time.time())
        self.context_length = self._lm.context_length
        self.lock = self._lm.lock  # one model use at a time; hold it (not re-entrant) for direct use of .model
        self._soft_prompts: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------ public OpenAI routes

    def chat_completion(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /chat/completions body with ChatCompletion JSON (n choices from one generate)."""
        request = parse_request(ChatRequest, params)
        prompt, decoding = self._chat_plan(request)
        candidates = generate(self._lm, prompt, decoding, request.n)
        choices = [chat_choice(i, c, decoding.top_logprobs is not None) for i, c in enumerate(candidates)]
        return {
            **envelope("chatcmpl", "chat.completion", self.model_id),
            "choices": choices,
            "usage": usage(prompt.tokens, sum(c.completion_tokens for c in candidates)),
        }

    def chat_completion_stream(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Validate a streaming chat body now, then yield ChatCompletionChunk JSON as tokens come."""
        request = parse_request(ChatRequest, params)
        prompt, decoding = self._chat_plan(request)
        return chat_chunks(self._lm, prompt, decoding, request.n, request.include_usage)

    def completion(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /completions body with Completion JSON (choice index = prompt * n + i)."""
        request = parse_request(CompletionRequest, params)
        prompts, decoding = completion_plan(self._lm, request, self._soft_prompt(request.soft_prompt))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p, (text, prompt) in enumerate(zip(request.prompt, prompts, strict=True)):
            candidates = generate(self._lm, prompt, decoding, request.n)
            prompt_tokens += prompt.tokens
            completion_tokens += sum(c.completion_tokens for c in candidates)
            for i, candidate in enumerate(candidates):
                choices.append(completion_choice(p * request.n + i, candidate, request, text))
        return {
            **envelope("cmpl", "text_completion", self.model_id),
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def completion_stream(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Validate a streaming /completions body now, then yield Completion chunks as tokens come."""
        request = parse_request(CompletionRequest, params)
        prompts, decoding = completion_plan(self._lm, request, self._soft_prompt(request.soft_prompt))
        return completion_chunks(self._lm, request, prompts, decoding)

    def embeddings(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer an /embeddings body: mean-pooled last hidden states, L2-normalised, float or base64."""
        request = parse_request(EmbeddingRequest, params)
        id_lists = [embedding_ids(self._lm, item, f"input[{i}]") for i, item in enumerate(request.input)]
        vectors = embed(self._lm, id_lists, request.dimensions)  # [N, D]
        tokens = sum(len(ids) for ids in id_lists)
        return embedding_list(vectors, request.encoding_format, self.model_id, tokens)

    def models(self) -> dict[str, Any]:
        """The /models list: just this model."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        """The /models/{id} object for this model."""
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "local"}

    def count_tokens(self, text: str) -> int:
        """Tokens in a plain text, without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chat_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the messages after the chat template, the way a chat request counts them."""
        return chat_template_tokens(self.tokenizer, messages)

    # ------------------------------------------------------------ Black-Box Tuning hooks

    def input_embeddings(self) -> torch.nn.Embedding:
        """The model's token-embedding table (model.get_input_embeddings())."""
        return self._lm.input_embeddings()

    def forward_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *, logits_to_keep: int = 1
    ) -> torch.Tensor:
        """Logits [B, logits_to_keep, V] (float32) of the last positions for inputs_embeds [B, T, H]; no grads."""
        return forward_embeds(self._lm, inputs_embeds, attention_mask, logits_to_keep)

    def register_soft_prompt(self, name: str, embeds: torch.Tensor) -> None:
        """Store a soft prompt [L, H]; requests with `"soft_prompt": name` get it prepended to their input."""
        self._soft_prompts[name] = soft_prompt_tensor(self._lm, name, embeds)

    # ------------------------------------------------------------ request -> prompt and decoding

    def _soft_prompt(self, name: str | None) -> torch.Tensor | None:
        """The registered soft prompt a request names, or a 400 when there is none by that name."""
        if name is None:
            return None
        if name not in self._soft_prompts:
            raise LocalRequestError(f"no soft prompt named {name!r} is registered", param="soft_prompt")
        return self._soft_prompts[name]

    def _chat_plan(self, request: ChatRequest) -> tuple[Prompt, Decoding]:
        """The templated prompt of a chat request and its decoding settings."""
        prompt = Prompt(template_ids(self.tokenizer, request.messages), self._soft_prompt(request.soft_prompt))
        return prompt, chat_decoding(self._lm, request, prompt)


_BACKENDS: dict[tuple[str, str], HFBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def load_backend(path: str | Path, *, device: str = "auto") -> HFBackend:
    """The process-wide HFBackend for a path and device: loaded once, shared by every client (thread-safe)."""
    key = (str(existing_path(path)), device)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = HFBackend(key[0], device=device)
        return _BACKENDS[key]
