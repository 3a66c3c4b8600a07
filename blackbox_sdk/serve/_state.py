"""The proxy's running state: its configuration, the SDK client it serves with (built in the
background, so /healthz answers at once and /readyz says when the upstream client is ready), the
tenants' copies of that client, who a request speaks for, its metrics and the admin gate of the
operations pages (the key store and the tenants' options, for spend against budgets). Wrong tenant keys are
counted per client address apart from the admin's (`_attempts`): a user mistyping a key never locks out the
admin, nor the admin's typos a user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .._exceptions import BlackBoxError, ConfigError
from .._logging import logger
from .._redact import redact_text
from ._admin_gate import AdminGate
from ._attempts import FailedAttempts
from ._config import ProxyConfig
from ._errors import TRANSIENT_RETRY_AFTER_S, ProxyError, without_addresses
from ._key_tenants import TenantOptions
from ._keys import KeyStore
from ._metrics import ProxyMetrics
from ._tenants import (
    Authenticate,
    Tenant,
    TenantClients,
    presented_key,
    refuse_unknown_key,
)


class Proxy:
    """One proxy: configuration, the SDK's `AsyncOpenAI` once built, and the key check."""

    def __init__(
        self,
        config: ProxyConfig,
        options: dict[str, Any],
        authenticate: Authenticate | None,
        *,
        keys: KeyStore | None = None,
        tenants: TenantOptions | None = None,
    ) -> None:
        self.config = config
        self.authenticate = authenticate
        self.keys, self.tenants = keys, tenants
        self.metrics = ProxyMetrics()
        self.gate = AdminGate(keys, loopback=authenticate is None)
        # unknown tenant keys per client address, apart from the admin's, in this process: a tenant key holds 256 random bits,
        # so this bounds the lookups a sprayer costs, not a guess; a shared count would cost every /v1 request a store read
        self.key_attempts = FailedAttempts()
        self.failure: str | None = None
        self._options = options
        self._clients: TenantClients | None = None
        # a key's options dropped (its key found revoked): its client copy goes with them, until this proxy closes
        self._unwatch = tenants.on_drop(self._forget_copy) if tenants is not None else None

    @property
    def ready(self) -> bool:
        """Whether the upstream client is built."""
        return self._clients is not None

    async def start(self) -> None:
        """Build the SDK client (loading a local model can take a while: off the event loop)."""
        from .._client import AsyncOpenAI

        try:
            client = await run_in_threadpool(lambda: AsyncOpenAI(**self._options))
        except Exception as error:  # noqa: BLE001 - reported by /readyz and the log; the process keeps answering
            failure = redact_text(f"{type(error).__name__}: {error}")
            logger.error("proxy: the upstream client could not be built: %s", failure)
            self.failure = without_addresses(failure)  # what /readyz and a request's 503 show
            return
        self._clients = TenantClients(client)

    async def close(self) -> None:
        """Close the client and what it opened (its cache, and its call log once flushed), then the Budget and RateLimits
        built from the configuration (even when the client could not be built): an app embedding `create_app` under its own
        server keeps no connection open after its lifespan ends, even when one of them fails to close (a call log that can't
        write its last records): that error is raised once the rest are closed. A TenantOptions passed in stays its caller's."""
        clients, self._clients = self._clients, None
        if self._unwatch is not None:
            self._unwatch()
        budget, rate_limit = self._options.get("budget"), self._options.get("rate_limit")
        try:
            if clients is not None:
                await clients.client(None).close()
        finally:
            try:
                if budget is not None:
                    await budget.aclose()  # in a worker thread: a ledger's connection may wait on its file or server
            finally:
                if rate_limit is not None:
                    await run_in_threadpool(rate_limit.close)

    async def tenant(self, request: Request) -> Tenant | None:
        """Who the request speaks for (None without a key store); 401 for a missing or unknown key. A key presented
        takes an attempt of the client's address before it is hashed or looked up, refused with 429 when none is left
        (RateLimitExceededError); only an unknown key keeps it. A key's options that can't be built on its first request
        (its ledger's Redis refusing the password) are the operator's fault: 500."""
        if self.authenticate is None:
            return None
        presented = presented_key(request)
        async with self.key_attempts.guessing(request, presented) as guess:  # presenting no key guesses nothing: none taken
            try:
                tenant = await run_in_threadpool(self.authenticate, presented)
            except ConfigError as error:  # nothing of the request's: authenticate sees only its key
                raise _misconfigured(None, error) from error
            if tenant is None:
                guess.wrong()
                raise refuse_unknown_key(presented)
        request.state.release_tenant = tenant.release  # called once the request is answered (`_routes.guarded`)
        return tenant

    def forget(self, name: str) -> None:
        """Drop the client copy of tenant `name` (its key revoked) and the reranker only it named."""
        if self._clients is not None:
            self._clients.drop(name)

    def _forget_copy(self, name: str, options: Mapping[str, Any]) -> None:
        """Drop the client copy of tenant `name` built on `options` (dropped), and the reranker only it named."""
        if self._clients is not None:
            self._clients.drop(name, options)

    def _ready(self) -> TenantClients:
        """The clients; 503 while the upstream client is still being built."""
        if self._clients is None:
            if self.failure:  # building failed: only the operator's restart mends it, so a retry can't help
                raise ProxyError(503, self.failure, kind="server_error", code="not_ready", retry=False)
            raise ProxyError(503, "the proxy is starting: the upstream client is not ready yet", kind="server_error", code="not_ready",
                             retry_after=TRANSIENT_RETRY_AFTER_S)
        return self._clients

    def client_for(self, tenant: Tenant | None) -> Any:
        """The client serving this tenant (built now if it is not yet); 503 while the upstream client is being built."""
        return self._ready().client(tenant)

    async def tenant_client(self, tenant: Tenant | None) -> Any:
        """`client_for`, building a tenant's client (its reranker loads) in a worker thread, never on the event
        loop; a key whose options can't be applied (a missing adapter folder) is the proxy's fault: 500."""
        clients = self._ready()
        built = clients.built(tenant)
        if built is not None:
            return built
        try:
            return await run_in_threadpool(clients.client, tenant)
        except BlackBoxError as error:
            raise _misconfigured(tenant, error) from error


def _misconfigured(tenant: Tenant | None, error: BlackBoxError) -> ProxyError:
    """The 500 key_misconfigured for a key whose options can't be built or applied, logged; sent with x-should-retry:
    false, since only the operator can mend it (the message redacted, a Redis URL's password shown as ***)."""
    message = redact_text(f"{type(error).__name__}: {error}")
    logger.error("proxy: the options of key %r can't be applied: %s", tenant.name if tenant else None, message)
    return ProxyError(500, f"this key's options can't be applied: {without_addresses(message)}", kind="server_error", code="key_misconfigured", retry=False)
