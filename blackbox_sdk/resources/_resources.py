"""The resources the SDK runs through its pipeline, as subclasses of openai's own classes:
`chat.completions` (`create`, `parse`, and `stream`, which openai builds on `create`),
`completions` and `embeddings` (and `beta.chat`, openai's older name for `chat`). Every other method (retrieve, list, update, delete, messages) is
openai's, sent by the client itself with openai's retries. Whether a call is sync or async is the
core's to decide: the async classes only await what it returns.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import openai.resources as oai
from openai.lib import _chat_completion_resources as oai_chat_helpers
from openai.resources.chat import completions as oai_chat

from .._types import CHAT, COMPLETIONS, EMBEDDINGS, Route
from ._raw import RawViews, parts
from ._signature import mirror
from ._stream_helpers import Streams
from ._structured import asked_format, fitting, parse_request


class ChatCompletions(Streams, RawViews, oai_chat.Completions):
    """`client.chat.completions`: `create` and `parse` through the SDK; `stream` is openai's helper over them."""

    _route: Route = CHAT
    _path = ("chat", "completions")
    _views = (oai_chat.CompletionsWithRawResponse, oai_chat.CompletionsWithStreamingResponse)
    _parsing = True
    _helper = staticmethod(oai_chat_helpers.stream)
    _format = "response_format"
    _fitting = staticmethod(fitting)

    @mirror(oai_chat.Completions.create)
    def create(self, **kwargs: Any) -> Any:
        """Create a chat completion (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return core.create(CHAT, params, overrides, fitting(asked_format(CHAT, params)))

    @mirror(oai_chat.Completions.parse)
    def parse(self, **kwargs: Any) -> Any:
        """Structured outputs: a chat completion through the SDK, parsed by openai's own helper."""
        request, valid, finish = parse_request(kwargs)
        core, params, overrides = parts(self, request)
        return finish(core.create(CHAT, params, overrides, valid))

    stream = mirror(oai_chat.Completions.stream)(Streams._stream)


class AsyncChatCompletions(Streams, RawViews, oai_chat.AsyncCompletions):
    """`client.chat.completions` for `AsyncOpenAI`."""

    _route: Route = CHAT
    _path = ("chat", "completions")
    _views = (oai_chat.AsyncCompletionsWithRawResponse, oai_chat.AsyncCompletionsWithStreamingResponse)
    _parsing = True
    _helper = staticmethod(oai_chat_helpers.async_stream)
    _format = "response_format"
    _fitting = staticmethod(fitting)

    @mirror(oai_chat.AsyncCompletions.create)
    async def create(self, **kwargs: Any) -> Any:
        """Create a chat completion (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return await core.create(CHAT, params, overrides, fitting(asked_format(CHAT, params)))

    @mirror(oai_chat.AsyncCompletions.parse)
    async def parse(self, **kwargs: Any) -> Any:
        """Structured outputs: a chat completion through the SDK, parsed by openai's own helper."""
        request, valid, finish = parse_request(kwargs)
        core, params, overrides = parts(self, request)
        return finish(await core.create(CHAT, params, overrides, valid))

    stream = mirror(oai_chat.AsyncCompletions.stream)(Streams._stream)


