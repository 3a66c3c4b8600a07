"""The resources the SDK runs through its pipeline, as subclasses of openai's own (`chat.completions`,
`completions`, `embeddings`, `responses`), and their raw and streaming-response views; every other resource is
openai's, unchanged.
"""

from ._raw import AsyncRawClient, AsyncStreamedClient, RawClient, RawMethod, StreamedClient
from ._responses_api import AsyncResponses, Responses
from ._resources import (
    AsyncBeta,
    AsyncChat,
    AsyncChatCompletions,
    AsyncCompletions,
    AsyncEmbeddings,
    Beta,
    Chat,
    ChatCompletions,
    Completions,
    Embeddings,
)

__all__ = [
    "AsyncBeta",
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncEmbeddings",
    "AsyncRawClient",
    "AsyncResponses",
    "AsyncStreamedClient",
    "Beta",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Embeddings",
    "RawClient",
    "RawMethod",
    "Responses",
    "StreamedClient",
]
