"""The admission arithmetic of a budget: a call's worst case, whether it fits, shrinking it, the refusal.

The worst case is the prompt at the input price plus n x max_output_tokens at the output price
(prompt tokens are billed once per request, whatever n). A call fits when that worst case is
within the headroom of the tightest cap that applies. Under policy="shrink" a call that doesn't
fit gets a lower n, then fewer output tokens (down to a floor), before it is refused.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TypeGuard

from .._exceptions import BudgetExceededError, ConfigError, PriceMissingError
from .._logging import logger
from .._text import checked_text
from ._caps import EXACT_LIMIT, Cap, CapUsage, Scope, bounded_nano, nano_to_usd, usd_text, usd_to_nano
from ._prices import ModelPrice
from ._tokens import TokenCount

FREE = ModelPrice(input=0.0, output=0.0)


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
    leased_until: float = math.inf  # time.monotonic() when its lease lapses and its hold stops counting


@dataclass(frozen=True)
class Request:
    """A call to admit: its model and price, prompt tokens to charge, and the n and output tokens asked for."""

    model: str
    price: ModelPrice
    prompt: int
    n: int
    max_output: int
    prompt_per_choice: bool = False  # each choice is its own request (a server that ignores n)

    def worst_nano(self, n: int, max_output: int) -> int:
        """The worst-case cost in nano-dollars with `n` choices of up to `max_output` tokens; ConfigError when
        its tokens or its cost are beyond what a ledger counts exactly (2**53)."""
        prompt = self.prompt * n if self.prompt_per_choice else self.prompt
        usd = self.price.cost_usd(prompt, n * max_output)
        nano = bounded_nano(usd) if prompt + n * max_output < EXACT_LIMIT else None
        if nano is None:
            raise ConfigError(
                f"{self.model}: {prompt} prompt tokens + {n} x {max_output} output tokens (${usd:.6g}) is beyond what "
                f"a ledger counts exactly (2**53 tokens or nano-dollars, about $9 million)"
            )
        return nano


@dataclass(frozen=True)
class Fit:
    """The n and output tokens chosen for a call and its worst-case cost in nano-dollars."""

    n: int
    max_output_tokens: int
    usd_nano: int


@dataclass(frozen=True)
class Policy:
    """What to do with a call that doesn't fit: refuse it, or shrink it down to `min_output_tokens` first."""

    shrink: bool
    min_output_tokens: int

    def admit(self, request: Request, usages: list[CapUsage]) -> Fit:
        """The call as requested when it fits every cap, else shrunk (when allowed), else BudgetExceededError."""
        requested = Fit(request.n, request.max_output, request.worst_nano(request.n, request.max_output))
        if not usages:
            return requested
        tightest = min(usages, key=lambda usage: usage.headroom_nano)
        if requested.usd_nano <= tightest.headroom_nano:
            return requested
        fit = self.shrunk(request, tightest.headroom_nano) if self.shrink else None
        if fit is None:
            raise self.refusal(request, tightest)
        return fit

    def shrunk(self, request: Request, headroom: int) -> Fit | None:
        """The largest call fitting `headroom`: fewer choices first, then fewer output tokens; None if none fits."""
        for fewer in range(request.n - 1, 0, -1):
            if request.worst_nano(fewer, request.max_output) <= headroom:
                return Fit(fewer, request.max_output, request.worst_nano(fewer, request.max_output))
        per_token = request.price.output_usd_per_token()
        if per_token == 0:
            return None  # output is free: fewer tokens can't make the prompt fit
        floor = min(self.min_output_tokens, request.max_output)
        affordable = (nano_to_usd(headroom) - request.price.cost_usd(request.prompt, 0)) / per_token  # +-inf for a tiny price
        if not affordable >= floor:
            return None
        tokens = min(request.max_output - 1, math.floor(min(affordable, request.max_output)))
        while tokens >= floor and request.worst_nano(1, tokens) > headroom:  # absorb rounding at the boundary
            tokens -= 1
        return Fit(1, tokens, request.worst_nano(1, tokens)) if tokens >= floor else None

    def refusal(self, request: Request, usage: CapUsage) -> BudgetExceededError:
        """The refusal for a call whose worst case does not fit under `usage`'s cap."""
        cap = usage.cap
        label = cap.scope.replace("_", "-") + (f" ({cap.value})" if cap.value is not None else "")
        spent, reserved, limit = (nano_to_usd(nano) for nano in (usage.spent_nano, usage.reserved_nano, cap.limit_nano))
        needed = nano_to_usd(request.worst_nano(request.n, request.max_output))
        shape = f"{request.prompt} prompt tokens + {request.n} x {request.max_output} output tokens"
        message = (
            f"{label} budget of {usd_text(limit)} would be exceeded: {usd_text(spent)} spent + {usd_text(reserved)} reserved + "
            f"up to {usd_text(needed)} for this call ({request.model}: {shape})"
        )
        if self.shrink:
            floor = min(self.min_output_tokens, request.max_output)
            message += f"; shrinking to n=1 and {floor} output tokens didn't fit either"
        return BudgetExceededError(message, spent=spent, reserved=reserved, limit=limit, scope=cap.scope)


