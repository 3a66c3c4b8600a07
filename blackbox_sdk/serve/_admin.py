"""The admin routes over a key store, behind the admin key (``Authorization: Bearer <admin key>``).

    POST   /admin/keys            {"name": "team-a", "budget_usd": 50, "rpm": 600, ...} -> 201, the key shown once
    GET    /admin/keys            -> 200 {"object": "list", "data": [records, no secrets]}
    DELETE /admin/keys/{key_id}   -> 200 the revoked record (an id or a name), 404 for an unknown one

Anything without the admin key gets 401 with OpenAI's error body, before its body is read; a key presented takes
an attempt of its address before it is compared (`_attempts`, shared with /login), 429 when none is left. A key's
reranker folder is loaded (config, weights and base encoder) before the key is stored: one that can't load is a 400.
The store's blocking calls run in Starlette's thread pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._exceptions import AdapterError, BlackBoxError, RateLimitExceededError
from ._attempts import Attempts, admin_attempts
from ._body import check_content_type, parse_object, read_body
from ._config import DEFAULT_BODY_TIMEOUT_S, check_reranker
from ._errors import ProxyError, error_response
from ._key_tenants import TenantOptions
from ._keys import KeyRecord, KeyStore, SecretKey, new_record
from ._tenants import presented_key

MAX_ADMIN_BODY_BYTES = 64 * 1024
_NO_STORE = {"cache-control": "no-store"}


def admin_routes(store: KeyStore, tenants: TenantOptions | None = None) -> list[Route]:
    """The three admin routes over ``store``, for the app to mount; a key they revoke has its options in ``tenants``
    (the authenticator's) dropped, so its ledger, cache and rate window close once its last request ends."""

    own = admin_attempts(store)  # served by another app than the proxy's (the same count in a shared store)

    async def create_key(request: Request) -> Response:
        """POST /admin/keys: a new key; its secret is in this answer and nowhere else."""
        return await _guarded(request, store, _attempts(request, own), lambda: _create(request, store))

    async def list_keys(request: Request) -> Response:
        """GET /admin/keys: every record, revoked ones included, never a secret."""
        return await _guarded(request, store, _attempts(request, own), lambda: _list(store))

    async def revoke_key(request: Request) -> Response:
        """DELETE /admin/keys/{key_id}: revoke a key by id (or name)."""
        return await _guarded(request, store, _attempts(request, own), lambda: _revoke(request, store, tenants))

    return [
        Route("/admin/keys", create_key, methods=["POST"]),
        Route("/admin/keys", list_keys, methods=["GET"]),
        Route("/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    ]


def _attempts(request: Request, own: Attempts) -> Attempts:
    """The failed attempts of the proxy app these routes are served by (shared with /login), else the routes' own."""
    proxy = getattr(request.app.state, "proxy", None)
    return own if proxy is None else proxy.gate.attempts


async def _guarded(request: Request, store: KeyStore, attempts: Attempts, handle: Callable[[], Awaitable[Response]]) -> Response:
    """429 for a key presented by an address with no attempt left, 401 without the admin key (a wrong one keeps its
    attempt, the right one gives it back); else the handler's answer, the SDK's errors as OpenAI error bodies."""
    presented = presented_key(request)
    try:
        async with attempts.guessing(request, presented) as guess:
            if not store.is_admin(presented):
                guess.wrong()  # no key presented took no attempt: nothing kept
                refusal = ProxyError(401, "This route needs the proxy's admin key: send it in the Authorization header as a bearer token.", code="invalid_api_key")
                return error_response(refusal)
    except RateLimitExceededError as refused:
        return error_response(refused)
    try:
        return await handle()
    except BlackBoxError as exc:
        return error_response(exc)


async def _create(request: Request, store: KeyStore) -> Response:
    """Check the body, create the key, answer 201 with the secret (not cached by anything in between)."""
    check_content_type(request)  # 415 for a body that is not sent as JSON, before it is read
    raw = await read_body(request, MAX_ADMIN_BODY_BYTES, DEFAULT_BODY_TIMEOUT_S)  # the routes have no configuration of their own
    body = parse_object(raw)  # as /v1 reads its bodies: UTF-8, nested at most 64 deep, finite numbers, no lone surrogate
    if not isinstance(body.get("name"), str):
        raise ProxyError(400, "the body must be a JSON object with a 'name' and optional limits", param="name")
    name = body.pop("name")
    secret, record = await run_in_threadpool(_create_checked, store, name, body)
    return JSONResponse({"key": str(secret), **record.to_json()}, status_code=201, headers=_NO_STORE)


def _create_checked(store: KeyStore, name: str, limits: dict[str, Any]) -> tuple[SecretKey, KeyRecord]:
    """The store's create, a reranker folder that can't load refused with 400 first (not a 500 on the key's first request)."""
    reranker = new_record(name, **limits).reranker  # the fields checked as the store checks them, before a folder is read
    if reranker is not None:
        try:
            check_reranker(reranker)  # loaded as the key's first call loads it, base encoder included
        except AdapterError as exc:
            raise ProxyError(400, str(exc), param="reranker", code="invalid_reranker") from exc
    return store.create(name, **limits)


async def _list(store: KeyStore) -> Response:
    """Every record as JSON."""
    records = await run_in_threadpool(store.list)
    return JSONResponse({"object": "list", "data": [record.to_json() for record in records]})


async def _revoke(request: Request, store: KeyStore, tenants: TenantOptions | None) -> Response:
    """Revoke one key, dropping its built options and the proxy's client copy for it; 404 when there is no such key."""
    record = await run_in_threadpool(store.find, request.path_params["key_id"])
    if record is None:
        raise ProxyError(404, "no key has this id or name", code="key_not_found", param="key_id")
    revoked = await run_in_threadpool(store.revoke, record.key_id)
    if tenants is not None:
        await run_in_threadpool(tenants.forget, revoked.name)  # closing a ledger or cache may wait on I/O
    proxy = getattr(request.app.state, "proxy", None)  # None: the routes are served by an app of their own
    if proxy is not None:
        proxy.forget(revoked.name)
    return JSONResponse(revoked.to_json())
