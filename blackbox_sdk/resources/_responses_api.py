"""`client.responses`, the Responses API, as subclasses of openai's own resources: `create` and
`parse` go through the SDK's pipeline (cache, budget, rate limits, retries, reranking over
`rerank_n` answers, the call log, `response.blackbox`); `stream` is openai's helper over our
`create`; everything else (retrieve, delete, cancel, input_items, input_tokens, ...) is openai's,
sent by the client itself with openai's retries. The async class only awaits what the core returns.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import copy
from functools import cached_property
from typing import Any

from openai import omit
from openai._models import add_request_id
from openai._utils import is_dict, is_given
from openai.lib import _response_resources as oai_helpers
from openai.lib._parsing._responses import parse_function_tool_arguments, parse_response, parse_text, type_to_text_format_param
from openai.types.responses import ResponseFunctionToolCall
from openai.resources.responses import responses as oai

from .._exceptions import ConfigError
from .._info import attach
from .._types import RESPONSES, Json, Parses, Route
from ._raw import parts, present, raw_view, view_method
from ._signature import mirror
from ._stream_helpers import Streams
from ._structured import asked_format, fits, fitting

Finish = Callable[[Any], Any]


def parse_request(kwargs: Json) -> tuple[Json, Callable[[str], bool] | None, Finish]:
    """A `parse` call as a `create` (openai's own helpers turn `text_format` into `text.format` and
    chat-style pydantic tools into Responses tools); the check reranking prefers (the answer parses);
    what turns the response into openai's `ParsedResponse` (`output_parsed`, parsed tool arguments)."""
    if kwargs.pop("stream", False):
        raise ConfigError("parse() returns a whole response; use responses.stream(..., text_format=...) to stream")
    text_format, parse_as = kwargs.pop("text_format", omit), kwargs.pop("parse_as", omit)
    text = kwargs.get("text", omit)
    if is_given(text_format):
        text = copy(text) if text else {}
        if "format" in text:
            raise TypeError("Cannot mix and match text.format with text_format")
        text["format"] = type_to_text_format_param(text_format)
        kwargs["text"] = text
    extra_body = kwargs.get("extra_body")
    asked = extra_body.get("input", kwargs.get("input", omit)) if is_dict(extra_body) else kwargs.get("input", omit)
    output_format = oai_helpers._output_text_parser(input=asked, text=text, text_format=text_format, parse_as=parse_as)
    tools = oai_helpers._make_tools(kwargs.pop("tools", omit))
    if is_given(tools):
        kwargs["tools"] = tools
    if "verbosity" in kwargs:  # openai's parse takes it, its create does not, and sends it in the body (under `extra_body`'s own)
        kwargs["extra_body"] = {"verbosity": kwargs.pop("verbosity"), **(extra_body or {})}

    def finish(response: Any) -> Any:
        parsed = parse_response(text_format=output_format, input_tools=tools, response=response)
        add_request_id(parsed, getattr(response, "_request_id", None))  # openai's parse keeps the request's id
        return attach(parsed, response.blackbox)

    return kwargs, text_fitting(output_format, tools), finish


def text_fitting(text_format: Any, tools: Any = omit) -> Callable[[str], bool] | None:
    """Which answers parse as `text_format` and carry function calls whose arguments parse as the strict `tools`' (`parse`
    and `stream` raise at the others, and rerank those first); None when neither is given."""
    calls = calls_fitting(tools)
    if not is_given(text_format) and calls is None:
        return None
    text = fits(lambda answer: parse_text(answer, text_format, phase=None)) if is_given(text_format) else fits(str)
    return Parses(text, calls)