def charged_prompt_tokens(prompt_tokens: int | TokenCount, estimate_margin: float) -> int:
    """Prompt tokens to charge in the worst case: estimates are inflated by the margin."""
    if not isinstance(prompt_tokens, TokenCount):
        return checked_count("prompt_tokens", prompt_tokens, 0)
    tokens = checked_count("prompt_tokens", prompt_tokens.tokens, 0)
    if prompt_tokens.exact:
        return tokens
    inflated = tokens * (1.0 + estimate_margin)
    if not inflated < EXACT_LIMIT:
        raise ConfigError(f"prompt_tokens ({tokens}) with the estimate margin ({estimate_margin:g}) is beyond 2**53 tokens")
    return math.ceil(inflated)


def checked_count(name: str, value: object, minimum: int) -> int:
    """`value` as a checked integer from `minimum` up to below 2**53 (what a ledger counts exactly), or a
    ConfigError naming the argument."""
    if not is_count(value, minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum} and below 2**53, got {value!r:.40}")
    return value


def priced_for(model: str, price: ModelPrice, tier: object, audio: bool, caps: list[Cap]) -> ModelPrice:
    """The price a call is charged at, by its ``service_tier`` and whether it carries audio; PriceMissingError
    under a cap when the model's price lacks those rates (without a cap, the standard rates with a warning)."""
    tiered = price.at_tier(tier)
    missing = [] if tiered is not None else [f"{tier!r} tier rates (service_tier={tier!r} bills more than the standard tier)"]
    if audio and (price.audio_input is None or price.audio_output is None):
        missing.append("audio rates (audio tokens bill several times text ones)")
    if not missing:
        return tiered or price
    if caps:
        raise PriceMissingError(
            f"a hard budget applies and the price of {model!r} has no {' and no '.join(missing)}, so the call's cost "
            f"can't be bounded: refused. Add them to its price: Budget(prices={{{model!r}: {{'input': ..., 'output': ..., "
            "'priority': {'input': ..., 'output': ...}, 'audio_input': ..., 'audio_output': ...}})"
        )
    if (model, *missing) not in _WARNED:
        _WARNED.add((model, *missing))
        logger.warning("model %r: its price has no %s; its calls are recorded at its standard text rates", model, " and no ".join(missing))
    return tiered or price


_WARNED: set[tuple[str, ...]] = set()  # what priced_for warned of, once each


def less_charged(caps: list[Cap], already_nano: int) -> list[Cap]:
    """The caps a call's next hold is checked against: the per-call one less what the call holds or was charged already."""
    return [Cap(cap.scope, max(cap.limit_nano - already_nano, 0), cap.value) if cap.scope == "per_call" else cap for cap in caps]


