"""`with_raw_response` and `with_streaming_response`: the openai objects, with budget, retries and log.

A raw response exposes the HTTP exchange itself, so it is never served from or stored in the
cache and never fanned out or reranked. The budget settles from the parsed usage of a whole
response; for a stream read by the caller it settles the reserved worst case (an upper bound,
recorded as such), since the SDK does not see what the caller reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .candidates import CHAT, COMPLETIONS, Route
from .info import attach
from .pipeline import Call
from .resources import split_options
from .validation import validate_chat, validate_completion

__all__ = ["RawClient", "RawCreate"]


class RawCreate:
    """`create` returning openai's raw response object (or its streaming context manager)."""

    def __init__(self, core: Any, route: Route, path: tuple[str, ...], *, streaming: bool) -> None:
        self._core = core
        self._route = route
        self._path = path
        self._streaming = streaming

    @property
    def _inner(self) -> Any:
        """The inner resource's with_raw_response / with_streaming_response."""
        target = self._core.inner
        for name in self._path:
            target = getattr(target, name)
        return getattr(target, "with_streaming_response" if self._streaming else "with_raw_response")

    def _begin(self, kwargs: dict[str, Any]) -> tuple[Call, dict[str, Any]]:
        """Validate, build the call (no cache), reserve the worst case."""
        params, overrides = split_options(kwargs)
        (validate_chat if self._route is CHAT else validate_completion)(params)
        call = self._core.begin(self._route, params, overrides)
        call.key = None
        try:
            count, max_tokens = self._core.reserve(call, call.n)
        except BaseException as error:
            self._core.fail(call, error)
            raise
        return call, self._core.request_params(call, count, max_tokens, None)

    def _settle(self, call: Call, parsed: Any) -> None:
        """Settle from parsed usage, or the reserved worst case for streams, and log."""
        usage = getattr(parsed, "usage", None) if not call.stream else None
        if usage is not None:
            self._core.settle(call, usage.to_dict())
        else:
            call.usage_counted = True
            self._core.settle_reserved(call)
        candidates = [] if call.stream or parsed is None else [c for c in parsed.choices]
        texts = [self._route.text(c.to_dict()) for c in candidates]
        call.info.candidates = texts or None
        call.info.chosen = list(range(len(texts)))
        self._core.record(call, [], usage.to_dict() if usage is not None else None, None)

    def create(self, **kwargs: Any) -> Any:
        """The raw response (sync), or for streaming a context manager over it."""
        call, params = self._begin(kwargs)
        if self._streaming:
            return self._streaming_cm(call, params)
        try:
            raw = self._core.send_with_retries(call, lambda: self._inner.create(**params))
            parsed = raw.parse()
        except BaseException as error:
            self._core.fail(call, error)
            raise
        self._settle(call, parsed)
        attach(parsed, call.info)
        return attach(raw, call.info)

    @contextmanager
    def _streaming_cm(self, call: Call, params: dict[str, Any]) -> Iterator[Any]:
        """Enter openai's streaming response with retries; settle and log on exit."""
        try:
            manager = self._core.send_with_retries(call, lambda: _entered(self._inner.create(**params)))
        except BaseException as error:
            self._core.fail(call, error)
            raise
        context, response = manager
        try:
            yield attach(response, call.info)
        finally:
            context.__exit__(None, None, None)
            self._settle(call, None)


class AsyncRawCreate(RawCreate):
    """`create` returning openai's raw response object, for the async client."""

    async def create(self, **kwargs: Any) -> Any:  # type: ignore[override]
        """The raw response (async), or for streaming an async context manager over it."""
        call, params = self._begin(kwargs)
        if self._streaming:
            return self._astreaming_cm(call, params)
        try:
            raw = await self._core.send_with_retries(call, lambda: self._inner.create(**params))
            parsed = await raw.parse()
        except BaseException as error:
            self._core.fail(call, error)
            raise
        self._settle(call, parsed)
        attach(parsed, call.info)
        return attach(raw, call.info)

    @asynccontextmanager
    async def _astreaming_cm(self, call: Call, params: dict[str, Any]) -> AsyncIterator[Any]:
        """Enter openai's async streaming response with retries; settle and log on exit."""

        async def enter() -> tuple[Any, Any]:
            context = self._inner.create(**params)
            return context, await context.__aenter__()

        try:
            context, response = await self._core.send_with_retries(call, enter)
        except BaseException as error:
            self._core.fail(call, error)
            raise
        try:
            yield attach(response, call.info)
        finally:
            await context.__aexit__(None, None, None)
            self._settle(call, None)


def _entered(context: Any) -> tuple[Any, Any]:
    """Enter a sync context manager, returning it and what it yields."""
    return context, context.__enter__()


class _RawChat:
    """`client.with_raw_response.chat`."""

    def __init__(self, completions: RawCreate) -> None:
        self.completions = completions


class RawClient:
    """`client.with_raw_response` / `client.with_streaming_response` with the SDK's resources swapped in."""

    def __init__(self, client: Any, *, streaming: bool) -> None:
        from .async_pipeline import AsyncCore

        core = client._core
        kind = AsyncRawCreate if isinstance(core, AsyncCore) else RawCreate
        self._core = core
        self._streaming = streaming
        self.chat = _RawChat(kind(core, CHAT, ("chat", "completions"), streaming=streaming))
        self.completions = kind(core, COMPLETIONS, ("completions",), streaming=streaming)

    def __getattr__(self, name: str) -> Any:
        inner = self._core.inner
        return getattr(inner.with_streaming_response if self._streaming else inner.with_raw_response, name)