class Completions(RawViews, oai.Completions):
    """`client.completions` (legacy text completions) with the SDK around `create`."""

    _route: Route = COMPLETIONS
    _path = ("completions",)
    _views = (oai.CompletionsWithRawResponse, oai.CompletionsWithStreamingResponse)

    @mirror(oai.Completions.create)
    def create(self, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return core.create(COMPLETIONS, params, overrides)


class AsyncCompletions(RawViews, oai.AsyncCompletions):
    """`client.completions` for `AsyncOpenAI`."""

    _route: Route = COMPLETIONS
    _path = ("completions",)
    _views = (oai.AsyncCompletionsWithRawResponse, oai.AsyncCompletionsWithStreamingResponse)

    @mirror(oai.AsyncCompletions.create)
    async def create(self, **kwargs: Any) -> Any:
        """Create a text completion (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return await core.create(COMPLETIONS, params, overrides)


class Embeddings(RawViews, oai.Embeddings):
    """`client.embeddings` with the SDK around `create`."""

    _route: Route = EMBEDDINGS
    _path = ("embeddings",)
    _views = (oai.EmbeddingsWithRawResponse, oai.EmbeddingsWithStreamingResponse)

    @mirror(oai.Embeddings.create)
    def create(self, **kwargs: Any) -> Any:
        """Create embeddings (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return core.embed(params, overrides)


class AsyncEmbeddings(RawViews, oai.AsyncEmbeddings):
    """`client.embeddings` for `AsyncOpenAI`."""

    _route: Route = EMBEDDINGS
    _path = ("embeddings",)
    _views = (oai.AsyncEmbeddingsWithRawResponse, oai.AsyncEmbeddingsWithStreamingResponse)

    @mirror(oai.AsyncEmbeddings.create)
    async def create(self, **kwargs: Any) -> Any:
        """Create embeddings (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return await core.embed(params, overrides)


class _ChatViews:
    """`client.chat`, sync or async by its class attributes: our `completions`, and openai's chat views over them."""

    _client: Any
    _completions_class: type[Any]
    _views: tuple[type[Any], type[Any]]  # our subclasses of openai's ChatWithRawResponse and ChatWithStreamingResponse

    @cached_property
    def completions(self) -> Any:
        """Chat completions through the SDK."""
        return self._completions_class(self._client)

    @cached_property
    def with_raw_response(self) -> Any:
        """`chat.with_raw_response.completions`, the SDK's raw view."""
        return self._views[0](self)

    @cached_property
    def with_streaming_response(self) -> Any:
        """`chat.with_streaming_response.completions`, the SDK's streaming-response view."""
        return self._views[1](self)


class _ChatView:
    """openai's `chat.with_raw_response` / `chat.with_streaming_response` (an instance of its class, as openai's
    types say), whose `completions` is the SDK's view of the same name."""

    _chat: Any
    _view: str

    @cached_property
    def completions(self) -> Any:
        """`chat.<view>.completions`: the SDK's chat completions view."""
        return getattr(self._chat.completions, self._view)


class _ChatRaw(_ChatView, oai.ChatWithRawResponse):
    """`chat.with_raw_response` for `OpenAI`."""

    _view = "with_raw_response"


class _AsyncChatRaw(_ChatView, oai.AsyncChatWithRawResponse):
    """`chat.with_raw_response` for `AsyncOpenAI`."""

    _view = "with_raw_response"


class _ChatStreamed(_ChatView, oai.ChatWithStreamingResponse):
    """`chat.with_streaming_response` for `OpenAI`."""

    _view = "with_streaming_response"


class _AsyncChatStreamed(_ChatView, oai.AsyncChatWithStreamingResponse):
    """`chat.with_streaming_response` for `AsyncOpenAI`."""

    _view = "with_streaming_response"


class Chat(_ChatViews, oai.Chat):
    """`client.chat` for `OpenAI`."""

    _completions_class = ChatCompletions
    _views = (_ChatRaw, _ChatStreamed)


class AsyncChat(_ChatViews, oai.AsyncChat):
    """`client.chat` for `AsyncOpenAI`."""

    _completions_class = AsyncChatCompletions
    _views = (_AsyncChatRaw, _AsyncChatStreamed)


class Beta(oai.Beta):
    """`client.beta` for `OpenAI`: openai's, with its `chat` (openai's older name for `client.chat`) the client's own."""

    @cached_property
    def chat(self) -> oai.Chat:
        """`client.chat`, through the SDK, as openai's `beta.chat` is its `chat`."""
        return self._client.chat


class AsyncBeta(oai.AsyncBeta):
    """`client.beta` for `AsyncOpenAI`: openai's, with its `chat` the client's own."""

    @cached_property
    def chat(self) -> oai.AsyncChat:
        """`client.chat`, through the SDK, as openai's `beta.chat` is its `chat`."""
        return self._client.chat
