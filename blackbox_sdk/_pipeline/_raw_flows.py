"""The raw views' flows (`with_raw_response`, `with_streaming_response`): the HTTP exchange itself, budgeted,
retried and logged, never cached, fanned out or reranked; settled from a body the SDK can read, else at the worst case."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

import httpx2
import openai

from .._info import attach
from .._options import split_options
from .._types import Json, Route
from ._calibrate import warn_ignored_cap
from ._call import Call, Sender
from ._core import Core
from ._effects import Effect, Flow, io
from ._flows import admit, begin, failed, guarded, handed_over
from ._responses import whole_texts


def begin_raw(core: Core, route: Route, target: Any, kwargs: Json) -> Flow:
    """A raw-response call: checked, never cached, admitted, its worst case reserved; (call, its one request to
    `target`, counted as the choices it asks for: a lost answer is charged what was sent)."""
    params, overrides = split_options(kwargs)
    call = yield from begin(core, route, params, overrides)
    call.key, call.raw = None, True  # a raw response is the HTTP exchange itself: never cached, never fanned out
    try:
        count, max_tokens = yield from admit(core, call, call.n)
    except BaseException as error:
        yield from failed(core, call, error)
        raise
    sent = partial(core.request, call, count, max_tokens, raw=True)  # built as it goes: see `Core.sender`
    return call, Sender(lambda: target.create(**sent()), count)


def settle_raw(core: Core, call: Call, whole: Json | None, error: BaseException | None = None) -> None:
    """Settle a raw call from its body's usage, or at the reserved worst case for a stream or a body
    the SDK can't read, and log it (with `error`: a streaming view left early)."""
    usage = call.route.usage(whole) if whole is not None else None
    if usage is not None:
        warn_ignored_cap(core, call, usage, len((whole or {}).get("choices") or []))
        core.settle(call, usage)
    else:
        core.settle_reserved(call)
    texts = whole_texts(call, whole) if whole is not None else []
    call.info.candidates = texts or None
    call.info.chosen = list(range(len(texts)))
    core.record(call, [], usage, error)


def raw_create(core: Core, route: Route, target: Any, kwargs: Json) -> Flow:
    """`with_raw_response.create`: openai's raw response, with budget, retries and log."""
    call, send = yield from begin_raw(core, route, target, kwargs)
    raw = yield from guarded(core, Effect("raw", call, (send,)))
    yield from io(call, partial(settle_raw, core, call, None if call.stream else raw_body(raw)))  # a stream's usage and text are the caller's to read
    with contextlib.suppress(Exception):  # the caller's own `parse()` raises what openai raises (a cut answer, a bad schema)
        attach(raw.parse(), call.info)
    raw.retries_taken = call.info.retries  # as openai's raw response counts them; here the SDK took them
    return attach(raw, call.info)


def raw_body(raw: Any) -> Json | None:
    """The JSON body of a whole raw response, read as it came (no parser of `parse` applied), or None (not JSON, or
    a streaming view's body the caller did not read whole)."""
    try:
        body = raw.http_response.json()
    except (ValueError, httpx2.ResponseNotRead):
        return None
    return body if isinstance(body, dict) else None


def settle_view(core: Core, call: Call, response: Any, early: BaseException | None = None) -> None:
    """Settle `with_streaming_response` as it is left: from the body's usage when the caller read a whole answer
    (`read`, `parse`, `json`, `text`), else at the reserved worst case (a stream, or a body read in pieces or not at all);
    logged with `early` (`left_early`)."""
    settle_raw(core, call, None if call.stream else raw_body(response), early)


def left_early(call: Call, response: Any, error: BaseException) -> BaseException | None:
    """What a streaming view that `error` left is logged with: the exchange's own error as it is (a body cut, a close
    refused); for the caller's own, closed before its end, as a stream is, unless it had read a whole answer (then
    the exchange went through, settled from its usage)."""
    if isinstance(error, (httpx2.HTTPError, openai.APIError)):
        return error
    return None if not call.stream and raw_body(response) is not None else RuntimeError("stream closed before its end")


def open_raw(core: Core, route: Route, target: Any, kwargs: Json) -> Flow:
    """`with_streaming_response.create` up to the unread response: (call, context to exit, response)."""
    call, send = yield from begin_raw(core, route, target, kwargs)
    context, response = yield from guarded(core, Effect("enter", call, (send,)))
    yield from handed_over(core, call)  # the caller reads its body at its own pace
    response.retries_taken = call.info.retries  # as openai's counts them; here the SDK took them
    return call, context, attach(response, call.info)
