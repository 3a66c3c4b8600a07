"""Tenants: who a request speaks for, and the seam a key store plugs into.

`authenticate(presented_key)` is called with the bearer key a request presents (None when it
presents none) and returns the `Tenant` it speaks for, or None to refuse the request with 401. The
app takes it as `create_app(config, authenticate=...)`; without one, the proxy has no tenant keys
(every request is the proxy's own) and `serve` listens on loopback only unless told otherwise.
A tenant's calls run on a copy of the proxy's client with the tenant's SDK options on top and
`budget_key` set to its name, so budgets per key, rate limits per key and the log's key all see it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request

from ._errors import ProxyError


@dataclass(frozen=True)
class Tenant:
    """A virtual key's tenant: its name (the budget key and the log's key), the models it may use
    (empty: all) and SDK options for its calls (`budget`, `rate_limit`, `reranker`, `cache`, ...); `release`, when given, is
    called once the request is answered (a stream once it ends), so options dropped meanwhile close after their last request."""

    name: str
    models: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # keep the same objects for an unchanged key: they are compared
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)  # the request is done with `options`

    def check_model(self, model: Any) -> None:
        """404 (OpenAI's answer for a model the key can't use) when the tenant may not use `model`."""
        if self.models and model not in self.models:
            raise ProxyError(404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found", param="model")


Authenticate = Callable[[str | None], Tenant | None]  # presented key (None: none presented) -> its tenant, or None: 401


def presented_key(request: Request) -> str | None:
    """The bearer key of `Authorization: Bearer ...` (or `api-key:`, as Azure clients send it); None when absent."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("api-key") or None


def refuse_unknown_key(presented: str | None) -> ProxyError:
    """The 401 for a missing or unknown key (the key itself is never echoed)."""
    if presented is None:
        return ProxyError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.", code="missing_api_key")
    return ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")


class TenantClients:
    """A client per tenant: a copy of the proxy's client with the tenant's options, built once and
    rebuilt only when the tenant's options change. A reranker folder is loaded once for all the tenants
    naming it, and let go when none does any more (a key pointed at a new version), so its adapter leaves memory;
    the proxy's own reranker folder is the adapter the proxy loaded, shared, never a second copy of its deltas."""

    def __init__(self, base: Any) -> None:
        self._base = base
        self._copies: dict[str, tuple[Mapping[str, Any], Any]] = {}
        self._rerankers: dict[str, Any] = {}  # a reranker folder -> the Adapter loaded for the tenants naming it
        self._building: dict[str, threading.Lock] = {}  # one per tenant: its first requests at once build it once
        self._lock = threading.Lock()

    def built(self, tenant: Tenant | None) -> Any:
        """The client that serves `tenant` when it is built already (the proxy's own without one), else None."""
        if tenant is None:
            return self._base
        with self._lock:
            held = self._copies.get(tenant.name)
        return held[1] if held is not None and _same_options(held[0], tenant) else None

    def client(self, tenant: Tenant | None) -> Any:
        """The client that serves `tenant`, built now if it is not yet (which may load an adapter: call it off the event loop)."""
        built = self.built(tenant)
        if built is not None or tenant is None:
            return built
        with self._lock:
            building = self._building.setdefault(tenant.name, threading.Lock())
        with building:  # a second request meanwhile waits for this build (a reranker loaded once), not a build of its own
            built = self.built(tenant)
            if built is None:
                built = self._base.with_options(**{**self._within_proxy(self._loaded(tenant.options)), "budget_key": tenant.name})
                with self._lock:
                    self._copies[tenant.name] = (tenant.options, built)
                    self._let_go()
        return built

    def drop(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        """Forget the copy serving tenant `name` (its key revoked; only when built on `options`, if given), and a
        reranker no other tenant names any more."""
        with self._lock:
            held = self._copies.get(name)
            if held is not None and (options is None or held[0] is options):
                del self._copies[name]
                self._let_go()

    def _let_go(self) -> None:
        """Let go of the reranker folders no tenant names now (under the lock): the calls holding one let it go."""
        named = {options.get("reranker") for options, _ in self._copies.values()}
        for folder in set(self._rerankers) - named:
            del self._rerankers[folder]

    def _within_proxy(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The options with the tenant's rate limits held within the proxy's own (`RateLimits.inside`): a key's limits
        narrow the proxy's, never drop one, and its calls count in a proxy-wide window too."""
        own, proxys = options.get("rate_limit"), self._base.options.rate_limit
        if own is None or proxys is None:
            return options
        return {**options, "rate_limit": own.inside(proxys)}

    def _loaded(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The options with a reranker folder given as the Adapter loaded for it (loaded now if no tenant has it yet)."""
        folder = options.get("reranker")
        if not isinstance(folder, str) or self._base.holds_reranker(folder):
            return options  # the proxy's own reranker folder: the copy takes the adapter the proxy loaded, not one of its own
        with self._lock:
            adapter = self._rerankers.get(folder)
        if adapter is None:
            from ..adapter import Adapter

            loaded = Adapter.load(Path(folder).expanduser())  # weights from safetensors, never pickle
            with self._lock:
                adapter = self._rerankers.setdefault(folder, loaded)
        return {**options, "reranker": adapter}


def _same_options(built: Mapping[str, Any], tenant: Tenant) -> bool:
    """Whether a copy built on `built` serves `tenant`: the very same options where a store of held options gave them
    (`release`: a key re-created with equal limits gets its new, open stores, never the closed ones), else equal ones."""
    return built is tenant.options if tenant.release is not None else built == tenant.options
