"""Hard cost budgets: reserve a call's worst case before sending it, settle the real cost after.

    reservation = budget.reserve(model=..., prompt_tokens=..., max_output_tokens=..., n=..., key=...)
    # send with n=reservation.n and max_tokens=reservation.max_output_tokens: the cap is then hard
    cost_usd = budget.settle(reservation, prompt_tokens=..., completion_tokens=..., cached_tokens=...)
    budget.release(reservation)   # instead of settle, when the call failed

The worst case is the prompt at the input price plus n x max_output_tokens at the output price
(prompt tokens are billed once per request, whatever n). Every cap that applies (total, per call,
per UTC day, per key, per model) is checked against settled spend plus outstanding reservations
in one ledger transaction, so threads, asyncio tasks and processes sharing a ledger file never
overspend together. Under policy="shrink" a call that doesn't fit gets a lower n, then fewer
output tokens (down to `min_output_tokens`), before it is refused.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, PrivateAttr

from blackbox_sdk.errors import BudgetExceededError, ConfigError, PriceMissingError
from blackbox_sdk.ledger import Cap, CapUsage, Ledger, Scope, nano_to_usd, usd_to_nano
from blackbox_sdk.prices import ModelPrice, PriceTable, default_prices, load_price_file, snapshot_base
from blackbox_sdk.tokens import TokenCount

__all__ = ["Budget", "BudgetReport", "CapStatus", "Reservation"]

logger = logging.getLogger("blackbox_sdk")

FREE = ModelPrice(input=0.0, output=0.0)
LEDGER_FILE_NAME = "ledger.sqlite3"


@dataclass(frozen=True)
class Reservation:
    """An admitted call: what to send (n, max_output_tokens) and the worst case held for it."""

    id: str
    call_id: str
    model: str
    key: str | None
    day: str
    n: int
    max_output_tokens: int
    prompt_tokens: int
    worst_case_usd: float
    shrunk: bool
    price: ModelPrice | None  # None: unpriced and uncapped, recorded at cost 0


class CapStatus(BaseModel):
    """One cap's limit, what is settled and reserved under it, and what remains."""

    scope: str
    value: str | None
    limit_usd: float
    spent_usd: float
    reserved_usd: float
    remaining_usd: float


class BudgetReport(BaseModel):
    """Totals of the whole ledger (every process sharing it) and the state of this budget's caps."""

    spent_usd: float
    reserved_usd: float
    outstanding_reservations: int
    calls: int
    by_day: dict[str, float]
    by_key: dict[str, float]  # "" holds calls made without a key
    by_model: dict[str, float]
    caps: list[CapStatus]


@dataclass(frozen=True)
class _Request:
    """A call to admit: its model and price, prompt tokens to charge, and the n and output tokens asked for."""

    model: str
    price: ModelPrice
    prompt: int
    n: int
    max_output: int
    prompt_per_choice: bool = False  # each choice is its own request (a server that ignores n)

    def worst_nano(self, n: int, max_output: int) -> int:
        """The worst-case cost in nano-dollars with `n` choices of up to `max_output` tokens."""
        prompt = self.prompt * n if self.prompt_per_choice else self.prompt
        return usd_to_nano(self.price.cost_usd(prompt, n * max_output), round_up=True)


@dataclass(frozen=True)
class _Fit:
    """The n and output tokens chosen for a call and its worst-case cost in nano-dollars."""

    n: int
    max_output_tokens: int
    usd_nano: int


def _utc_day() -> str:
    """Today's date in UTC, the unit of per-day caps."""
    return datetime.now(timezone.utc).date().isoformat()


def _count(name: str, value: object, minimum: int) -> int:
    """`value` as a checked integer >= minimum, or a ConfigError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _remove_private_ledger(ledger: Ledger, folder: Path) -> None:
    """Close and delete a Budget's private temporary ledger."""
    ledger.close()
    shutil.rmtree(folder, ignore_errors=True)


