"""What a virtual key means for a call: the SDK options of its tenant, and the authenticator the app takes.

    tenants = TenantOptions(TenantDefaults.from_proxy(cache=config.cache, budget=config.budget, rate_limit=config.rate_limit))
    app = create_app(config, authenticate=key_authenticator(store, tenants))

A tenant's spend is charged to a ledger of its own, named after it: a file ``<name>.sqlite3`` in
the tenants' ledger folder, or the prefix ``<ledger_prefix>tenant:<name>:`` on the Redis ledger.
That is how both of a key's caps hold with the Budget that exists: ``total_usd`` is the tenant's
lifetime and ``per_day_usd`` its UTC day. A key revoked and created again under the same name
keeps the tenant's spend. Its rate limits are a window per key (``per="key"``, the key being the
tenant's name) in the proxy's rate-limit store, so replicas sharing a Redis store share it, under the
proxy's own policy (``"wait"`` waits for room there too, at most its ``max_wait_s``). A
limit the record leaves out (None) leaves the proxy's own option for that call in place.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .._exceptions import ConfigError, StoreUnavailableError
from ..budget import Budget
from ..cache import Cache
from ..limits import RateLimits
from ._keys import KeyRecord, KeyStore, KeyStoreBase
from ._tenants import Tenant

DEFAULT_LEDGER_PREFIX = "blackbox:ledger:"
# The proxy's [budget] fields a tenant's Budget keeps: prices and policy, not the proxy's own caps or ledger.
INHERITED_BUDGET_FIELDS = (
    "per_call_usd", "prices", "prices_file", "policy", "default_max_output_tokens", "min_output_tokens", "estimate_margin", "lease_s",
)
# The proxy's [rate_limit] fields a tenant's RateLimits keeps: how a call waits and is capped, not the proxy's own limits.
INHERITED_RATE_FIELDS = ("policy", "max_wait_s", "default_max_output_tokens", "clock", "sleep", "asleep")
SWEEP_EVERY_S = 60.0  # how often, at most, the authenticator lists the key store for keys revoked elsewhere


@dataclass(frozen=True)
class TenantDefaults:
    """Where tenants' budgets, rate windows and caches live, and the Budget options they all take."""

    ledger: str | Path | None = None  # a folder of per-tenant SQLite ledgers, or a redis:// URL; None: private to this process
    ledger_prefix: str = DEFAULT_LEDGER_PREFIX  # on Redis, each tenant's keys sit under <prefix>tenant:<name>:
    budget_options: Mapping[str, Any] = field(default_factory=dict)  # Budget fields from INHERITED_BUDGET_FIELDS
    rate_store: str | Path | None = None  # RateLimits' store: None (this process), an SQLite file or a redis:// URL
    cache: str | Path | None = None  # the proxy's cache folder or redis:// URL; None: tenants get no cache of their own
    rate_options: Mapping[str, Any] = field(default_factory=dict)  # RateLimits fields from INHERITED_RATE_FIELDS

    @classmethod
    def from_proxy(
        cls, *, cache: str | Path | None = None, budget: Mapping[str, Any] | None = None, rate_limit: Mapping[str, Any] | None = None
    ) -> TenantDefaults:
        """Defaults from the proxy's configuration tables: its cache, its [budget] and its [rate_limit] (its store,
        and its policy: a key's window waits as the proxy's does).

        The tenants' ledgers sit beside the proxy's: the same Redis URL, or a folder ``<ledger stem>-tenants``
        next to its SQLite file.
        """
        budget, rate_limit = dict(budget or {}), dict(rate_limit or {})
        ledger = budget.get("ledger")
        if ledger is not None and not (isinstance(ledger, str) and "://" in ledger):
            path = Path(ledger).expanduser()
            ledger = path.with_name(f"{path.stem}-tenants")
        return cls(
            ledger=ledger,
            ledger_prefix=budget.get("ledger_prefix", DEFAULT_LEDGER_PREFIX),
            budget_options={name: budget[name] for name in INHERITED_BUDGET_FIELDS if name in budget},
            rate_store=rate_limit.get("store"),
            rate_options={name: rate_limit[name] for name in INHERITED_RATE_FIELDS if name in rate_limit},
            cache=cache,
        )

    def tenant_ledger(self, name: str) -> tuple[str | Path | None, str]:
        """The ledger and Redis prefix of one tenant's budget."""
        prefix = f"{self.ledger_prefix}tenant:{name}:"
        if self.ledger is None or (isinstance(self.ledger, str) and "://" in self.ledger):
            return self.ledger, prefix
        return Path(self.ledger).expanduser() / f"{name}.sqlite3", prefix


