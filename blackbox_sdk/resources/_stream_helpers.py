"""openai's stream helpers (`chat.completions.stream`, `responses.stream`) over the SDK's pipeline:
the SDK's options allowed per call, and, as for `parse`, reranking prefers the answers that fit the
type the helper parses into (`response_format`, `text_format`), so that the answer streamed is one
the helper's `get_final_completion()` / `get_final_response()` can parse whenever one was sampled.
The helper's stream and its final answer carry the call's `.blackbox`, as a stream from `create` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from openai import omit

from .._info import attach
from .._options import split_options
from .._types import RESPONSES, Json
from ._raw import parts

Valid = Callable[[str], bool] | None


class StreamSource:
    """The resource as openai's stream helper calls it: `create` through the SDK with the call's
    options and `valid` (the check reranking prefers); `retrieve` the resource's own."""

    def __init__(self, resource: Any, overrides: Json, valid: Valid) -> None:
        self._resource = resource
        self._overrides = overrides
        self._valid = valid

    def create(self, **kwargs: Any) -> Any:
        """The helper's request through the pipeline (a coroutine on the async client, which the helper awaits)."""
        core, params, overrides = parts(self._resource, {**kwargs, **self._overrides})
        if self._resource._route is RESPONSES:
            return core.respond(params, overrides, self._valid)
        return core.create(self._resource._route, params, overrides, self._valid)

    def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        """The resource's `retrieve` (streaming a stored response goes to openai unchanged)."""
        return self._resource.retrieve(*args, **kwargs)


class Streams:
    """`stream`, sync or async by `_helper`: openai's helper over `StreamSource`; `_format` names the
    argument the helper parses into, `_fitting` turns it and `tools` into the check reranking prefers. Each
    resource binds `_stream` as its `stream` through `mirror`, with openai's signature."""

    _helper: Callable[..., Any]  # openai's stream or async_stream for this resource (a staticmethod)
    _format: str  # "response_format" (chat) or "text_format" (responses)
    _fitting: Callable[[Any, Any], Valid]  # that argument's value and the tools -> the check (a staticmethod)

    def _stream(self, **kwargs: Any) -> Any:
        """openai's stream manager over the SDK's `create` (the SDK's options allowed per call)."""
        params, overrides = split_options(kwargs)
        valid = self._fitting(params.get(self._format, omit), params.get("tools", omit))
        return with_info_on_entry(self._helper(StreamSource(self, overrides, valid), **params))


_ENTERING: dict[type[Any], type[Any]] = {}  # openai's manager class -> its subclass that hands on `.blackbox`


def with_info_on_entry(manager: Any) -> Any:
    """openai's stream manager itself (sync or async: `isinstance` holds, as with openai's client), its class a
    subclass whose entry gives the stream the call's `.blackbox` (the SDK's stream's, which the helper reads)."""
    kind = type(manager)
    if kind not in _ENTERING:
        _ENTERING[kind] = _entering(kind)
    manager.__class__ = _ENTERING[kind]
    return manager


def _entering(kind: type[Any]) -> type[Any]:
    """`kind` (one of openai's stream managers) with `__enter__` / `__aenter__` handing on `.blackbox`."""
    if hasattr(kind, "__aenter__"):

        async def aenter(self: Any) -> Any:
            return with_info(await kind.__aenter__(self))

        entry: dict[str, Any] = {"__aenter__": aenter}
    else:

        def enter(self: Any) -> Any:
            return with_info(kind.__enter__(self))

        entry = {"__enter__": enter}
    return type(kind.__name__, (kind,), {**entry, "__module__": kind.__module__, "__doc__": kind.__doc__})


def with_info(stream: Any) -> Any:
    """The helper's stream with the call's `.blackbox`, and its `get_final_*` (awaited or not) giving it to the answer;
    unchanged when openai's own stream feeds it (a stored response streamed again by `response_id`)."""
    info = getattr(stream._raw_stream, "blackbox", None)
    if info is None:
        return stream
    stream.blackbox = info
    name = "get_final_response" if hasattr(stream, "get_final_response") else "get_final_completion"
    final = getattr(stream, name)

    async def final_async() -> Any:
        return attach(await final(), info)

    def final_sync() -> Any:
        return attach(final(), info)

    setattr(stream, name, final_async if inspect.iscoroutinefunction(final) else final_sync)
    return stream
