"""Hard cost budgets: reserve a call's worst case before sending it, settle the real cost after.

    reservation = budget.reserve(model=..., prompt_tokens=..., max_output_tokens=..., n=..., key=...)
    # send with n=reservation.n and max_tokens=reservation.max_output_tokens: the cap is then hard
    cost_usd = budget.settle(reservation, prompt_tokens=..., completion_tokens=..., cached_tokens=...)
    budget.release(reservation)   # instead of settle, when the call failed

Every cap that applies (total, per call, per UTC day, per key, per model) is checked against
settled spend plus outstanding reservations in one atomic ledger operation, so threads, asyncio
tasks, processes and hosts sharing a ledger (an SQLite file, or Redis) never overspend together.
The Budget decides which caps apply and the worst case; the arithmetic of admitting a call
(shrinking it, the refusal) is in ``_policy``; the ledger behind it is a
:class:`~blackbox_sdk.budget.LedgerStore`.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
)

from .._exceptions import ConfigError, PriceMissingError, ReservationNotHeldError, StoreUnavailableError
from .._logging import logger
from .._process import random_hex
from .._redact import redact_text
from .._redis_url import redact_url
from .._text import checked_text
from ._calibration import Calibration, open_calibration
from ._caps import MAX_CAP_USD, Cap, Scope, nano_to_usd, usd_text, usd_to_nano
from ._keeper import KEEPER
from ._journal import ledger_id
from ._open import open_ledger
from ._owed import adopt_owed, owe_settle, release_or_owe, released_if_unanswered
from ._policy import (
    FREE,
    Fit,
    Policy,
    Request,
    Reservation,
    as_charged,
    charged_prompt_tokens,
    charged_usage,
    checked_count,
    checked_usd,
    priced_for,
    checked_model,
    less_charged,
    spent_scope,
    utc_day,
)
from ._prices import (
    ModelPrice,
    PriceTable,
    default_prices,
    load_price_file,
    snapshot_base,
)
from ._redis_ledger import DEFAULT_PREFIX
from ._report import BudgetReport, read_report
from ._store import Hold, LedgerStore, SettledSpend
from ._tokens import TokenCount

DEFAULT_LEASE_S = 300.0
MAX_LEASE_S = 1e9  # about 32 years: any longer is never, and a Redis lease in milliseconds stays exact

Usd = Annotated[float, Field(gt=0, le=MAX_CAP_USD, allow_inf_nan=False)]  # a cap, in nano-dollars an int64 in every ledger


class Budget(BaseModel):
    """Hard spending caps in USD, checked before each call against a ledger shared by processes.

    Caps are optional (at most about $9.2 billion, an int64 of nano-dollars) and all apply at
    once: `total_usd` (the ledger's lifetime), `per_call_usd`, `per_day_usd` (UTC day),
    `per_key_usd` (each user/tenant id, calls without one share a bucket) and `per_model_usd` (a
    name covers its dated snapshots). `ledger` is an SQLite file shared by every process on a
    host, or a `redis://host:port/db` (`rediss://`) URL shared by hosts (keys under
    `ledger_prefix`); None gives this Budget a private ledger in a temp folder. A hold is renewed
    while its process runs and holds it; `lease_s` is how long it outlives a process that died or froze.
    `default_max_output_tokens` is the worst case assumed when a call gives no max_tokens (and is
    then sent as its max_tokens). Inexact (estimated) prompt counts are inflated by
    `estimate_margin`. Every bad argument (infinite and NaN too) raises ConfigError naming it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_usd: Usd | None = None
    per_call_usd: Usd | None = None
    per_day_usd: Usd | None = None
    per_key_usd: Usd | None = None
    per_model_usd: dict[str, Usd] = Field(default_factory=dict)
    prices: dict[str, ModelPrice] | None = None  # {"model": {"input": ..., "output": ...}} per million tokens
    prices_file: Path | None = None
    policy: Literal["raise", "shrink"] = "raise"
    ledger: str | Path | None = None
    key: Annotated[str, Field(min_length=1)] | None = None
    default_max_output_tokens: PositiveInt = 4096
    min_output_tokens: PositiveInt = 16  # the shrink policy's floor for max_output_tokens
    estimate_margin: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.25  # +25% on prompt counts that are estimates
    lease_s: Annotated[float, Field(gt=0, le=MAX_LEASE_S, allow_inf_nan=False)] = DEFAULT_LEASE_S  # how long a hold outlives its process: renewed while it runs
    ledger_prefix: Annotated[str, Field(min_length=1)] = DEFAULT_PREFIX  # Redis keys, one prefix per tenant/app

    _ledger: LedgerStore = PrivateAttr()
    _calibration: Calibration = PrivateAttr()
    _ledger_path: Path | None = PrivateAttr()
    _journal_ledger: str | None = PrivateAttr()
    _prices: PriceTable = PrivateAttr()
    _overrides: PriceTable = PrivateAttr()
    _warned: set[str] = PrivateAttr(default_factory=set)

    def __init__(self, /, **options: Any) -> None:
        """Validate the options; ConfigError (naming the field) for any bad one, a bad prices file or ledger."""
        try:
            super().__init__(**options)
        except ValidationError as error:
            raise _config_error(error) from None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields shown by repr(), with a Redis ledger URL's password hidden."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "ledger" and isinstance(value, str) else value

    def model_post_init(self, context: Any, /) -> None:
        """Load the price table with overrides and open (or create) the ledger."""
        overrides = {**(load_price_file(self.prices_file) if self.prices_file else {}), **(self.prices or {})}
        origin = ", ".join(filter(None, [str(self.prices_file or ""), "Budget(prices=...)" if self.prices else ""]))
        self._overrides = PriceTable(source=origin or "none", models=overrides)
        self._prices = default_prices().with_overrides(overrides, origin)
        self._ledger, self._ledger_path = open_ledger(self, self.ledger, self.ledger_prefix)
        self._calibration = open_calibration(self._ledger)
        self._journal_ledger = ledger_id(self.ledger, self._ledger_path, self.ledger_prefix)
        adopt_owed(self._ledger, self._journal_ledger)  # what dead processes of this host still owed this ledger

    @property
    def calibration(self) -> Calibration:
        """What each endpoint adds to the prompts the SDK counts, learnt from answers and shared like the ledger."""
        return self._calibration

    @property
    def price_table(self) -> PriceTable:
        """The prices in use: the built-in table with this budget's overrides applied."""
        return self._prices

    def price_for(self, model: str, *, local: bool = False) -> ModelPrice | None:
        """The price of `model`; a local model costs 0 unless this budget sets its price."""
        if local:
            return self._overrides.lookup(model) or FREE
        return self._prices.lookup(model)

    def reserve(
        self, *, model: str, prompt_tokens: int | TokenCount, max_output_tokens: int | None = None, n: int = 1,
        key: str | None = None, local: bool = False, call_id: str | None = None, prompt_per_choice: bool = False,
        shrink: bool = True, service_tier: str | None = None, audio: bool = False, call_spent_usd: float = 0.0,
    ) -> Reservation:
        """Atomically check every cap and hold the call's worst case; raise BudgetExceededError if it can't fit.

        `max_output_tokens=None` assumes `default_max_output_tokens`; pass 0 for embeddings. `key`
        defaults to the budget's key. `prompt_per_choice` charges the prompt once per choice (servers
        that ignore `n`). `shrink=False` refuses rather than shrinks under `policy="shrink"` (choices
        that can't be dropped: several prompts, `best_of`). `service_tier` prices the call at that tier and
        `audio` (audio in or out) at the dearer of the text and audio rates, each refused under a cap when the
        price has no such rates. `call_spent_usd` (what the call holds or was charged already: earlier rounds, a lost
        answer) counts under `per_call_usd`. Send the returned `n` and `max_output_tokens`.
        """
        key = self.key_for(key)
        output = self.default_max_output_tokens if max_output_tokens is None else max_output_tokens
        day = utc_day()
        caps = self._caps(checked_model(model), key, day)
        price = self._price_or_raise(model, local, caps)
        if price is not None and price is not FREE:  # a local model nobody priced costs 0 at any tier
            price = priced_for(model, price, service_tier, audio, caps)
        request = Request(
            model=model,
            price=(price or FREE).ceiling() if audio else (price or FREE),
            prompt=charged_prompt_tokens(prompt_tokens, self.estimate_margin),
            n=checked_count("n", n, 1),
            max_output=checked_count("max_output_tokens", output, 0),
            prompt_per_choice=prompt_per_choice,
        )
        worst = request.worst_nano(request.n, request.max_output)
        hold = Hold(random_hex(16), checked_text(call_id, "call_id") if call_id else random_hex(16), model, key, day, worst, self.lease_s)
        with released_if_unanswered(self._ledger, hold):
            fit = self._hold(request, hold, caps, shrink, usd_to_nano(checked_usd("call_spent_usd", call_spent_usd), round_up=True))
        return KEEPER.kept(Reservation(
            id=hold.reservation_id,
            call_id=hold.call_id,
            model=model,
            key=key,
            day=day,
            n=fit.n,
            max_output_tokens=fit.max_output_tokens,
            prompt_tokens=request.prompt,
            worst_case_usd=nano_to_usd(fit.usd_nano),
            shrunk=(fit.n, fit.max_output_tokens) != (request.n, request.max_output),
            price=price,
            leased_until=time.monotonic() + self.lease_s,
        ), functools.partial(self._ledger.renew, hold.reservation_id, self.lease_s), self.lease_s)

    def _hold(self, request: Request, hold: Hold, caps: list[Cap], shrink: bool, already_nano: int) -> Fit:
        """Hold the call's worst case; if a cap refuses, shrink it (when allowed) and try once more, else refuse."""
        policy = Policy(shrink=shrink and self.policy == "shrink", min_output_tokens=self.min_output_tokens)
        checked = less_charged(caps, already_nano)  # the per-call cap bounds the whole call, not each hold
        refused = self._ledger.reserve(hold, checked)
        if refused is None:
            return Fit(request.n, request.max_output, hold.usd_nano)
        fit = policy.admit(request, as_charged(refused, caps, already_nano))  # the refusal, or the largest call that fits
        refused = self._ledger.reserve(replace(hold, usd_nano=fit.usd_nano), checked)
        if refused is None:
            return fit
        raise policy.refusal(request, min(as_charged(refused, caps, already_nano), key=lambda usage: usage.headroom_nano))

    def settle(
        self, reservation: Reservation, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
        log_id: str | None = None, audio_tokens: tuple[int, int] = (0, 0),
    ) -> float:
        """Record the call's real cost from its usage, release the rest of its reservation, return the cost in USD.

        `log_id` names the call log that will record the call (its `log_id`; NO_LOG when none will), so
        that `repair_log` gives a call lost between charge and record back to its own log only; None
        (not said) leaves the spend to whichever log is repaired from this ledger. Usage that can't be
        real is charged at the worst case (`charged_usage`), so that the hold is settled all the same.
        """
        usd_nano, prompt, completion, cached = charged_usage(reservation, prompt_tokens, completion_tokens, cached_tokens, audio_tokens)
        reserved = usd_to_nano(reservation.worst_case_usd, round_up=True)
        hold = Hold(reservation.id, reservation.call_id, reservation.model, reservation.key, reservation.day, reserved, self.lease_s)
        leased_until = KEEPER.drop(reservation)  # renewed no more: a settle that fails leaves the hold to lapse at its lease
        charged = self._ledger.settle(
            reservation.id, usd_nano=usd_nano, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
            hold=hold, log_id=log_id,
        )
        if not charged:
            raise ReservationNotHeldError(f"reservation {reservation.id} is not outstanding: it was already settled (charged once)")
        if time.monotonic() > leased_until:
            logger.warning(
                "call %s was settled after its %.0f s lease lapsed unrenewed (the ledger was out of reach, or this "
                "process stalled), so its hold had stopped counting meanwhile", reservation.call_id, self.lease_s,
            )
        if usd_nano > reserved:
            logger.warning(
                "call %s cost %s, more than its reservation of %s: it used %d prompt and %d completion tokens, "
                "%d prompt and %d output tokens for each of %d choice(s) were held",
                reservation.call_id, usd_text(nano_to_usd(usd_nano)), usd_text(reservation.worst_case_usd), prompt, completion,
                reservation.prompt_tokens, reservation.max_output_tokens, reservation.n,
            )
        return nano_to_usd(usd_nano)

    def release(self, reservation: Reservation) -> None:
        """Give a failed call's reservation back (owed, with a warning, while the ledger is out of reach); twice does nothing."""
        KEEPER.drop(reservation)
        release_or_owe(self._ledger, reservation.id, reservation.call_id, self.lease_s)

    def cost(
        self, model: str, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, local: bool = False
    ) -> float | None:
        """USD a call with this usage costs at this budget's prices; None when the model is unpriced."""
        price = self.price_for(model, local=local)
        return None if price is None else price.cost_usd(prompt_tokens, completion_tokens, cached_tokens)

    def owe(self, reservation: Reservation, counts: tuple[object, object, object, tuple[object, object]], settle: Callable[[], object], error: StoreUnavailableError, *, log_id: str | None) -> float:
        """Keep a paid call's charge (its prompt, completion, cached and audio counts) whose settle failed until the ledger takes it; its USD."""
        return owe_settle(reservation, counts, settle, error, ledger=self._journal_ledger, store=self._ledger, lease_s=self.lease_s, log_id=log_id)

    @property
    def ledger_path(self) -> Path | None:
        """The SQLite file holding this budget's reservations and spends; None for a Redis ledger."""
        return self._ledger_path

    def spent(self, *, day: str | None = None, key: str | None = None, model: str | None = None) -> float:
        """Settled USD in the whole ledger, or for one UTC day, one key, or one model (with its snapshots)."""
        scope, value = spent_scope(day, key, model)
        return nano_to_usd(self._ledger.spent_nano(Cap(scope, 0, value)))

    def settled_since(self, since: float) -> list[SettledSpend]:
        """The calls settled at or after `since` (epoch seconds), oldest first: what a call log is repaired from."""
        if isinstance(since, bool) or not isinstance(since, (int, float)) or not abs(since) <= sys.float_info.max:
            raise ConfigError(f"settled_since() takes a time in seconds since the epoch, got {since!r:.80}")
        return self._ledger.settled_since(float(since))

    def report(self) -> BudgetReport:
        """Totals by day, key and model across every process sharing the ledger, and each cap's headroom."""
        caps = [cap for cap in self._caps("", self.key, utc_day()) if cap.scope != "per_call"]
        caps += [Cap("per_model", usd_to_nano(limit, round_up=False), name) for name, limit in self.per_model_usd.items()]
        return read_report(self._ledger.snapshot(caps))  # one consistent snapshot of every figure

    def key_for(self, key: str | None) -> str | None:
        """The key a call is charged to (its rate window and log record too): its own, else this budget's; ConfigError if bad."""
        key = self.key if key is None else key
        return None if key is None else checked_text(key, "key")

    def _caps(self, model: str, key: str | None, day: str) -> list[Cap]:
        """Every cap that applies to a call of `model` for `key` on `day`."""
        scoped: list[tuple[Scope, float | None, str | None]] = [
            ("total", self.total_usd, None),
            ("per_call", self.per_call_usd, None),
            ("per_day", self.per_day_usd, day),
            ("per_key", self.per_key_usd, key),
        ]
        scoped += [
            ("per_model", limit, name) for name, limit in self.per_model_usd.items() if name in (model, snapshot_base(model))
        ]
        return [Cap(scope, usd_to_nano(limit, round_up=False), value) for scope, limit, value in scoped if limit is not None]

    def _price_or_raise(self, model: str, local: bool, caps: list[Cap]) -> ModelPrice | None:
        """The call's price; PriceMissingError when it has none and a cap applies."""
        price = self.price_for(model, local=local)
        if price is not None or not caps:
            if price is None and model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model %r and no cap applies: its calls are recorded at cost 0", model)
            return price
        raise _price_missing(model, caps)

    def close(self) -> None:
        """Close the ledger's connections (an SQLite file's, a Redis pool): the next use opens new ones."""
        self._ledger.close()

    async def aclose(self) -> None:
        """``close`` in a worker thread, off the event loop: a ledger's connection may wait on its file or server."""
        await asyncio.to_thread(self.close)


def _price_missing(model: str, caps: list[Cap]) -> PriceMissingError:
    """The error for a call of a model with no price while a cap applies: its cost can't be bounded."""
    scopes = ", ".join(sorted({cap.scope for cap in caps}))
    return PriceMissingError(
        f"No price for model {model!r}, and a hard budget ({scopes}) applies, so its cost can't be bounded. "
        f"Add its price in USD per million tokens: Budget(prices={{{model!r}: {{'input': 1.0, 'output': 2.0}}}}) "
        f"('cached_input' is optional), or put the same mapping in a JSON file and pass Budget(prices_file=...). "
        f"A model served locally costs 0 when the call is marked local."
    )


def _config_error(error: ValidationError) -> ConfigError:
    """A Budget's validation error as a ConfigError naming each bad field (a ConfigError raised inside passes as is)."""
    problems = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):
            return cause
        field = ".".join(str(part) for part in item["loc"]) or "Budget"
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: not a Budget option (options: {', '.join(Budget.model_fields)})")
        else:
            shown = redact_text(repr(item["input"]))
            problems.append(f"{field}: {item['msg']} (got {shown[:80]})")
    return ConfigError("invalid Budget: " + "; ".join(problems))