def as_charged(usages: list[CapUsage], caps: list[Cap], already_nano: int) -> list[CapUsage]:
    """Refusals under `less_charged` caps told against the caps as set: the per-call one with the call's charges as spent."""
    full = next((cap for cap in caps if cap.scope == "per_call"), None)
    return [CapUsage(full, usage.spent_nano + already_nano, usage.reserved_nano) if full and usage.cap.scope == "per_call" else usage
            for usage in usages]


def checked_usd(name: str, value: object) -> float:
    """`value` as USD when it is a finite number from 0 up, else a ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= sys.float_info.max or value < 0:
        raise ConfigError(f"{name} must be a finite number of USD from 0 up, got {value!r:.80}")
    return float(value)


def checked_model(model: object) -> str:
    """`model` when it is a non-empty UTF-8 string (what prices and caps are looked up by), else a ConfigError."""
    return checked_text(model, "model")


def charged_usage(
    reservation: Reservation, prompt: object, completion: object, cached: object, audio: tuple[object, object] = (0, 0),
) -> tuple[int, int, int, int]:
    """What to charge for a call's reported usage: (nano-dollars, prompt, completion, cached tokens), with `audio`
    the audio parts of the prompt and the completion. Usage that can't be real (a count that is negative, not an
    integer, or from 2**53 up, as a broken server may report, or more audio than all) is charged at the
    reservation's worst case, with a warning; ConfigError for more cached than prompt tokens."""
    audio_in, audio_out = audio
    if is_count(prompt) and is_count(completion) and is_count(cached) and is_count(audio_in) and is_count(audio_out):
        if cached > prompt:
            raise ConfigError(f"cached_tokens ({cached}) can't exceed prompt_tokens ({prompt})")
        text_cached = min(cached, prompt - audio_in)  # cached audio is billed as audio (cost_usd)
        price = reservation.price or FREE
        real = audio_in <= prompt and audio_out <= completion
        nano = bounded_nano(price.cost_usd(prompt, completion, text_cached, (audio_in, audio_out))) if real else None
        if nano is not None:
            return nano, prompt, completion, cached
    logger.warning(
        "call %s reported usage that can't be real (prompt_tokens=%.40r, completion_tokens=%.40r, cached_tokens=%.40r, "
        "audio_tokens=%.40r): charged its reserved worst case of $%.6f", reservation.call_id, prompt, completion, cached, audio,
        reservation.worst_case_usd,
    )
    worst = usd_to_nano(reservation.worst_case_usd, round_up=True)
    return worst, reservation.prompt_tokens, reservation.n * reservation.max_output_tokens, 0


def is_count(value: object, minimum: int = 0) -> TypeGuard[int]:
    """Whether `value` is an integer (not a bool) from `minimum` up to below 2**53."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value < EXACT_LIMIT


def utc_day() -> str:
    """Today's date in UTC, the unit of per-day caps."""
    return datetime.now(timezone.utc).date().isoformat()


def spent_scope(day: str | None, key: str | None, model: str | None) -> tuple[Scope, str | None]:
    """The one scope `Budget.spent` sums (all when none is given); ConfigError for two, or for a day or
    name no spend can be kept under (it matched nothing, or a store failed to encode it)."""
    scopes: tuple[tuple[Scope, str | None], ...] = (("per_day", day), ("per_key", key), ("per_model", model))
    given = [(scope, value) for scope, value in scopes if value is not None]
    if len(given) > 1:
        raise ConfigError("spent() takes at most one of day, key and model")
    if not given:
        return "total", None
    scope, value = given[0]
    return scope, checked_day(value) if scope == "per_day" else checked_text(value, "key" if scope == "per_key" else "model")


def checked_day(day: object) -> str:
    """`day` when it is a date as `utc_day` writes it (YYYY-MM-DD), else a ConfigError: any other form matches no spend."""
    try:
        canonical = isinstance(day, str) and date.fromisoformat(day).isoformat() == day
    except ValueError:  # no date at all
        canonical = False
    if canonical:
        return str(day)
    raise ConfigError(f"day must be a UTC date as YYYY-MM-DD (what per-day caps are kept by), got {day!r:.80}")
