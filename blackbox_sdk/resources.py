"""The resource tree the SDK wraps (`chat.completions`, `completions`, `embeddings`); every other
attribute passes through to the inner openai resource unchanged.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from openai import NOT_GIVEN

from .candidates import CHAT, COMPLETIONS, Route

__all__ = [
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncEmbeddings",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Embeddings",
    "SDK_OPTIONS",
    "split_options",
]

SDK_OPTIONS = ("cache", "budget", "log", "reranker", "rerank_n", "beam", "soft_prompt", "budget_key")


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the SDK's per-call options (those given) from the openai parameters."""
    overrides = {k: kwargs.pop(k) for k in SDK_OPTIONS if k in kwargs}
    return kwargs, {k: v for k, v in overrides.items() if v is not NOT_GIVEN}


class _Resource:
    """A wrapped resource: our `create`, the inner resource for everything else."""

    _route: Route | None = None

    def __init__(self, core: Any, path: tuple[str, ...]) -> None:
        self._core = core
        self._path = path

    @property
    def _inner(self) -> Any:
        """The inner openai resource at the same path."""
        target = self._core.inner
        for name in self._path:
            target = getattr(target, name)
        return target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ChatCompletions(_Resource):
    """`client.chat.completions` with the SDK around `create`."""

    def create(self, *, messages: Any, model: Any, **kwargs: Any) -> Any:
        """Create a chat completion (openai's arguments, plus cache/budget/log/reranker/rerank_n/budget_key)."""
        params, overrides = split_options({"messages": messages, "model": model, **kwargs})
        return self._core.create(CHAT, params, overrides)

    @cached_property
    def with_raw_response(self) -> Any:
        """`.with_raw_response.create(...)` returns the raw HTTP response; budget, retries and log apply."""
        from .raw import RawCreate

        return RawCreate(self._core, CHAT, self._path, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:
        """`.with_streaming_response.create(...)`, a context manager over the unread HTTP response."""
        from .raw import RawCreate

        return RawCreate(self._core, CHAT, self._path, streaming=True)


class Completions(ChatCompletions):
    """`client.completions` (legacy text completions) with the SDK around `create`."""

    def create(self, *, model: Any, prompt: Any, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"model": model, "prompt": prompt, **kwargs})
        return self._core.create(COMPLETIONS, params, overrides)

    @cached_property
    def with_raw_response(self) -> Any:
        """`.with_raw_response.create(...)`: budget, retries and log apply."""
        from .raw import RawCreate

        return RawCreate(self._core, COMPLETIONS, self._path, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:
        """`.with_streaming_response.create(...)`: budget, retries and log apply."""
        from .raw import RawCreate

        return RawCreate(self._core, COMPLETIONS, self._path, streaming=True)


class Embeddings(_Resource):
    """`client.embeddings` with the SDK around `create`."""

    def create(self, *, input: Any, model: Any, **kwargs: Any) -> Any:
        """Create embeddings (openai's arguments, plus cache/budget/log/budget_key)."""
        params, overrides = split_options({"input": input, "model": model, **kwargs})
        return self._core.embed(params, overrides)


class Chat(_Resource):
    """`client.chat`: our `completions`, the rest passed through."""

    @cached_property
    def completions(self) -> ChatCompletions:
        """Chat completions through the SDK."""
        return ChatCompletions(self._core, ("chat", "completions"))


class AsyncChatCompletions(ChatCompletions):
    """`client.chat.completions` for `AsyncOpenAI`."""

    async def create(self, *, messages: Any, model: Any, **kwargs: Any) -> Any:
        """Create a chat completion (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"messages": messages, "model": model, **kwargs})
        return await self._core.create(CHAT, params, overrides)


class AsyncCompletions(Completions):
    """`client.completions` for `AsyncOpenAI`."""

    async def create(self, *, model: Any, prompt: Any, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"model": model, "prompt": prompt, **kwargs})
        return await self._core.create(COMPLETIONS, params, overrides)


class AsyncEmbeddings(_Resource):
    """`client.embeddings` for `AsyncOpenAI`."""

    async def create(self, *, input: Any, model: Any, **kwargs: Any) -> Any:
        """Create embeddings (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"input": input, "model": model, **kwargs})
        return await self._core.embed(params, overrides)


class AsyncChat(_Resource):
    """`client.chat` for `AsyncOpenAI`."""

    @cached_property
    def completions(self) -> AsyncChatCompletions:
        """Chat completions through the SDK."""
        return AsyncChatCompletions(self._core, ("chat", "completions"))