def calls_fitting(tools: Any) -> Callable[[Json], bool] | None:
    """Whether a response's function calls parse as openai's helpers parse them (a pydantic tool's arguments into its
    model, a strict one's as JSON); None without a list of tools (an iterator, or tools openai refuses, left to it)."""
    try:
        given = oai_helpers._make_tools(tools) if isinstance(tools, (list, tuple)) and tools else omit  # as its helpers convert them
    except Exception:  # noqa: BLE001 - tools openai's helper refuses: it raises, with its own message
        return None
    if not is_given(given):
        return None
    parses = fits(lambda item: parse_function_tool_arguments(input_tools=given, function_call=ResponseFunctionToolCall.construct(**item)))

    def fit(response: Json) -> bool:
        output = response.get("output") or []
        return isinstance(output, list) and all(parses(item) for item in output if isinstance(item, dict) and item.get("type") == "function_call")

    return fit


def _views(resource: Any, view: type[Any], *, streaming: bool) -> Any:
    """openai's raw or streaming-response view, `create` (and the raw view's `parse`: openai's
    streaming-response view has none) budgeted, retried and logged."""
    out = raw_view(resource, view, streaming=streaming)
    if not streaming:
        inner = resource._client._core.inner.responses.with_raw_response
        out.parse = view_method(resource, "parse", inner.parse, streaming=False, parsing=True, parser=parse_request)
    return out


class Responses(Streams, oai.Responses):
    """`client.responses` with the SDK around `create` and `parse`; `stream` is openai's helper over them."""

    _route: Route = RESPONSES
    _path = ("responses",)
    _helper = staticmethod(oai_helpers.stream)
    _format = "text_format"
    _fitting = staticmethod(text_fitting)

    @mirror(oai.Responses.create)
    def create(self, **kwargs: Any) -> Any:
        """Create a response, whole or streamed (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return core.respond(params, overrides, fitting(asked_format(RESPONSES, params)))

    @mirror(oai.Responses.parse)
    def parse(self, **kwargs: Any) -> Any:
        """Structured outputs: a response through the SDK, parsed by openai's own helper."""
        request, valid, finish = parse_request(present(kwargs))
        core, params, overrides = parts(self, request)
        return finish(core.respond(params, overrides, valid))

    stream = mirror(oai.Responses.stream)(Streams._stream)

    @cached_property
    def with_raw_response(self) -> Any:  # type: ignore[override]
        """openai's raw view, with `create` and `parse` budgeted, retried and logged."""
        return _views(self, oai.ResponsesWithRawResponse, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:  # type: ignore[override]
        """openai's streaming-response view, with `create` budgeted, retried and logged."""
        return _views(self, oai.ResponsesWithStreamingResponse, streaming=True)


class AsyncResponses(Streams, oai.AsyncResponses):
    """`client.responses` for `AsyncOpenAI`."""

    _route: Route = RESPONSES
    _path = ("responses",)
    _helper = staticmethod(oai_helpers.async_stream)
    _format = "text_format"
    _fitting = staticmethod(text_fitting)

    @mirror(oai.AsyncResponses.create)
    async def create(self, **kwargs: Any) -> Any:
        """Create a response, whole or streamed (openai's arguments, plus the SDK's options)."""
        core, params, overrides = parts(self, kwargs)
        return await core.respond(params, overrides, fitting(asked_format(RESPONSES, params)))

    @mirror(oai.AsyncResponses.parse)
    async def parse(self, **kwargs: Any) -> Any:
        """Structured outputs: a response through the SDK, parsed by openai's own helper."""
        request, valid, finish = parse_request(present(kwargs))
        core, params, overrides = parts(self, request)
        return finish(await core.respond(params, overrides, valid))

    stream = mirror(oai.AsyncResponses.stream)(Streams._stream)

    @cached_property
    def with_raw_response(self) -> Any:  # type: ignore[override]
        """openai's raw view, with `create` and `parse` budgeted, retried and logged."""
        return _views(self, oai.AsyncResponsesWithRawResponse, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:  # type: ignore[override]
        """openai's streaming-response view, with `create` budgeted, retried and logged."""
        return _views(self, oai.AsyncResponsesWithStreamingResponse, streaming=True)
