"""`create_app`: the proxy as a Starlette ASGI application over the SDK's `AsyncOpenAI`, with its
operations pages (/metrics and the status page at /, docs/proxy-operations.md).

Without tenant keys (and without `open_without_keys`) the proxy trusts this machine, so it answers
only requests addressed to it: a Host header naming a loopback address or the configured host.
A web page can point a name of its own at 127.0.0.1 (DNS rebinding) and then read the proxy's
answers as its own origin's; the Host it sends is still its own name, and is refused with 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .._client import is_loopback_host
from .._logging import logger
from ._config import ProxyConfig, client_options
from ._errors import error_body, error_json
from ._key_tenants import TenantOptions
from ._keys import KeyStore
from ._routes import ROUTES
from ._state import Proxy
from ._status_page import status_routes
from ._tenants import Authenticate


async def _no_route(request: Request, exc: Exception) -> Response:
    """OpenAI's answer for a path or method it does not serve (404 "Invalid URL", 405 with its Allow header)."""
    status, headers = (exc.status_code, exc.headers) if isinstance(exc, HTTPException) else (404, None)
    message = f"Invalid URL ({request.method} {request.url.path})" if status == 404 else f"Method {request.method} not allowed on {request.url.path}"
    return error_json(error_body(message, "invalid_request_error"), status, headers)


async def _crashed(request: Request, exc: Exception) -> Response:
    """OpenAI's 500 body for a failure outside the routes' own handling (Starlette's is plain text)."""
    logger.error("proxy: %s outside a route's handling of %s %s", type(exc).__name__, request.method, request.url.path)
    return error_json(error_body("the proxy failed to serve the request", "server_error"), 500)


def _host_name(header: str) -> str:
    """The name or address a Host header names, in lower case, without its port or an IPv6 address's brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.partition(":")[0]


class LocalHostsOnly:
    """ASGI middleware of a proxy without tenant keys: 403 for a request whose Host is neither a loopback
    name or address nor the configured host (a page that rebound its own name to this machine)."""

    def __init__(self, app: ASGIApp, bind_host: str) -> None:
        self.app = app
        self.bind_host = bind_host.strip("[]").lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allows(Headers(scope=scope).get("host", "")):
            message = "Without tenant keys this proxy answers only requests addressed to this machine (Host: localhost, 127.0.0.1 or [::1])."
            await error_json(error_body(message, "invalid_request_error", code="host_not_allowed"), 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allows(self, header: str) -> bool:
        """Whether a Host header names this machine: a loopback name or address, or the host the proxy listens on."""
        name = _host_name(header)
        return name == self.bind_host or is_loopback_host(name)


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
    authenticator builds) lets the page read each key's spend from its ledger. Without `authenticate`
    (and without `open_without_keys`) only requests whose Host names this machine are answered."""
    config = config or ProxyConfig()
    proxy = Proxy(config, client_options(config), authenticate, keys=keys, tenants=tenants)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Build the client in the background while serving; close it after the last request."""
        async with anyio.create_task_group() as group:
            group.start_soon(proxy.start)
            yield
        await proxy.close()

    local_only = authenticate is None and not config.open_without_keys
    middleware = [Middleware(LocalHostsOnly, bind_host=config.host)] if local_only else []
    handlers = {404: _no_route, 405: _no_route, 500: _crashed}
    app = Starlette(routes=[*ROUTES, *status_routes(), *routes], middleware=middleware, lifespan=lifespan, exception_handlers=handlers)
    app.router.redirect_slashes = False  # `/v1/chat/completions/` is OpenAI's 404, not a 307 to a URL built from Host
    app.state.proxy = proxy
    return app
