"""Streams the SDK returns: real `openai.Stream` / `openai.AsyncStream` subclasses over our iterators.

openai's stream helpers (`responses.stream`, `chat.completions.stream`) close a stream through its
HTTP response (`stream.response.close()`), not through the stream; so closing the response stops
the SDK's iterator first, and a stream closed early is accounted (charged, logged) at once rather
than whenever its iterator happens to be collected.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai

from .._info import BlackBoxInfo

T = TypeVar("T")


def _stop_first(response: httpx2.Response, stop: Callable[[], None]) -> None:
    """Make `response.close()` run `stop` before closing (`stop` does nothing from inside the SDK's
    iterator: the inner stream closing its response at its end, or the iterator's own clean-up).
    The stream is held weakly: the response must not keep it alive, so that a stream dropped unclosed
    is freed at once and its iterator closed once, by the interpreter, rather than by a later garbage
    collection that finalizes the inner stream's generators at the same time (noise, or a generator
    closed twice)."""
    close, stopper = response.close, weakref.WeakMethod(stop)

    def closing() -> None:
        try:
            alive = stopper()
            if alive is not None:
                alive()
        finally:
            close()

    response.close = closing  # type: ignore[method-assign]


def _astop_first(response: httpx2.Response, stop: Callable[[], Awaitable[None]]) -> None:
    """`_stop_first` for `response.aclose()` (the stream held weakly too: an async generator closed
    twice, by the loop's finalizer and by the inner stream's clean-up, is asyncio's "Task exception
    was never retrieved")."""
    aclose, stopper = response.aclose, weakref.WeakMethod(stop)

    async def closing() -> None:
        try:
            alive = stopper()
            if alive is not None:
                await alive()
        finally:
            await aclose()

    response.aclose = closing  # type: ignore[method-assign]


def _closing_generators() -> bool:
    """Whether the running loop is closing every async generator (the end of `asyncio.run`): it closes the SDK's iterator
    itself, which accounts the stream, so closing it too from the HTTP body's clean-up (the loop may close that first)
    would run it twice at once, an error the loop reports."""
    return bool(getattr(asyncio.get_running_loop(), "_asyncgens_shutdown_called", False))


@dataclass
class _Reading:
    """Whether a stream's iterator was started, and whether the stream was stopped."""

    started: bool = False
    stopped: bool = False


def _forgotten(reading: _Reading, abandon: Callable[[], None]) -> None:
    """A stream collected unread and unclosed: account for it (in a thread of its own, never inside
    whatever the garbage collector interrupted)."""
    if not (reading.started or reading.stopped):
        threading.Thread(target=abandon, name="blackbox-abandon", daemon=True).start()


def _watch(stream: Any, abandon: Callable[[], None] | None) -> _Reading:
    """The reading state of a new stream; an `abandon` (what a live stream closed before its first
    chunk was read owes: charged, released, logged) also runs if the stream is dropped unread, since
    closing a generator that never started runs none of its clean-up."""
    reading = _Reading()
    if abandon is not None:
        # not at interpreter exit: a dead process's holds are freed by the ledger (its pid, its lease)
        weakref.finalize(stream, _forgotten, reading, abandon).atexit = False
    return reading


class BlackBoxStream(openai.Stream[T]):
    """An `openai.Stream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: Iterator[T], *, response: httpx2.Response, info: BlackBoxInfo, abandon: Callable[[], None] | None = None) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info
        self._abandon = abandon
        self._reading = _watch(self, abandon)
        _stop_first(response, self._stop)

    def __next__(self) -> T:
        """The next chunk (the iterator has started: its own clean-up accounts from now on)."""
        self._reading.started = True
        return next(self._iterator)

    def __iter__(self) -> Iterator[T]:
        """The chunks. A loop, not `yield from`, as openai's: a `for` left by `break` leaves the SDK's iterator
        open, so a later loop reads on (it is closed, and the call accounted, by `close()` or when the stream goes)."""
        self._reading.started = True
        for item in self._iterator:
            yield item

    def _stop(self) -> None:
        """Stop the SDK's iterator: its bookkeeping runs (a stream closed early is charged and logged;
        one never read is abandoned, since its iterator's clean-up never began)."""
        reading, self._reading.stopped = self._reading, True
        if not reading.started and self._abandon is not None:
            self._abandon()
        close = getattr(self._iterator, "close", None)
        if close is not None and not getattr(self._iterator, "gi_running", False):
            close()

    def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        self.response.close()


class BlackBoxAsyncStream(openai.AsyncStream[T]):
    """An `openai.AsyncStream` whose chunks come through the SDK (cache replay, fan-out, accounting)."""

    def __init__(self, iterator: AsyncIterator[T], *, response: httpx2.Response, info: BlackBoxInfo, abandon: Callable[[], None] | None = None) -> None:
        self.response = response
        self._iterator = iterator
        self.blackbox = info
        self._abandon = abandon
        self._reading = _watch(self, abandon)
        _astop_first(response, self._stop)

    async def __anext__(self) -> T:
        """The next chunk (the iterator has started: its own clean-up accounts from now on)."""
        self._reading.started = True
        return await anext(self._iterator)

    async def __aiter__(self) -> AsyncIterator[T]:
        """The chunks."""
        self._reading.started = True
        async for item in self._iterator:
            yield item

    async def _stop(self) -> None:
        """Stop the SDK's iterator: its bookkeeping runs (a stream closed early is charged and logged;
        one never read is abandoned, off the event loop, since its iterator's clean-up never began)."""
        reading, self._reading.stopped = self._reading, True
        if not reading.started and self._abandon is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._abandon)
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None and not getattr(self._iterator, "ag_running", False) and not _closing_generators():
            await aclose()

    async def close(self) -> None:
        """Stop the stream: the SDK's bookkeeping runs, then the HTTP response closes."""
        await self.response.aclose()


def answered_whole(stream: Any) -> bool:
    """Whether a server answered a stream request with one JSON body (it ignored `stream`, as some OpenAI-compatible
    servers and gateways do): openai's stream finds no events in it, and would end empty."""
    kind = stream.response.headers.get("content-type", "")
    return bool(kind.partition(";")[0].strip().lower() == "application/json")


class WholeStream:
    """A stream request answered whole, read as a stream in place of openai's: the answer's chunks (`whole_chunks`),
    over the HTTP response that brought them."""

    def __init__(self, chunks: list[Any], response: httpx2.Response) -> None:
        self.response = response
        self._chunks = iter(chunks)

    def __iter__(self) -> Iterator[Any]:
        """The chunks left."""
        return self._chunks

    def __next__(self) -> Any:
        """The next chunk."""
        return next(self._chunks)

    def close(self) -> None:
        """Close the response (read already), as openai's stream closes its own."""
        self.response.close()


class AsyncWholeStream:
    """`WholeStream` for the async client."""

    def __init__(self, chunks: list[Any], response: httpx2.Response) -> None:
        self.response = response
        self._chunks = iter(chunks)

    def __aiter__(self) -> AsyncWholeStream:
        """The chunks left."""
        return self

    async def __anext__(self) -> Any:
        """The next chunk."""
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Close the response (read already), as openai's stream closes its own."""
        await self.response.aclose()
