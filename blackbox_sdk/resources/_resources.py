"""The resource tree the SDK wraps (`chat.completions`, `completions`, `embeddings`); every other
attribute passes through to the inner openai resource unchanged. Whether a call is sync or async
is the core's to decide: the async classes only await what it returns.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from .._options import split_options
from .._types import CHAT, COMPLETIONS, Route
from ._raw import RawCreate


class _Resource:
    """A wrapped resource: our methods, the inner resource at the same path for everything else."""

    def __init__(self, core: Any, path: tuple[str, ...]) -> None:
        self._core = core
        self._path = path

    def __getattr__(self, name: str) -> Any:
        target = self._core.inner
        for step in self._path:
            target = getattr(target, step)
        return getattr(target, name)


class _Generating(_Resource):
    """A resource whose `create` generates text (chat or legacy completions), with raw views."""

    _route: Route

    @cached_property
    def with_raw_response(self) -> RawCreate:
        """`.with_raw_response.create(...)` returns the raw HTTP response; budget, retries and log apply."""
        return RawCreate(self._core, self._route, self._path, streaming=False)

    @cached_property
    def with_streaming_response(self) -> RawCreate:
        """`.with_streaming_response.create(...)`, a context manager over the unread HTTP response."""
        return RawCreate(self._core, self._route, self._path, streaming=True)


class ChatCompletions(_Generating):
    """`client.chat.completions` with the SDK around `create`."""

    _route = CHAT

    def create(self, *, messages: Any, model: Any, **kwargs: Any) -> Any:
        """Create a chat completion (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"messages": messages, "model": model, **kwargs})
        return self._core.create(CHAT, params, overrides)


class Completions(_Generating):
    """`client.completions` (legacy text completions) with the SDK around `create`."""

    _route = COMPLETIONS

    def create(self, *, model: Any, prompt: Any, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        params, overrides = split_options({"model": model, "prompt": prompt, **kwargs})
        return self._core.create(COMPLETIONS, params, overrides)


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
        return await super().create(messages=messages, model=model, **kwargs)


class AsyncCompletions(Completions):
    """`client.completions` for `AsyncOpenAI`."""

    async def create(self, *, model: Any, prompt: Any, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        return await super().create(model=model, prompt=prompt, **kwargs)


class AsyncEmbeddings(Embeddings):
    """`client.embeddings` for `AsyncOpenAI`."""

    async def create(self, *, input: Any, model: Any, **kwargs: Any) -> Any:
        """Create embeddings (openai's arguments, plus the SDK's options)."""
        return await super().create(input=input, model=model, **kwargs)


class AsyncChat(Chat):
    """`client.chat` for `AsyncOpenAI`."""

    @cached_property
    def completions(self) -> AsyncChatCompletions:
        """Chat completions through the SDK."""
        return AsyncChatCompletions(self._core, ("chat", "completions"))