def model_allowed(record: KeyRecord, model: object) -> bool:
    """Whether the key may call ``model``: any model when its list is empty, else one of its names exactly."""
    return not record.models or (isinstance(model, str) and model in record.models)


def tenant_budget(record: KeyRecord, defaults: TenantDefaults) -> Budget | None:
    """The key's caps as a Budget on the tenant's own ledger; None when the key sets no cap."""
    if record.budget_usd is None and record.per_day_usd is None:
        return None
    ledger, prefix = defaults.tenant_ledger(record.name)
    unknown = set(defaults.budget_options) - set(INHERITED_BUDGET_FIELDS)
    if unknown:
        raise ConfigError(f"a tenant's budget can't take {sorted(unknown)}: its caps come from its key")
    return Budget(
        **defaults.budget_options,
        total_usd=record.budget_usd,
        per_day_usd=record.per_day_usd,
        key=record.name,
        ledger=ledger,
        ledger_prefix=prefix,
    )


def tenant_rate_limit(record: KeyRecord, defaults: TenantDefaults) -> RateLimits:
    """The key's rpm and tpm as a window per key in the proxy's store, waiting (or refusing) as the proxy's own does."""
    unknown = set(defaults.rate_options) - set(INHERITED_RATE_FIELDS)
    if unknown:
        raise ConfigError(f"a tenant's rate limit can't take {sorted(unknown)}: its limits come from its key")
    return RateLimits(**defaults.rate_options, rpm=record.rpm, tpm=record.tpm, per="key", store=defaults.rate_store)


def tenant_options(record: KeyRecord, defaults: TenantDefaults | None = None) -> dict[str, Any]:
    """The SDK options of the key's calls (new objects each time: keep them per record, as TenantOptions does).

    Always ``budget_key`` (the tenant's name: the ledger's key, the rate window's key, the log's key);
    ``budget``, ``rate_limit``, ``reranker`` and ``cache`` only where the key or the defaults set them.
    """
    defaults = defaults or TenantDefaults()
    options: dict[str, Any] = {"budget_key": record.name}
    budget = tenant_budget(record, defaults)
    if budget is not None:
        options["budget"] = budget
    if record.rpm is not None or record.tpm is not None:
        options["rate_limit"] = tenant_rate_limit(record, defaults)
    if record.reranker is not None:
        options["reranker"] = record.reranker
    if defaults.cache is not None:
        options["cache"] = Cache(defaults.cache, namespace=record.cache_namespace)
    return options


