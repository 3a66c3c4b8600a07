"""Running the proxy: `serve(config)` under uvicorn (graceful shutdown finishes in-flight streams),
and the `blackbox-sdk serve` command's arguments."""

from __future__ import annotations

import argparse
import math
import socket
from collections.abc import Sequence
from pathlib import Path

from starlette.routing import BaseRoute

from .._client import _local_target, is_loopback_host
from .._cli_errors import report_error
from .._exceptions import BlackBoxError, ConfigError, StoreUnavailableError
from .._logging import logger
from ._app import create_app
from ._config import LOCAL_UPSTREAM, ProxyConfig, check_reranker, load_config
from ._key_tenants import TenantOptions
from ._keys import KeyStore
from ._tenants import Authenticate


def check_exposure(config: ProxyConfig, authenticate: Authenticate | None) -> None:
    """Without tenant keys the proxy listens on loopback only, unless `open_without_keys` says otherwise."""
    if authenticate is None and not config.open_without_keys and not is_loopback_host(config.host):
        raise ConfigError(
            f"no key store is configured, so anyone reaching {config.host} could spend the upstream's budget: "
            "listen on 127.0.0.1, or set open_without_keys = true (--open-without-keys) to allow it"
        )


def check_stores(config: ProxyConfig) -> None:
    """Open and close the call log, the cache and a rate limit's SQLite file as the client will, and load the reranker as
    its first call will (its base encoder too), so that a corrupt file, a missing encoder or a store out of reach stops the
    command before it listens rather than failing every request after it (the client itself is built once serving)."""
    from .._options import Opened, open_cache, open_log
    from ..limits import open_store

    check_local_model(config)
    opened = Opened()
    try:
        open_log(config.log, None, opened)
        open_cache(config.cache, None, opened)
    finally:
        opened.close()
    store = (config.rate_limit or {}).get("store")
    if isinstance(store, (str, Path)) and "://" not in str(store):  # a Redis out of reach is no error yet (docs/fleet.md)
        open_store(Path(store).expanduser()).close()  # StoreUnavailableError for a file SQLite can't open
    if config.reranker is not None:
        check_reranker(config.reranker)


def check_local_model(config: ProxyConfig) -> None:
    """A local upstream (``hf:`` or left out: the embedded model) whose model is not on disk stops the command before it
    listens, as BackendError "no model at ...", rather than a /readyz and every request answering 503 after it."""
    from ..local._packaged import existing_path

    target = _local_target(None, config.upstream or LOCAL_UPSTREAM, {})
    if target is not None:
        existing_path(target)


