"""`blackbox-sdk serve`: an OpenAI-compatible HTTP proxy, a thin ASGI layer over the SDK's own
`AsyncOpenAI`, so that apps in any language get the cache, budgets, rate limits, reranking and the
call log by changing a base URL (docs/proxy.md). Needs the `proxy` extra (starlette, uvicorn)."""

from ._admin import admin_routes
from ._app import create_app
from ._config import ProxyConfig, load_config
from ._errors import ProxyError
from ._key_stores import open_key_store
from ._key_tenants import TenantDefaults, TenantOptions, key_authenticator, model_allowed, tenant_options
from ._keys import KeyRecord, KeyStore, SecretKey
from ._keys_cli import add_keys_command
from ._run import check_exposure, cli_main, serve
from ._tenants import Authenticate, Tenant

__all__ = [
    "Authenticate",
    "KeyRecord",
    "KeyStore",
    "ProxyConfig",
    "ProxyError",
    "SecretKey",
    "Tenant",
    "TenantDefaults",
    "TenantOptions",
    "add_keys_command",
    "admin_routes",
    "check_exposure",
    "cli_main",
    "create_app",
    "key_authenticator",
    "load_config",
    "model_allowed",
    "open_key_store",
    "serve",
    "tenant_options",
]
