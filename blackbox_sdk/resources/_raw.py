"""`with_raw_response` and `with_streaming_response`: the openai objects, with budget, retries and log.

A raw response exposes the HTTP exchange itself, so it is never served from or stored in the
cache and never fanned out or reranked. The budget settles from the parsed usage of a whole
response; for a stream read by the caller it settles the reserved worst case (an upper bound,
recorded as such), since the SDK does not see what the caller reads.
"""

from __future__ import annotations

from typing import Any

from .._types import CHAT, COMPLETIONS, Route


class RawCreate:
    """`create` returning openai's raw response (awaitable on the async client), or for streaming
    a context manager over it (async with on the async client)."""

    def __init__(self, core: Any, route: Route, path: tuple[str, ...], *, streaming: bool) -> None:
        self._core = core
        self._route = route
        self._path = path
        self._streaming = streaming

    def _target(self) -> Any:
        """The inner resource's with_raw_response / with_streaming_response."""
        target = self._core.inner
        for name in self._path:
            target = getattr(target, name)
        return getattr(target, "with_streaming_response" if self._streaming else "with_raw_response")

    def create(self, **kwargs: Any) -> Any:
        """The raw response, or for streaming a context manager over it."""
        if self._streaming:
            return self._core.streaming_response(self._route, self._target(), kwargs)
        return self._core.raw_create(self._route, self._target(), kwargs)


class _RawChat:
    """`client.with_raw_response.chat`."""

    def __init__(self, completions: RawCreate) -> None:
        self.completions = completions


class RawClient:
    """`client.with_raw_response` / `client.with_streaming_response` with the SDK's resources swapped in."""

    def __init__(self, client: Any, *, streaming: bool) -> None:
        core = client._core
        self._core = core
        self._streaming = streaming
        self.chat = _RawChat(RawCreate(core, CHAT, ("chat", "completions"), streaming=streaming))
        self.completions = RawCreate(core, COMPLETIONS, ("completions",), streaming=streaming)

    def __getattr__(self, name: str) -> Any:
        inner = self._core.inner
        return getattr(inner.with_streaming_response if self._streaming else inner.with_raw_response, name)