class TenantOptions:
    """Each record's options, built once: a rate window in this process and a ledger stay open across calls,
    and the app's per-tenant client copy is reused while a key is unchanged. A record replaced under its name (the
    key re-created, its limits changed) or forgotten (revoked) has its options dropped, and what they opened closed
    once the last request holding them (`hold`) is released."""

    def __init__(self, defaults: TenantDefaults | None = None) -> None:
        self.defaults = defaults or TenantDefaults()
        self._built: dict[KeyRecord, Mapping[str, Any]] = {}
        self._holds: dict[int, int] = {}  # id of built options -> requests holding them
        self._dropped: dict[int, Mapping[str, Any]] = {}  # options dropped while held: closed by their last release
        self._lock = threading.Lock()
        self._on_drop: list[Callable[[str, Mapping[str, Any]], None]] = []  # told of each options dropped (the proxy's client copies)

    def options(self, record: KeyRecord) -> Mapping[str, Any]:
        """The options of ``record``'s calls (the same object every time for the same record)."""
        options, release = self.hold(record)
        release()
        return options

    def hold(self, record: KeyRecord) -> tuple[Mapping[str, Any], Callable[[], None]]:
        """``record``'s options, held for a request until the function returned is called (once: more calls do nothing);
        building them drops the options of an older record of the same name."""
        with self._lock:
            built, stale = self._built.get(record), []
            if built is None:
                built = MappingProxyType(tenant_options(record, self.defaults))  # a key that can't be built drops nothing
                stale = [self._drop(old) for old in list(self._built) if old.name == record.name]
                self._built[record] = built
            self._holds[id(built)] = self._holds.get(id(built), 0) + 1
        _close_options(stale)
        once = threading.Lock()

        def release() -> None:
            """The request is done with these options: dropped ones close with their last request."""
            if once.acquire(blocking=False):  # taken for good by the first call: a second one does nothing
                self._release(built)

        return built, release

    def forget(self, name: str) -> None:
        """Drop the options of the tenant ``name`` (its key revoked): closed now, or when its last request ends."""
        self._forget(lambda record: record.name == name)

    def forget_revoked(self, revoked: KeyRecord) -> None:
        """Drop the options of a key found revoked (by the CLI or another replica) when it was presented, and only that
        key's: a live key since created under its name keeps its own."""
        self._forget(lambda record: record.key_id == revoked.key_id)

    def forget_revoked_among(self, records: Iterable[KeyRecord]) -> None:
        """Drop the options of every key ``records`` (the store's list) shows revoked, presented again or not."""
        revoked = {record.key_id for record in records if record.revoked}
        if revoked:
            self._forget(lambda record: record.key_id in revoked)

    @property
    def built(self) -> bool:
        """Whether any key's options are built (open) now."""
        with self._lock:
            return bool(self._built)

    def on_drop(self, callback: Callable[[str, Mapping[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(name, options)`` for each tenant's options dropped from now on (the proxy lets go of its client
        copy), until the function returned is called."""
        self._on_drop.append(callback)
        return lambda: self._on_drop.remove(callback) if callback in self._on_drop else None

    def _forget(self, chosen: Callable[[KeyRecord], bool]) -> None:
        """Drop the options of the records ``chosen``; tell the callbacks, then close them (or leave that to their last request)."""
        with self._lock:
            records = [record for record in self._built if chosen(record)]
            dropped = [(record.name, self._built[record]) for record in records]
            stale = [self._drop(record) for record in records]
        for name, options in dropped:
            for callback in self._on_drop:
                callback(name, options)
        _close_options(stale)

    def _drop(self, record: KeyRecord) -> Mapping[str, Any] | None:
        """Take ``record``'s options out of use (under the lock): them to close now, or None when a request holds them."""
        options = self._built.pop(record)
        if self._holds.get(id(options)):
            self._dropped[id(options)] = options
            return None
        return options

    def _release(self, options: Mapping[str, Any]) -> None:
        """One request less holds ``options``; the last one closes them if they were dropped meanwhile."""
        with self._lock:
            left = self._holds[id(options)] - 1
            if left:
                self._holds[id(options)] = left
                return
            del self._holds[id(options)]
            dropped = self._dropped.pop(id(options), None)
        _close_options([dropped])

    def close(self) -> None:
        """Close the budgets' ledgers, caches and rate windows opened for tenants."""
        with self._lock:
            built = [*self._built.values(), *self._dropped.values()]
            self._built, self._dropped = {}, {}
        _close_options(built)


def _close_options(built: Sequence[Mapping[str, Any] | None]) -> None:
    """Close the stores a tenant's options opened: its budget's ledger, its cache and its rate window."""
    for options in built:
        if options is not None and "budget" in options:
            options["budget"].close()
        for name in ("cache", "rate_limit"):
            if options is not None and name in options:
                options[name].close()


class RevokedSweep:
    """Now and then, at most once per ``every_s`` by ``clock``, one listing of the key store, and the options built for
    the keys it shows revoked elsewhere (the CLI, another replica) let go, though they are never presented again."""

    def __init__(self, store: KeyStore, tenants: TenantOptions, every_s: float, clock: Callable[[], float]) -> None:
        if not every_s >= 0:
            raise ConfigError(f"sweep_every_s must be 0 or more seconds, got {every_s!r}")
        self._store, self._tenants, self._every_s, self._clock = store, tenants, every_s, clock
        self._due = clock() + every_s
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """Sweep once the interval has passed, if anything is built; a store out of reach is tried again next interval."""
        with self._lock:
            now = self._clock()
            if now < self._due:
                return
            self._due = now + self._every_s
        if self._tenants.built:
            self._sweep()

    def _sweep(self) -> None:
        """List the store once; let go of the options of the keys it shows revoked."""
        with contextlib.suppress(StoreUnavailableError):  # the request itself is judged by its own lookup
            self._tenants.forget_revoked_among(self._store.list())


def key_authenticator(
    store: KeyStore, tenants: TenantOptions, *, sweep_every_s: float = SWEEP_EVERY_S, clock: Callable[[], float] = time.monotonic
) -> Callable[[str | None], Tenant | None]:
    """The app's ``authenticate``: a presented key -> its Tenant, or None (401). A store that is down raises
    StoreUnavailableError, which the app answers with 503: a request is never let through unauthenticated. At most
    once per ``sweep_every_s`` (by ``clock``) a request also lets go of what was built for keys revoked elsewhere."""
    sweep = RevokedSweep(store, tenants, sweep_every_s, clock)

    def authenticate(presented: str | None) -> Tenant | None:
        """The live key's tenant, with its models and options."""
        sweep()
        record = store.match(presented) if isinstance(store, KeyStoreBase) else store.lookup(presented)
        if record is None:
            return None
        if record.revoked:  # revoked elsewhere (the CLI, another replica): refused, and what was built for it let go
            tenants.forget_revoked(record)
            return None
        options, release = tenants.hold(record)
        return Tenant(name=record.name, models=record.models, options=options, release=release)

    return authenticate
