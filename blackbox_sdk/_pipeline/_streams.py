"""Streams the SDK returns: real `openai.Stream` / `openai.AsyncStream` subclasses over our iterators.

openai's stream helpers (`responses.stream`, `chat.completions.stream`) close a stream through its
HTTP response (`stream.response.close()`), not through the stream; so closing the response stops
the SDK's iterator first, and a stream closed early is accounted (charged, logged) at once rather
than whenever its iterator happens to be collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import httpx2
import openai

from .._info import BlackBoxInfo

T = TypeVar("T")


def _stop_first(response: httpx2.Response, stop: Callable[[], None]) -> None:
    """Make `response.close()` run `stop` before closing (`stop` does nothing from inside the SDK's
    iterator: the inner stream closing its response at its end, or the iterator's own clean-up)."""
    close = response.close

    def closing() -> None:
        try:
            stop()
        finally:
            close()

    response.close = closing  # type: ignore[method-assign]


def _astop_first(response: httpx2.Response, stop: Callable[[], Awaitable[None]]) -> None:
    """`_stop_first` for `response.aclose()`."""
    aclose = response.aclose

    async def closing() -> None:
        try:
            await stop()
        finally:
            await aclose()

    response.aclose = closing  # type: ignore[method-assign]


class BlackBoxStream(openai.Stream[T]):
    """An `openai.Stream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: Iterator[T], *, response: httpx2.Response, info: BlackBoxInfo) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info
        _stop_first(response, self._stop)

    def _stop(self) -> None:
        """Stop the SDK's iterator: its bookkeeping runs (a stream closed early is charged and logged)."""
        close = getattr(self._iterator, "close", None)
        if close is not None and not getattr(self._iterator, "gi_running", False):
            close()

    def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        self.response.close()


class BlackBoxAsyncStream(openai.AsyncStream[T]):
    """An `openai.AsyncStream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: AsyncIterator[T], *, response: httpx2.Response, info: BlackBoxInfo) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info
        _astop_first(response, self._stop)

    async def _stop(self) -> None:
        """Stop the SDK's iterator: its bookkeeping runs (a stream closed early is charged and logged)."""
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None and not getattr(self._iterator, "ag_running", False):
            await aclose()

    async def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        await self.response.aclose()