class Budget(BaseModel):
    """Hard spending caps in USD, checked before each call against a ledger shared by processes.

    Caps are optional and all apply at once: `total_usd` (the ledger's lifetime), `per_call_usd`,
    `per_day_usd` (UTC day), `per_key_usd` (each user/tenant id, calls without one share a
    bucket) and `per_model_usd` (a name covers its dated snapshots). `ledger` is an SQLite file
    shared by every process using it; None gives this Budget a private ledger in a temp folder.
    `default_max_output_tokens` is the worst case assumed when a call gives no max_tokens (and is
    then sent as its max_tokens). Inexact (estimated) prompt counts are inflated by `estimate_margin`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_usd: PositiveFloat | None = None
    per_call_usd: PositiveFloat | None = None
    per_day_usd: PositiveFloat | None = None
    per_key_usd: PositiveFloat | None = None
    per_model_usd: dict[str, PositiveFloat] = Field(default_factory=dict)
    prices: dict[str, ModelPrice] | None = None  # {"model": {"input": ..., "output": ...}} per million tokens
    prices_file: Path | None = None
    policy: Literal["raise", "shrink"] = "raise"
    ledger: str | Path | None = None
    key: Annotated[str, Field(min_length=1)] | None = None
    default_max_output_tokens: PositiveInt = 4096
    min_output_tokens: PositiveInt = 16  # the shrink policy's floor for max_output_tokens
    estimate_margin: NonNegativeFloat = 0.25  # +25% on prompt counts that are estimates

    _ledger: Ledger = PrivateAttr()
    _prices: PriceTable = PrivateAttr()
    _overrides: PriceTable = PrivateAttr()
    _warned: set[str] = PrivateAttr(default_factory=set)

    def model_post_init(self, context: Any, /) -> None:
        """Load the price table with overrides and open (or create) the ledger."""
        overrides = {**(load_price_file(self.prices_file) if self.prices_file else {}), **(self.prices or {})}
        origin = ", ".join(filter(None, [str(self.prices_file or ""), "Budget(prices=...)" if self.prices else ""]))
        self._overrides = PriceTable(source=origin or "none", models=overrides)
        self._prices = default_prices().with_overrides(overrides, origin)
        if self.ledger is None:
            folder = Path(tempfile.mkdtemp(prefix="blackbox-budget-"))
            self._ledger = Ledger(folder / LEDGER_FILE_NAME)
            weakref.finalize(self, _remove_private_ledger, self._ledger, folder)
        else:
            self._ledger = Ledger(self.ledger)

    @property
    def ledger_path(self) -> Path:
        """The SQLite file holding this budget's reservations and spends."""
        return self._ledger.path

    @property
    def price_table(self) -> PriceTable:
        """The prices in use: the built-in table with this budget's overrides applied."""
        return self._prices

    def price_for(self, model: str, *, local: bool = False) -> ModelPrice | None:
        """The price of `model`; a local model costs 0 unless this budget sets its price."""
        if local:
            return self._overrides.lookup(model) or FREE
        return self._prices.lookup(model)

    def _caps(self, model: str, key: str | None, day: str) -> list[Cap]:
        """Every cap that applies to a call of `model` for `key` on `day`."""
        scoped: list[tuple[Scope, float | None, str | None]] = [
            ("total", self.total_usd, None),
            ("per_call", self.per_call_usd, None),
            ("per_day", self.per_day_usd, day),
            ("per_key", self.per_key_usd, key),
        ]
        scoped += [
            ("per_model", limit, name)
            for name, limit in self.per_model_usd.items()
            if name in (model, snapshot_base(model))
        ]
        return [
            Cap(scope, usd_to_nano(limit, round_up=False), value) for scope, limit, value in scoped if limit is not None
        ]

    def _price_or_raise(self, model: str, local: bool, caps: list[Cap]) -> ModelPrice | None:
        """The call's price; PriceMissingError when it has none and a cap applies."""
        price = self.price_for(model, local=local)
        if price is not None or not caps:
            if price is None and model not in self._warned:
                self._warned.add(model)
                logger.warning("no price for model %r and no cap applies: its calls are recorded at cost 0", model)
            return price
        scopes = ", ".join(sorted({cap.scope for cap in caps}))
        raise PriceMissingError(
            f"No price for model {model!r}, and a hard budget ({scopes}) applies, so its cost can't be bounded. "
            f"Add its price in USD per million tokens: Budget(prices={{{model!r}: {{'input': 1.0, 'output': 2.0}}}}) "
            f"('cached_input' is optional), or put the same mapping in a JSON file and pass Budget(prices_file=...). "
            f"A model served locally costs 0 when the call is marked local."
        )

    def _prompt_tokens(self, prompt_tokens: int | TokenCount) -> int:
        """Prompt tokens to charge in the worst case: estimates are inflated by the margin."""
        if isinstance(prompt_tokens, TokenCount):
            tokens = _count("prompt_tokens", prompt_tokens.tokens, 0)
            return tokens if prompt_tokens.exact else math.ceil(tokens * (1.0 + self.estimate_margin))
        return _count("prompt_tokens", prompt_tokens, 0)

    def _shrunk(self, request: _Request, headroom: int) -> _Fit | None:
        """The largest call fitting `headroom`: fewer choices first, then fewer output tokens; None if none fits."""
        for fewer in range(request.n - 1, 0, -1):
            if request.worst_nano(fewer, request.max_output) <= headroom:
                return _Fit(fewer, request.max_output, request.worst_nano(fewer, request.max_output))
        per_token = request.price.output_usd_per_token()
        if per_token == 0:
            return None  # output is free: fewer tokens can't make the prompt fit
        floor = min(self.min_output_tokens, request.max_output)
        affordable = math.floor((nano_to_usd(headroom) - request.price.cost_usd(request.prompt, 0)) / per_token)
        tokens = min(request.max_output - 1, affordable)
        while tokens >= floor and request.worst_nano(1, tokens) > headroom:  # absorb rounding at the boundary
            tokens -= 1
        return _Fit(1, tokens, request.worst_nano(1, tokens)) if tokens >= floor else None

    def _admit(self, request: _Request, usages: list[CapUsage]) -> _Fit:
        """The call as requested when it fits every cap, else shrunk (policy shrink), else BudgetExceededError."""
        requested = _Fit(request.n, request.max_output, request.worst_nano(request.n, request.max_output))
        if not usages:
            return requested
        tightest = min(usages, key=lambda usage: usage.headroom_nano)
        if requested.usd_nano <= tightest.headroom_nano:
            return requested
        if self.policy == "shrink":
            fit = self._shrunk(request, tightest.headroom_nano)
            if fit is not None:
                return fit
        raise self._exceeded(request, tightest)

    def reserve(
        self,
        *,
        model: str,
        prompt_tokens: int | TokenCount,
        max_output_tokens: int | None = None,
        n: int = 1,
        key: str | None = None,
        local: bool = False,
        call_id: str | None = None,
        prompt_per_choice: bool = False,
    ) -> Reservation:
        """Atomically check every cap and hold the call's worst case; raise BudgetExceededError if it can't fit.

        `max_output_tokens=None` assumes `default_max_output_tokens`; pass 0 for embeddings. `key`
        defaults to the budget's key. `prompt_per_choice` charges the prompt once per choice, for
        servers that ignore `n` (each choice is then a request of its own). Send the returned `n`
        and `max_output_tokens` with the call.
        """
        key = self.key if key is None else key
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"key must be a non-empty string or None, got {key!r}")
        output = self.default_max_output_tokens if max_output_tokens is None else max_output_tokens
        day = _utc_day()
        caps = self._caps(model, key, day)
        price = self._price_or_raise(model, local, caps)
        request = _Request(
            model=model,
            price=price or FREE,
            prompt=self._prompt_tokens(prompt_tokens),
            n=_count("n", n, 1),
            max_output=_count("max_output_tokens", output, 0),
            prompt_per_choice=prompt_per_choice,
        )
        call_id = call_id or uuid.uuid4().hex
        with self._ledger.transaction() as transaction:
            fit = self._admit(request, [transaction.usage(cap) for cap in caps])
            reservation_id = transaction.add_reservation(
                call_id=call_id, model=model, key=key, day=day, usd_nano=fit.usd_nano
            )
        return Reservation(
            id=reservation_id,
            call_id=call_id,
            model=model,
            key=key,
            day=day,
            n=fit.n,
            max_output_tokens=fit.max_output_tokens,
            prompt_tokens=request.prompt,
            worst_case_usd=nano_to_usd(fit.usd_nano),
            shrunk=(fit.n, fit.max_output_tokens) != (request.n, request.max_output),
            price=price,
        )

    def _exceeded(self, request: _Request, usage: CapUsage) -> BudgetExceededError:
        """The refusal for a call whose worst case does not fit under `usage`'s cap."""
        cap = usage.cap
        label = cap.scope.replace("_", "-") + (f" ({cap.value})" if cap.value is not None else "")
        spent, reserved, limit = (nano_to_usd(nano) for nano in (usage.spent_nano, usage.reserved_nano, cap.limit_nano))
        needed = nano_to_usd(request.worst_nano(request.n, request.max_output))
        shape = f"{request.prompt} prompt tokens + {request.n} x {request.max_output} output tokens"
        message = (
            f"{label} budget of ${limit:.6f} would be exceeded: ${spent:.6f} spent + ${reserved:.6f} reserved + "
            f"up to ${needed:.6f} for this call ({request.model}: {shape})"
        )
        if self.policy == "shrink":
            floor = min(self.min_output_tokens, request.max_output)
            message += f"; shrinking to n=1 and {floor} output tokens didn't fit either"
        return BudgetExceededError(message, spent=spent, reserved=reserved, limit=limit, scope=cap.scope)

    def settle(
        self, reservation: Reservation, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float:
        """Record the call's real cost from its usage, release the rest of its reservation, return the cost in USD."""
        prompt = _count("prompt_tokens", prompt_tokens, 0)
        completion = _count("completion_tokens", completion_tokens, 0)
        cached = _count("cached_tokens", cached_tokens, 0)
        if cached > prompt:
            raise ConfigError(f"cached_tokens ({cached}) can't exceed prompt_tokens ({prompt})")
        usd = reservation.price.cost_usd(prompt, completion, cached) if reservation.price else 0.0
        usd_nano = usd_to_nano(usd, round_up=True)
        self._ledger.settle(
            reservation.id, usd_nano=usd_nano, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
        )
        if usd_nano > usd_to_nano(reservation.worst_case_usd, round_up=True):
            logger.warning(
                "call %s cost $%.6f, more than its reservation of $%.6f (the prompt count was an estimate)",
                reservation.call_id,
                nano_to_usd(usd_nano),
                reservation.worst_case_usd,
            )
        return nano_to_usd(usd_nano)

    def release(self, reservation: Reservation) -> None:
        """Give a failed call's reservation back; releasing twice does nothing."""
        self._ledger.release(reservation.id)

    def cost(
        self, model: str, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, local: bool = False
    ) -> float | None:
        """USD a call with this usage costs at this budget's prices; None when the model is unpriced."""
        price = self.price_for(model, local=local)
        return None if price is None else price.cost_usd(prompt_tokens, completion_tokens, cached_tokens)

    def spent(self, *, day: str | None = None, key: str | None = None, model: str | None = None) -> float:
        """Settled USD in the whole ledger, or for one UTC day, one key, or one model (with its snapshots)."""
        candidates: tuple[tuple[Scope, str | None], ...] = (("per_day", day), ("per_key", key), ("per_model", model))
        filters = [(scope, value) for scope, value in candidates if value is not None]
        if len(filters) > 1:
            raise ConfigError("spent() takes at most one of day, key and model")
        chosen: tuple[Scope, str | None] = filters[0] if filters else ("total", None)
        return nano_to_usd(self._ledger.spent_nano(Cap(chosen[0], 0, chosen[1])))

    def report(self) -> BudgetReport:
        """Totals by day, key and model across every process sharing the ledger, and each cap's headroom."""
        caps = [cap for cap in self._caps("", self.key, _utc_day()) if cap.scope != "per_call"]
        caps += [
            Cap("per_model", usd_to_nano(limit, round_up=False), name) for name, limit in self.per_model_usd.items()
        ]
        with self._ledger.transaction() as transaction:  # one consistent snapshot of every figure
            usages = [transaction.usage(cap) for cap in caps]
            reserved, outstanding = self._ledger.outstanding()
            totals = {scope: self._ledger.totals(scope) for scope in ("total", "per_day", "per_key", "model")}
        by = {scope: {value: nano_to_usd(nano) for value, (nano, _) in rows.items()} for scope, rows in totals.items()}
        spent_nano, calls = totals["total"].get("", (0, 0))
        return BudgetReport(
            spent_usd=nano_to_usd(spent_nano),
            reserved_usd=nano_to_usd(reserved),
            outstanding_reservations=outstanding,
            calls=calls,
            by_day=by["per_day"],
            by_key=by["per_key"],
            by_model=by["model"],
            caps=[
                CapStatus(
                    scope=u.cap.scope,
                    value=u.cap.value,
                    limit_usd=nano_to_usd(u.cap.limit_nano),
                    spent_usd=nano_to_usd(u.spent_nano),
                    reserved_usd=nano_to_usd(u.reserved_nano),
                    remaining_usd=nano_to_usd(u.headroom_nano),
                )
                for u in usages
            ],
        )
