"""The proxy's configuration: a TOML file and/or command-line flags, mapped onto the options of the
SDK's own `AsyncOpenAI` (the proxy adds no cache, budget or log of its own).

    upstream = "https://api.openai.com/v1"     # or "hf:/path/model.gguf"; left out: the embedded model
    upstream_api_key_env = "OPENAI_API_KEY"    # the variable holding the upstream key (never logged or sent to clients)
    cache = "proxy-cache"                      # a folder or a redis:// URL
    log = "proxy-calls.db"                     # an SQLite file or a postgresql:// URL
    reranker = "adapters/capitals"             # rerank_n = 4
    [budget]                                   # blackbox_sdk.Budget's fields: total_usd, per_day_usd, prices, ledger, ...
    [rate_limit]                               # blackbox_sdk.RateLimits' fields: rpm, tpm, per, ...
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError, ConfigError
from ..budget import Budget
from ..limits import RateLimits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli (the proxy extra installs it)
    import tomli as tomllib

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 1024  # open client connections served at once; past it a request is answered 503 (raise `ulimit -n` with it)
LOCAL_UPSTREAM = "hf:default"  # the embedded model, even when OPENAI_API_KEY is set
_OPTIONAL_TEXT = ("upstream_api_key_env", "cache", "log", "reranker", "keys")  # a path, a URL or a name, or None


@dataclass(frozen=True)
class ProxyConfig:
    """What `blackbox-sdk serve` runs: where it listens, the upstream, and the SDK's options for every call."""

    upstream: str | None = None  # an http(s) URL, "hf:/path.gguf", or None: the embedded model
    upstream_api_key_env: str | None = None  # None: OPENAI_API_KEY when set (an upstream that needs no key gets a placeholder)
    host: str = "127.0.0.1"
    port: int = 8000
    cache: str | None = None  # a cache folder or redis:// URL
    log: str | None = None  # the call log: an SQLite file or a postgresql:// URL (needed by /v1/feedback)
    budget: Mapping[str, Any] | None = None  # Budget(**budget)
    rate_limit: Mapping[str, Any] | None = None  # RateLimits(**rate_limit)
    reranker: str | None = None  # an adapter folder
    rerank_n: int | None = None
    max_retries: int = 2  # the SDK's retries towards the upstream
    timeout_s: float = 600.0  # one upstream request; past it the client gets 504
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies are refused with 413
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a body that has not arrived by then is refused with 408 (a client that stalls)
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # a request's headers not all in by then: 408, the connection closed (slowloris)
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # client connections served at once: a request on one past them gets 503, Retry-After: 1
    open_without_keys: bool = False  # serve beyond loopback with no tenant keys (anyone who reaches it spends)
    keys: str | None = None  # the tenant key store: an SQLite file or redis:// URL (`blackbox-sdk keys create`); admin key in BLACKBOX_ADMIN_KEY

    def __post_init__(self) -> None:
        """ConfigError naming a field of the wrong type or out of range, before anything listens or is built."""
        _check_int("port", self.port, 1, 65535)
        _check_int("max_body_bytes", self.max_body_bytes, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_int("max_connections", self.max_connections, 1)
        if self.rerank_n is not None:
            _check_int("rerank_n", self.rerank_n, 1)
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be an address to listen on, such as \"127.0.0.1\"; got {self.host!r}")
        for name in _OPTIONAL_TEXT:
            if not isinstance(getattr(self, name), (str, type(None))):
                raise ConfigError(f"{name} must be a string or left out, got {getattr(self, name)!r}")
        if not isinstance(self.open_without_keys, bool):  # "no" would be true: a proxy open to anyone who reaches it
            raise ConfigError(f"open_without_keys must be true or false, got {self.open_without_keys!r}")
        for name in ("timeout_s", "body_timeout_s", "header_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:  # nan too
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if self.upstream is not None and not str(self.upstream).startswith(("http://", "https://", "hf:")):
            raise ConfigError(f"upstream must be an http(s) URL, hf:/path/model.gguf or left out; got {self.upstream!r}")

    def with_flags(self, **flags: Any) -> ProxyConfig:
        """This configuration with the flags given on the command line (None: not given) on top."""
        return replace(self, **{name: value for name, value in flags.items() if value is not None})


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An integer from ``low`` to ``high`` (no bound when None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")


def load_config(path: str | Path | None = None, **flags: Any) -> ProxyConfig:
    """A ProxyConfig from a TOML file (optional) with command-line flags on top; ConfigError naming a bad or unknown key."""
    table: dict[str, Any] = {}
    if path is not None:
        try:
            table = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))  # TOML is UTF-8, whatever the locale
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"can't read the proxy configuration {path}: {error}") from None
    known = {spec.name for spec in fields(ProxyConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown proxy configuration keys {unknown}; expected some of {sorted(known)}")
    try:
        return ProxyConfig(**table).with_flags(**flags)
    except TypeError as error:
        raise ConfigError(f"bad proxy configuration: {error}") from None


def upstream_api_key(config: ProxyConfig) -> str | None:
    """The upstream's key from the environment (never logged); None for a local model."""
    if config.upstream is None or config.upstream.startswith("hf:"):
        return None
    if config.upstream_api_key_env is not None:
        key = os.environ.get(config.upstream_api_key_env)
        if not key:
            raise ConfigError(f"upstream_api_key_env names {config.upstream_api_key_env}, which is not set")
        return key
    return os.environ.get("OPENAI_API_KEY") or "no-key"  # an upstream on a private network may need none


def client_options(config: ProxyConfig) -> dict[str, Any]:
    """The keyword arguments of the SDK's `AsyncOpenAI` for this configuration (budgets and limits built, so bad ones fail now)."""
    options: dict[str, Any] = {
        "base_url": config.upstream or LOCAL_UPSTREAM,
        "api_key": upstream_api_key(config),
        "max_retries": config.max_retries,
        "timeout": float(config.timeout_s),
        "cache": config.cache,
        "log": config.log,
        "budget": _build(Budget, "budget", config.budget),
        "rate_limit": _build(RateLimits, "rate_limit", config.rate_limit),
        "reranker": config.reranker,
    }
    if config.rerank_n is not None:
        options["rerank_n"] = config.rerank_n
    return options


def _build(kind: type, name: str, table: Mapping[str, Any] | None) -> Any:
    """A Budget or RateLimits from its configuration table, or None."""
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(f"{name} must be a table of {kind.__name__}'s fields, got {table!r}")
    try:
        return kind(**table)
    except TypeError as error:
        raise ConfigError(f"bad [{name}]: {error}") from None


def check_reranker(folder: str) -> None:
    """Load the reranker folder as a call's first use does (`Adapter.load`, which `open_reranker` calls: config, weights
    and base encoder), so that one which can't load fails now: AdapterError "reranker: ...". On a base of its own
    (`shared=False`): nothing stays loaded after the check, however many keys are checked."""
    from ..adapter import Adapter

    try:
        Adapter.load(Path(folder).expanduser(), shared=False)
    except AdapterError as exc:
        raise AdapterError(f"reranker: {exc}") from exc
