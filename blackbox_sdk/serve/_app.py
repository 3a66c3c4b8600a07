"""`create_app`: the proxy as a Starlette ASGI application over the SDK's `AsyncOpenAI`, with its
operations pages (/metrics and the status page at /, docs/proxy-operations.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ._config import ProxyConfig, client_options
from ._errors import error_body
from ._key_tenants import TenantOptions
from ._keys import KeyStore
from ._routes import ROUTES
from ._state import Proxy
from ._status_page import status_routes
from ._tenants import Authenticate


async def _no_route(request: Request, exc: Exception) -> Response:
    """OpenAI's answer for a path or method it does not serve (404 "Invalid URL", 405)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = f"Invalid URL ({request.method} {request.url.path})" if status == 404 else f"Method {request.method} not allowed on {request.url.path}"
    return JSONResponse(error_body(message, "invalid_request_error"), status_code=status)


def create_app(
    config: ProxyConfig | None = None,
    *,
    authenticate: Authenticate | None = None,
    routes: Sequence[BaseRoute] = (),
    keys: KeyStore | None = None,
    tenants: TenantOptions | None = None,
) -> Starlette:
    """The proxy's ASGI app. The SDK options are checked now (a bad budget fails here); the client
    itself is built in the background once the app starts, and closed when it stops.
    `authenticate(presented_key) -> Tenant | None` plugs in a key store (None: no tenant keys);
    `routes` are served beside the proxy's own (the key store's /admin routes). `keys` (the key
    store) puts /metrics and the status page behind its admin key, and `tenants` (the options the
    authenticator builds) lets the page read each key's spend from its ledger."""
    config = config or ProxyConfig()
    proxy = Proxy(config, client_options(config), authenticate, keys=keys, tenants=tenants)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Build the client in the background while serving; close it after the last request."""
        async with anyio.create_task_group() as group:
            group.start_soon(proxy.start)
            yield
        await proxy.close()

    app = Starlette(routes=[*ROUTES, *status_routes(), *routes], lifespan=lifespan, exception_handlers={404: _no_route, 405: _no_route})
    app.state.proxy = proxy
    return app
