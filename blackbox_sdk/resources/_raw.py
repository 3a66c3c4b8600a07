"""Raw views (`with_raw_response`, `with_streaming_response`): openai's own view classes, whose
generating methods go through the SDK's budget, retries and log.

A whole chat or text completion or response (`create` or `parse` without `stream`) runs through the
whole pipeline, cache, fan-out and reranking included (LangChain's `ChatOpenAI` calls the raw view on
every `invoke`, of `responses` on the Responses API): its raw response carries the last HTTP response's status and headers (none on a
cache hit) and the returned object's JSON, and `parse()` gives that object. A stream, a
streaming-response view and the other routes expose the HTTP exchange itself, so they are never
cached, fanned out or reranked; a stream read by the caller settles the reserved worst case (an
upper bound, recorded as such), since the SDK does not see what the caller reads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import Any

import httpx2
import openai
from openai._legacy_response import LegacyAPIResponse
from openai._models import FinalRequestOptions
from openai._client import AsyncOpenAIWithRawResponse, AsyncOpenAIWithStreamedResponse, OpenAIWithRawResponse, OpenAIWithStreamedResponse

from .._info import attach
from .._options import split_options
from .._types import CHAT, COMPLETIONS, RESPONSES, Route
from ._signature import mirrored
from ._structured import STRUCTURED, asked_format, fitting, parse_request

_UNSET = (openai.NotGiven, openai.Omit)
PATHS: dict[Route, str] = {CHAT: "/chat/completions", COMPLETIONS: "/completions", RESPONSES: "/responses"}  # routes run whole
Parser = Callable[[dict[str, Any]], tuple[dict[str, Any], Any, Any]]  # a `parse` call as a `create`: request, valid, finish


def present(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments actually given: openai's helpers pass `omit` / `NOT_GIVEN` for every other one."""
    return {name: value for name, value in kwargs.items() if not isinstance(value, _UNSET)}


