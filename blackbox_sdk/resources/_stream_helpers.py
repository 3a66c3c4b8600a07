"""openai's stream helpers (`chat.completions.stream`, `responses.stream`) over the SDK's pipeline:
the SDK's options allowed per call, and, as for `parse`, reranking prefers the answers that fit the
type the helper parses into (`response_format`, `text_format`), so that the answer streamed is one
the helper's `get_final_completion()` / `get_final_response()` can parse whenever one was sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from openai import omit

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
    argument the helper parses into, `_fitting` turns it into the check reranking prefers. Each
    resource binds `_stream` as its `stream` through `mirror`, with openai's signature."""

    _helper: Callable[..., Any]  # openai's stream or async_stream for this resource (a staticmethod)
    _format: str  # "response_format" (chat) or "text_format" (responses)
    _fitting: Callable[[Any], Valid]  # that argument's value -> the check (a staticmethod)

    def _stream(self, **kwargs: Any) -> Any:
        """openai's stream manager over the SDK's `create` (the SDK's options allowed per call)."""
        params, overrides = split_options(kwargs)
        valid = self._fitting(params.get(self._format, omit))
        return self._helper(StreamSource(self, overrides, valid), **params)