def check_address(config: ProxyConfig) -> None:
    """Bind the address once as uvicorn will (``SO_REUSEADDR``), so that a port in use or an address this host lacks is the
    command's one ``blackbox-sdk:`` line and status 1, not uvicorn's log lines and its exit status 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"can't listen on {config.host}:{config.port}: {exc.strerror or exc}") from None


def serve(
    config: ProxyConfig,
    *,
    authenticate: Authenticate | None = None,
    routes: Sequence[BaseRoute] = (),
    graceful_timeout_s: float | None = None,
    keys: KeyStore | None = None,
    tenants: TenantOptions | None = None,
) -> None:
    """Run the proxy until interrupted; on SIGINT/SIGTERM uvicorn stops accepting and finishes the streams in flight.
    `keys` and `tenants` let the admin read /metrics and the status page (docs/proxy-operations.md)."""
    import uvicorn

    from ._http import http_protocol

    check_exposure(config, authenticate)
    check_address(config)
    app = create_app(config, authenticate=authenticate, routes=routes, keys=keys, tenants=tenants)
    check_stores(config)
    uvicorn.run(  # uvicorn types the timeout int but waits with asyncio, which takes fractions of a second
        app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=graceful_timeout_s,  # type: ignore[arg-type]
        http=http_protocol(config),
    )


def _parser() -> argparse.ArgumentParser:
    """The `serve` command's flags (each overrides the configuration file)."""
    parser = argparse.ArgumentParser(prog="blackbox-sdk serve", description="An OpenAI-compatible proxy over the SDK's cache, budgets, log and reranking.")
    parser.add_argument("--config", help="a TOML file with the proxy's configuration (docs/proxy.md)")
    parser.add_argument("--upstream", help="an http(s) URL, hf:/path/model.gguf, or left out: the embedded model")
    parser.add_argument("--upstream-api-key-env", help="the environment variable holding the upstream's API key")
    parser.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the port to listen on (default 8000)")
    parser.add_argument("--cache", help="a cache folder or redis:// URL")
    parser.add_argument("--log", help="the call log: an SQLite file or a postgresql:// URL")
    parser.add_argument("--reranker", help="an adapter folder: rerank every sampled answer")
    parser.add_argument("--max-body-bytes", type=int, help="larger request bodies are refused with 413 (default 4 MiB)")
    parser.add_argument("--open-without-keys", action="store_true", default=None, help="listen beyond loopback with no tenant keys")
    parser.add_argument("--keys", help="the tenant key store (an SQLite file or redis:// URL): every request needs a key from it")
    parser.add_argument("--max-connections", type=int, help="client connections served at once; a request on one past them gets 503 (default 1024)")
    parser.add_argument("--header-timeout", dest="header_timeout_s", type=_seconds, help="seconds a request's headers may take to arrive (default 10)")
    parser.add_argument("--graceful-timeout", type=_seconds, help="seconds to let in-flight requests finish on shutdown (default: no limit)")
    return parser


def _seconds(text: str) -> float:
    """A number of seconds >= 0, for argparse: a usage error for "nan", "inf" or a negative one (uvicorn failed on them at shutdown)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


FLAGS = ("upstream", "upstream_api_key_env", "host", "port", "cache", "log", "reranker", "max_body_bytes", "open_without_keys", "keys", "header_timeout_s",
         "max_connections")


def cli_main(argv: Sequence[str]) -> int:
    """`blackbox-sdk serve ...`: load the configuration, apply the flags, serve until interrupted.
    Exit status 0, 1 for an SDK error (printed on stderr), 2 for a usage error."""
    options = _parser().parse_args(list(argv))
    try:
        config = load_config(options.config, **{name: getattr(options, name) for name in FLAGS})
        if config.keys is None:
            serve(config, graceful_timeout_s=options.graceful_timeout)
        else:
            _serve_with_keys(config, config.keys, options.graceful_timeout)
    except BlackBoxError as exc:
        return report_error(exc)
    return 0


def _serve_with_keys(config: ProxyConfig, keys: str, graceful_timeout_s: float | None) -> None:
    """Serve with the tenant keys of `keys` (`config.keys`): each request authenticated, the /admin/keys routes mounted."""
    from ._admin import admin_routes
    from ._key_stores import open_key_store
    from ._key_tenants import TenantDefaults, TenantOptions, key_authenticator

    store = open_key_store(keys)
    warn_without_live_keys(store, keys)
    tenants = TenantOptions(TenantDefaults.from_proxy(cache=config.cache, budget=config.budget, rate_limit=config.rate_limit))
    try:
        serve(
            config,
            authenticate=key_authenticator(store, tenants),
            routes=admin_routes(store, tenants),
            graceful_timeout_s=graceful_timeout_s,
            keys=store,
            tenants=tenants,
        )
    finally:
        tenants.close()
        close = getattr(store, "close", None)
        if close is not None:
            close()


def warn_without_live_keys(store: KeyStore, where: str) -> None:
    """A warning when the key store holds no live key (a new file, a mistyped path): every request is then refused with
    401 until one is created, which is allowed (keys come later, from the CLI or the admin routes) but easy to miss."""
    try:
        live = any(not record.revoked for record in store.list())
    except StoreUnavailableError:
        return  # out of reach now: each request's own lookup says so (503)
    if not live:
        logger.warning(
            "the key store %s holds no live key: every request is refused (401) until one is created "
            "(blackbox-sdk keys create --store ... --name ...)", where,
        )
