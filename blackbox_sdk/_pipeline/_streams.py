"""Streams the SDK returns: real `openai.Stream` / `openai.AsyncStream` subclasses over our iterators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import httpx2
import openai

from .._info import BlackBoxInfo

T = TypeVar("T")


class BlackBoxStream(openai.Stream[T]):
    """An `openai.Stream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: Iterator[T], *, response: httpx2.Response, info: BlackBoxInfo) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info

    def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        self.response.close()


class BlackBoxAsyncStream(openai.AsyncStream[T]):
    """An `openai.AsyncStream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: AsyncIterator[T], *, response: httpx2.Response, info: BlackBoxInfo) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info

    async def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.response.aclose()
