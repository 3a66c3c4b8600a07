"""The resource tree the SDK wraps (`chat.completions`, `completions`, `embeddings`) and their raw
and streaming-response views; every other resource passes through to the inner openai client.
"""

from ._raw import RawClient, RawCreate
from ._resources import AsyncChat, AsyncChatCompletions, AsyncCompletions, AsyncEmbeddings, Chat, ChatCompletions, Completions, Embeddings

__all__ = [
    "AsyncChat",
    "AsyncChatCompletions",
    "AsyncCompletions",
    "AsyncEmbeddings",
    "Chat",
    "ChatCompletions",
    "Completions",
    "Embeddings",
    "RawClient",
    "RawCreate",
]
