"""A local HuggingFace causal LM (a model folder or a GGUF file) answering OpenAI-shaped requests.

`HFBackend` turns the JSON bodies of `/chat/completions`, `/responses`, `/completions` and
`/embeddings` into `model.generate` / forward calls and returns the JSON an OpenAI server would
send (chat and responses share one plan: template, structured-output schema, decoding); the transport
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

from .._exceptions import BackendError
from ._embeddings import embed, embedding_ids, forward_embeds, soft_prompt_tensor
from ._generation import Candidate, generate
from ._loading import load_model, resolve_device, resolve_dtype
from ._packaged import existing_path
from ._prompts import Decoding, Prompt, chat_decoding, chat_template_tokens, completion_plan, template_ids, text_prompt_ids
from ._requests import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    LocalRequestError,
    parse_messages,
    parse_request,
)
from ._responses import chat_choice, completion_choice, embedding_list, envelope, usage
from ._responses_api import Shell, response_body, response_events
from ._responses_request import ResponsesRequest, chat_request, parse_responses_request
from ._soft_prompts import SoftPrompts
from ._streaming import chat_chunks, completion_chunks, stream_choice
from ._structured import Structured, chat_format, check_json_word, conforms, text_format, with_instruction


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
        self._soft_prompts = SoftPrompts()

    # ------------------------------------------------------------ public OpenAI routes

    def chat_completion(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /chat/completions body with ChatCompletion JSON (n choices from one generate)."""
        request = parse_request(ChatRequest, params)
        prompt, decoding = self._chat_plan(request)
        candidates = _conforming(generate(self._lm, prompt, decoding, request.n), decoding)
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

    def response(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /responses body with a Response (one output message), on the chat generation path."""
        request = parse_responses_request(params)
        prompt, decoding = self._responses_plan(request)
        candidate = _conforming(generate(self._lm, prompt, decoding, 1), decoding)[0]
        shell = Shell(self.model_id, request)
        return response_body(shell, candidate.text, candidate.finish_reason, prompt.tokens, candidate.completion_tokens)

    def response_stream(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Validate a streaming /responses body now, then yield its typed events as tokens come."""
        request = parse_responses_request(params)
        prompt, decoding = self._responses_plan(request)
        deltas = stream_choice(self._lm, prompt, decoding, decoding.seed)
        return response_events(Shell(self.model_id, request), deltas, prompt.tokens)

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
        """Tokens in a plain text (an answer), without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def text_prompt_tokens(self, text: str) -> int:
        """Tokens of a text prompt of /completions or /embeddings as their usage counts it: special tokens (a BOS) in."""
        return len(text_prompt_ids(self.tokenizer, text))

    def chat_prompt_tokens(
        self, messages: list[dict[str, Any]], *, response_format: object = None, text: object = None
    ) -> int:
        """Tokens of the messages after the chat template as a request counts them, its format's instruction included."""
        try:
            structured = chat_format(response_format) or text_format(text)
        except LocalRequestError:  # a format the backend refuses counts as none: the request itself gets the 400
            structured = None
        if structured is None:
            return chat_template_tokens(self.tokenizer, messages)
        return len(template_ids(self.tokenizer, with_instruction(parse_messages(messages), structured)))

    def responses_prompt_tokens(self, input: object, *, instructions: object = None, text: object = None) -> int | None:
        """Tokens of a Responses request's input and instructions as a request reads them (its items as the chat path
        does, its format's instruction added); None for ones it refuses (that request gets the 400)."""
        try:
            request = parse_responses_request({"input": input, "instructions": instructions, "text": text})
            return len(template_ids(self.tokenizer, with_instruction(chat_request(request).messages, text_format(request.text))))
        except LocalRequestError:
            return None

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
        """Store a soft prompt [L, H]; requests with `"soft_prompt": name` get it prepended to their input. One under its
        digest name (`served_soft_prompt`'s) is kept among the most recent SERVED_KEPT only (`SoftPrompts`)."""
        self._soft_prompts.put(name, embeds, soft_prompt_tensor(self._lm, name, embeds))

    def served_soft_prompt(self, name: str) -> str:
        """The name to send for a registered soft prompt: its own plus a digest of the values registered under it now
        (registered too), so a cache key follows the vectors, not the name; a name not registered stays, for its 400."""
        return self._soft_prompts.served(name)

    def soft_prompt_tokens(self, name: object) -> int:
        """Positions a request's soft prompt adds to each of its prompts (its L vectors), as its usage counts them; 0 for
        none, or for a name not registered (that request gets a 400)."""
        tensor = self._soft_prompts.get(name) if isinstance(name, str) else None
        return 0 if tensor is None else int(tensor.shape[0])

    # ------------------------------------------------------------ request -> prompt and decoding

    def _soft_prompt(self, name: str | None) -> torch.Tensor | None:
        """The registered soft prompt a request names, or a 400 when there is none by that name."""
        if name is None:
            return None
        tensor = self._soft_prompts.get(name)
        if tensor is None:
            raise LocalRequestError(
                f"no soft prompt named {name!r} is registered (of those sent under a digest name, only the most "
                "recently used are kept: send the prompt's own name or soft_prompt= again)",
                param="soft_prompt",
            )
        return tensor

    def _chat_plan(self, request: ChatRequest, structured: Structured | None = None) -> tuple[Prompt, Decoding]:
        """The templated prompt of a chat request (its format's instruction added) and its decoding settings."""
        structured = structured or chat_format(request.response_format)
        check_json_word(request.messages, structured)
        ids = template_ids(self.tokenizer, with_instruction(request.messages, structured))
        prompt = Prompt(ids, self._soft_prompt(request.soft_prompt))
        return prompt, chat_decoding(self._lm, request, prompt, structured)

    def _responses_plan(self, request: ResponsesRequest) -> tuple[Prompt, Decoding]:
        """A Responses request planned as the chat request it becomes; errors named by Responses fields."""
        structured = text_format(request.text)
        try:
            return self._chat_plan(chat_request(request), structured)
        except LocalRequestError as exc:
            if exc.param is None or not exc.param.startswith("messages"):
                raise
            raise LocalRequestError(str(exc), param="input", code=exc.code) from None


def _conforming(candidates: list[Candidate], decoding: Decoding) -> list[Candidate]:
    """The candidates, once every finished structured answer is checked against its schema (a 500 if one is not)."""
    structured = decoding.structured
    if structured is None or decoding.stop:  # a stop string may cut a document where the caller asked
        return candidates
    for candidate in candidates:
        if candidate.finish_reason == "stop" and not conforms(structured, candidate.text):
            raise BackendError(f"the constrained answer does not match the schema: {candidate.text[:200]!r}")
    return candidates


_BACKENDS: dict[tuple[str, str], HFBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def load_backend(path: str | Path, *, device: str = "auto") -> HFBackend:
    """The process-wide HFBackend for a path and device: loaded once, shared by every client (thread-safe)."""
    key = (str(existing_path(path)), device)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = HFBackend(key[0], device=device)
        return _BACKENDS[key]
