"""The proxy's routes: each reads and checks the request, hands it to the SDK's `AsyncOpenAI`, and
answers with the pure OpenAI body and the `x-blackbox-*` headers.

    POST /v1/chat/completions, /v1/completions   whole or streamed (SSE)
    POST /v1/responses                          whole or streamed (SSE, each event named by its type)
    POST /v1/embeddings
    GET  /v1/models, /v1/models/{model}
    POST /v1/feedback                           {"call_id", "label" | "preferred" | "reward" | "reference" | "note"}
    GET  /healthz, /readyz
    GET  /metrics                               Prometheus text (the admin's: docs/proxy-operations.md)

Each /v1 request is metered (`_metrics.RequestMeter`): its labels, clock and the SDK's figures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial, wraps
from typing import Any

import openai.resources as oai
from openai.resources.chat import completions as oai_chat
from openai.resources.responses import AsyncResponses
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._exceptions import ConfigError, RateLimitExceededError
from .._pipeline import before_sending
from .._text import checked_text
from ..call_log import new_call_id
from ._body import call_arguments, check_content_type, parse_object, read_body, required
from ..limits import watching_windows
from ._errors import ProxyError, error_response, ratelimit_headers
from ._metrics import CLIENT_CLOSED, RequestMeter
from ._sse import EventStream, events, wire_json
from ._state import Proxy
from ._tenants import Tenant

Handler = Callable[[Request], Awaitable[Response]]
MeteredHandler = Callable[[Request, RequestMeter], Awaitable[Response]]
FEEDBACK_FIELDS = frozenset({"label", "preferred", "reward", "reference", "note"})


def blackbox_headers(info: Any, *, settled: bool = True) -> dict[str, str]:
    """The `x-blackbox-*` headers: call id, cache hit, and the cost once it is settled (a live stream's is not yet); and
    `x-request-id`, which OpenAI sends on every answer and openai's clients keep as `_request_id`: the call id here."""
    headers = {"x-blackbox-call-id": info.call_id, "x-blackbox-cache-hit": "true" if info.cache_hit else "false", "x-request-id": info.call_id}
    if settled or info.cache_hit:
        headers["x-blackbox-cost-usd"] = f"{info.cost_usd:.9f}"
    return headers


def guarded(route: str) -> Callable[[MeteredHandler], Handler]:
    """A metered route: any error becomes OpenAI's JSON error body with its status (`_errors.describe`), every answer
    has an `x-request-id` and OpenAI's `openai-processing-ms` (the proxy's time up to the answer's head), and the
    request is counted under `route` once answered (a stream counts itself when it ends)."""

    def wrap(handler: MeteredHandler) -> Handler:
        """The handler, metered and guarded."""

        @wraps(handler)
        async def guard(request: Request) -> Response:
            meter = RequestMeter(request.app.state.proxy.metrics, route)
            with watching_windows() as seen:  # the rate windows the call is decided in: its x-ratelimit-* headers, 429s too
                try:
                    response = await handler(request, meter)
                except ClientDisconnect:  # the client left while its body was read: no failure of the proxy's
                    response = Response(status_code=CLIENT_CLOSED)
                except Exception as exc:  # noqa: BLE001 - every failure is answered in OpenAI's error format
                    meter.failed(exc)
                    response = error_response(exc)
                except BaseException:
                    meter.answer(CLIENT_CLOSED)  # cancelled (the server stopping): counted, not left in flight
                    _release_tenant(request, None)
                    raise
            _release_tenant(request, response)
            response.headers.update(ratelimit_headers(seen))
            response.headers.setdefault("x-request-id", new_call_id())  # as OpenAI sends on every answer (models, feedback)
            response.headers["openai-processing-ms"] = str(round((time.perf_counter() - meter.started) * 1000))  # to its head
            if not meter.deferred:
                meter.answer(response.status_code)
            return response

        return guard

    return wrap


def _release_tenant(request: Request, response: Response | None) -> None:
    """Let go of the tenant's options the request held (`Tenant.release`): now, or once a stream it answers has ended."""
    release = getattr(request.state, "release_tenant", None)
    if release is None:
        return
    if isinstance(response, EventStream):
        response.after = release
    else:
        release()


@dataclass(frozen=True)
class Generating:
    """A generating route: the fields it requires, openai's `create` (its arguments) and how the client calls it."""

    name: str  # the metrics' route label
    required: tuple[str, ...]
    signature: Callable[..., Any]
    call: Callable[[Any, dict[str, Any]], Awaitable[Any]]
    named_events: bool = False  # SSE as the Responses API sends it: `event: {type}` lines, no `data: [DONE]`


CHAT = Generating("chat", ("model", "messages"), oai_chat.AsyncCompletions.create, lambda client, a: client.chat.completions.create(**a))
COMPLETIONS = Generating("completions", ("model", "prompt"), oai.AsyncCompletions.create, lambda client, a: client.completions.create(**a))
RESPONSES = Generating(
    "responses", ("model",), AsyncResponses.create, lambda client, a: client.responses.create(**a), named_events=True,
)
EMBEDDINGS = Generating("embeddings", ("model", "input"), oai.AsyncEmbeddings.create, lambda client, a: client.embeddings.create(**a))


async def _request_json(proxy: Proxy, request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, within the proxy's size and time limits."""
    check_content_type(request)
    return parse_object(await read_body(request, proxy.config.max_body_bytes, proxy.config.body_timeout_s))


def generating(route: Generating) -> Handler:
    """The handler of one generating route."""

    @guarded(route.name)
    async def handle(request: Request, meter: RequestMeter) -> Response:
        proxy: Proxy = request.app.state.proxy
        tenant = await proxy.tenant(request)
        meter.label(tenant)
        body = await _request_json(proxy, request)
        required(body, *route.required)
        _check_model(tenant, body["model"], meter)
        client = await proxy.tenant_client(tenant)
        checking = before_sending.set(partial(_still_connected, request))
        try:
            result = await route.call(client, call_arguments(body, route.signature))
        finally:
            before_sending.reset(checking)
        cached = client.options.cache is not None
        if hasattr(result, "__aiter__"):  # a stream, whatever the body's `stream` said: sent, so it is always closed
            sent = events(meter.stream(result, cached), named=route.named_events)
            return EventStream(sent, blackbox_headers(result.blackbox, settled=False))
        meter.called(result, cached)
        return Response(wire_json(result), media_type="application/json", headers=blackbox_headers(result.blackbox))

    return handle


async def _still_connected(request: Request) -> None:
    """ClientDisconnect (answered 499) when the client left before its call was sent (while it waited for the rate
    window, say): the SDK then sends nothing, gives back what the call held and logs it as failed with this error."""
    if await request.is_disconnected():
        raise ClientDisconnect("the client disconnected before its call was sent: nothing was sent or charged")


def _check_model(tenant: Tenant | None, model: object, meter: RequestMeter) -> None:
    """400 for a model that is not a string (as OpenAI answers, whatever the key may use); 404 for a model the
    tenant may not use, labelled as refused: only models served take the metrics' label slots."""
    if not isinstance(model, str):
        meter.refused_model()
        kind = "null" if model is None else type(model).__name__
        raise ProxyError(400, f"Invalid type for 'model': expected a string, but got {kind} instead.", code="invalid_type", param="model")
    if tenant is not None:
        try:
            tenant.check_model(model)
        except ProxyError:
            meter.refused_model()
            raise
    meter.label(tenant, model)


@guarded("models")
async def models(request: Request, meter: RequestMeter) -> Response:
    """GET /v1/models: the upstream's models (those the key may use)."""
    proxy: Proxy = request.app.state.proxy
    tenant = await proxy.tenant(request)
    meter.label(tenant)
    page = await proxy.client_for(None).models.list()
    data = [model.model_dump(exclude_unset=True) for model in page.data if tenant is None or not tenant.models or model.id in tenant.models]
    return JSONResponse({"object": "list", "data": data})


@guarded("models")
async def model(request: Request, meter: RequestMeter) -> Response:
    """GET /v1/models/{model}: one model of the upstream's list (any upstream lists; not all serve this route),
    404 model_not_found for one it does not list or the key may not use, as OpenAI answers."""
    proxy: Proxy = request.app.state.proxy
    tenant = await proxy.tenant(request)
    meter.label(tenant)
    name = request.path_params["model"]
    if tenant is not None:
        tenant.check_model(name)
    page = await proxy.client_for(None).models.list()
    for found in page.data:
        if found.id == name:
            return JSONResponse(found.model_dump(exclude_unset=True))
    raise ProxyError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found", param="model")


@guarded("feedback")
async def feedback(request: Request, meter: RequestMeter) -> Response:
    """POST /v1/feedback: feedback on a call, into the same call log as the call (the Python API's `feedback`)."""
    proxy: Proxy = request.app.state.proxy
    tenant = await proxy.tenant(request)
    meter.label(tenant)
    body = await _request_json(proxy, request)
    required(body, "call_id")
    call_id = body.pop("call_id")
    unknown = sorted(set(body) - FEEDBACK_FIELDS)
    if not isinstance(call_id, str) or unknown:
        raise ProxyError(400, f"feedback takes a string call_id and some of {sorted(FEEDBACK_FIELDS)}; got {unknown or call_id!r}")
    client = await proxy.tenant_client(tenant)
    await run_in_threadpool(_record_feedback, client, None if tenant is None else tenant.name, call_id, body)
    return JSONResponse({"object": "feedback", "call_id": call_id, "recorded": True})


def _record_feedback(client: Any, owner: str | None, call_id: str, fields: dict[str, Any]) -> None:
    """Record feedback; 404 call_not_found for a call the log does not hold, or (for a tenant) another key's call."""
    log = client.options.log
    if log is None:
        raise ProxyError(  # the operator's setup, not the request: no retry mends it
            501, "this proxy keeps no call log, so it records no feedback: set log in its configuration",
            kind="server_error", code="feedback_not_enabled", retry=False,
        )
    checked_text(call_id, "call_id")  # 400 for an id that can't be one (empty, a lone surrogate)
    log.flush()
    try:
        key = log.get(call_id).key
        unknown = owner is not None and key != owner
    except ConfigError:  # not logged: 404 in either mode, as OpenAI answers a missing object
        unknown = True
    if unknown:
        raise ProxyError(404, f"no call {call_id!r} in the log", param="call_id", code="call_not_found")
    try:
        log.feedback(call_id, **fields)
    except TypeError as error:
        raise ProxyError(400, f"bad feedback: {error}") from None


async def healthz(request: Request) -> Response:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """GET /readyz: 200 once the upstream client is built, 503 before (or when building it failed)."""
    proxy: Proxy = request.app.state.proxy
    if proxy.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "failed" if proxy.failure else "starting", "error": proxy.failure}, status_code=503)


async def metrics(request: Request) -> Response:
    """GET /metrics: the Prometheus text format, for the admin only (`_admin_gate`)."""
    proxy: Proxy = request.app.state.proxy
    try:
        if not await proxy.gate.allows(request):
            return error_response(proxy.gate.refusal())
    except RateLimitExceededError as refused:  # too many wrong keys from this address
        return error_response(refused)
    return Response(proxy.metrics.exposition(), media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})


ROUTES = [
    Route("/v1/chat/completions", generating(CHAT), methods=["POST"]),
    Route("/v1/completions", generating(COMPLETIONS), methods=["POST"]),
    Route("/v1/responses", generating(RESPONSES), methods=["POST"]),
    Route("/v1/embeddings", generating(EMBEDDINGS), methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model:path}", model, methods=["GET"]),
    Route("/v1/feedback", feedback, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
