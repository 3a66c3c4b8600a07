"""Hard cost budgets: reserve a call's worst case before sending it, settle the real cost after.

    reservation = budget.reserve(model=..., prompt_tokens=..., max_output_tokens=..., n=..., key=...)
    # send with n=reservation.n and max_tokens=reservation.max_output_tokens: the cap is then hard
    cost_usd = budget.settle(reservation, prompt_tokens=..., completion_tokens=..., cached_tokens=...)
    budget.release(reservation)   # instead of settle, when the call failed

Every cap that applies (total, per call, per UTC day, per key, per model) is checked against
settled spend plus outstanding reservations in one ledger transaction, so threads, asyncio tasks
and processes sharing a ledger file never overspend together. The arithmetic of admitting a call
(its worst case, shrinking it, the refusal) is in ``_policy``; the ledger behind it is a
:class:`~blackbox_sdk.budget.LedgerStore`.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
)

from .._exceptions import ConfigError, PriceMissingError
from .._logging import logger
from ._ledger import Cap, Ledger, Scope, nano_to_usd, usd_to_nano
from ._policy import (
    FREE,
    Policy,
    Request,
    Reservation,
    charged_prompt_tokens,
    checked_count,
    utc_day,
)
from ._prices import (
    ModelPrice,
    PriceTable,
    default_prices,
    load_price_file,
    snapshot_base,
)
from ._report import BudgetReport, read_report
from ._store import LedgerStore
from ._tokens import TokenCount

LEDGER_FILE_NAME = "ledger.sqlite3"


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

    _ledger: LedgerStore = PrivateAttr()
    _ledger_path: Path = PrivateAttr()
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
            ledger = Ledger(folder / LEDGER_FILE_NAME)
            weakref.finalize(self, _remove_private_ledger, ledger, folder)
        else:
            ledger = Ledger(self.ledger)
        self._ledger, self._ledger_path = ledger, ledger.path

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
        key = self._key_for(key)
        output = self.default_max_output_tokens if max_output_tokens is None else max_output_tokens
        day = utc_day()
        caps = self._caps(model, key, day)
        price = self._price_or_raise(model, local, caps)
        request = Request(
            model=model,
            price=price or FREE,
            prompt=charged_prompt_tokens(prompt_tokens, self.estimate_margin),
            n=checked_count("n", n, 1),
            max_output=checked_count("max_output_tokens", output, 0),
            prompt_per_choice=prompt_per_choice,
        )
        call_id = call_id or uuid.uuid4().hex
        policy = Policy(shrink=self.policy == "shrink", min_output_tokens=self.min_output_tokens)
        with self._ledger.transaction() as transaction:
            fit = policy.admit(request, [transaction.usage(cap) for cap in caps])
            reservation_id = transaction.add_reservation(call_id=call_id, model=model, key=key, day=day, usd_nano=fit.usd_nano)
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

    def settle(
        self, reservation: Reservation, *, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float:
        """Record the call's real cost from its usage, release the rest of its reservation, return the cost in USD."""
        prompt = checked_count("prompt_tokens", prompt_tokens, 0)
        completion = checked_count("completion_tokens", completion_tokens, 0)
        cached = checked_count("cached_tokens", cached_tokens, 0)
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

    @property
    def ledger_path(self) -> Path:
        """The SQLite file holding this budget's reservations and spends."""
        return self._ledger_path

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
        caps = [cap for cap in self._caps("", self.key, utc_day()) if cap.scope != "per_call"]
        caps += [Cap("per_model", usd_to_nano(limit, round_up=False), name) for name, limit in self.per_model_usd.items()]
        with self._ledger.transaction() as transaction:  # one consistent snapshot of every figure
            return read_report(self._ledger, [transaction.usage(cap) for cap in caps])

    def _key_for(self, key: str | None) -> str | None:
        """The key a call is charged to: its own, else this budget's; ConfigError for an empty or non-string key."""
        key = self.key if key is None else key
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigError(f"key must be a non-empty string or None, got {key!r}")
        return key

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
        scopes = ", ".join(sorted({cap.scope for cap in caps}))
        raise PriceMissingError(
            f"No price for model {model!r}, and a hard budget ({scopes}) applies, so its cost can't be bounded. "
            f"Add its price in USD per million tokens: Budget(prices={{{model!r}: {{'input': 1.0, 'output': 2.0}}}}) "
            f"('cached_input' is optional), or put the same mapping in a JSON file and pass Budget(prices_file=...). "
            f"A model served locally costs 0 when the call is marked local."
        )


def _remove_private_ledger(ledger: Ledger, folder: Path) -> None:
    """Close and delete a Budget's private temporary ledger."""
    ledger.close()
    shutil.rmtree(folder, ignore_errors=True)