def parts(resource: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The core, the openai parameters given and the SDK's options of a call on `resource`."""
    params, overrides = split_options(present(kwargs))
    return resource._client._core, params, overrides


class _Send:
    """What the raw flows send through: `create(**params)` calls the inner view's method."""

    def __init__(self, method: Callable[..., Any], originals: dict[str, Any]) -> None:
        self._method = method
        self._originals = originals

    def create(self, **params: Any) -> Any:
        """The inner method, with the caller's own structured-output arguments back in place."""
        return self._method(**{**params, **self._originals})


class RawMethod:
    """One generating method of a raw view: openai's raw response (awaitable on the async client), or
    for streaming a context manager over the unread response (`async with` on the async client)."""

    def __init__(self, resource: Any, method: Callable[..., Any], *, streaming: bool, parsing: bool, parser: Parser = parse_request) -> None:
        self._core = resource._client._core
        self._route = resource._route
        self._method = method
        self._streaming = streaming
        self._parsing = parsing
        self._parser = parser

    def __call__(self, **kwargs: Any) -> Any:
        if not self._streaming and not kwargs.get("stream") and self._route in PATHS:
            return self._whole(kwargs)
        originals = {name: kwargs[name] for name in STRUCTURED if name in kwargs} if self._parsing else {}
        request = self._parser(dict(kwargs))[0] if self._parsing else kwargs  # the resource's own: responses' refuses a stream
        if self._parsing:
            request.pop("stream")  # openai's own `parse`, which `_Send` calls, takes no `stream`: it sends its own
        target = _Send(self._method, present(originals))
        if self._streaming:
            return self._core.streaming_response(self._route, target, present(request))
        return self._core.raw_create(self._route, target, present(request))


    def _whole(self, kwargs: dict[str, Any]) -> Any:
        """A whole completion through the pipeline, wrapped as openai's raw response."""
        request, valid, finish = self._parser(dict(kwargs)) if self._parsing else (kwargs, None, None)
        params, overrides = split_options(present(request))
        valid = valid if self._parsing else fitting(asked_format(self._route, params))  # create's JSON formats, as the resource's own
        path = PATHS[self._route]

        def wrap(result: Any, http: Any) -> Any:
            return BlackBoxRawResponse(result, finish, http, client=self._core.inner, path=path)

        return self._core.whole_raw(self._route, params, overrides, valid, wrap)


_NOT_COPIED = ("content-length", "content-encoding", "transfer-encoding")  # the body is the SDK's, re-encoded


class BlackBoxRawResponse(LegacyAPIResponse[Any]):
    """openai's raw response for a whole call the SDK ran: the last HTTP response's status and
    headers (none on a cache hit), the returned object's JSON as the body; `parse()` is that object
    (for `parse`, openai's parsed completion, raising what openai raises for a cut answer)."""

    def __init__(self, result: Any, finish: Any, http: Any, *, client: Any, path: str) -> None:
        headers = {k: v for k, v in http.headers.items() if k.lower() not in _NOT_COPIED} if http is not None else {"content-type": "application/json"}
        request = http.request if http is not None else httpx2.Request("POST", str(client.base_url).rstrip("/") + path)
        body = result.to_json(indent=None).encode()
        raw = httpx2.Response(http.status_code if http is not None else 200, headers=headers, content=body, request=request)
        raw.elapsed = http.elapsed if http is not None else timedelta(0)  # openai's `elapsed`: the exchange's time; a hit had none
        options = FinalRequestOptions.construct(method="post", url=path)
        retries = result.blackbox.retries  # the SDK's retries, counted as openai's raw response counts its own
        super().__init__(raw=raw, cast_to=type(result), client=client, stream=False, stream_cls=None, options=options, retries_taken=retries)
        self._result = result
        self._finish = finish
        attach(self, result.blackbox)

    def parse(self, *, to: Any = None) -> Any:
        """The returned object (or the body as `to`, as openai's raw response does)."""
        if to is not None:
            return super().parse(to=to)
        if self._finish is not None:
            self._result, self._finish = self._finish(self._result), None
        return self._result


def raw_view(resource: Any, view_class: type[Any], *, streaming: bool, parsing: bool = False) -> Any:
    """openai's view of `resource`, with `create` (and `parse`) sent by the SDK through the inner client."""
    view = view_class(resource)
    inner = resource._client._core.inner
    for step in resource._path:
        inner = getattr(inner, step)
    inner_view = inner.with_streaming_response if streaming else inner.with_raw_response
    view.create = view_method(resource, "create", inner_view.create, streaming=streaming)
    if parsing:
        view.parse = view_method(resource, "parse", inner_view.parse, streaming=streaming, parsing=True)
    return view


def view_method(resource: Any, name: str, inner: Callable[..., Any], *, streaming: bool, parsing: bool = False, parser: Parser = parse_request) -> Any:
    """A view's `name` (`create` or `parse`): a RawMethod sending through `inner`, with the signature,
    metadata and argument errors of the resource's own `name` (openai's, as openai's views have)."""
    method = RawMethod(resource, inner, streaming=streaming, parsing=parsing, parser=parser)
    return mirrored(getattr(resource, name), method, RawMethod.__call__)


class RawViews:
    """`with_raw_response` / `with_streaming_response` of a resource the SDK runs: openai's view
    classes (`_views`), their generating methods through the SDK (`parse` too when `_parsing`)."""

    _views: tuple[type[Any], type[Any]]
    _parsing = False

    @cached_property
    def with_raw_response(self) -> Any:
        """openai's raw view, with `create` (and `parse`) budgeted, retried and logged."""
        return raw_view(self, self._views[0], streaming=False, parsing=self._parsing)

    @cached_property
    def with_streaming_response(self) -> Any:
        """openai's streaming-response view, with `create` (and `parse`) budgeted, retried and logged."""
        return raw_view(self, self._views[1], streaming=True, parsing=self._parsing)


class _Views:
    """The client-level view: the resources the SDK runs answer with their own views."""

    _client: Any
    _view: str

    @cached_property
    def chat(self) -> Any:
        """`client.<view>.chat`."""
        return getattr(self._client.chat, self._view)

    @cached_property
    def completions(self) -> Any:
        """`client.<view>.completions`."""
        return getattr(self._client.completions, self._view)

    @cached_property
    def embeddings(self) -> Any:
        """`client.<view>.embeddings`."""
        return getattr(self._client.embeddings, self._view)

    @cached_property
    def responses(self) -> Any:
        """`client.<view>.responses`."""
        return getattr(self._client.responses, self._view)


class RawClient(_Views, OpenAIWithRawResponse):
    """`OpenAI().with_raw_response`."""

    _view = "with_raw_response"


class AsyncRawClient(_Views, AsyncOpenAIWithRawResponse):
    """`AsyncOpenAI().with_raw_response`."""

    _view = "with_raw_response"


class StreamedClient(_Views, OpenAIWithStreamedResponse):
    """`OpenAI().with_streaming_response`."""

    _view = "with_streaming_response"


class AsyncStreamedClient(_Views, AsyncOpenAIWithStreamedResponse):
    """`AsyncOpenAI().with_streaming_response`."""

    _view = "with_streaming_response"
