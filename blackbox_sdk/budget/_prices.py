"""Model prices in USD per million tokens: a built-in table (with its date and source) plus overrides.

Lookup is by exact name, then by the base name of a dated snapshot (`gpt-4o-2024-08-06` ->
`gpt-4o`, `gpt-4-0613` -> `gpt-4`). Other variants (`-pro`, `-realtime-preview`, fine-tunes) are
not guessed: they are priced differently, and a budget must not under-count them.
Overrides are a mapping `{"model": {"input": ..., "cached_input": ..., "output": ...}}` or a JSON
file holding that mapping (alone, or under "models" as in `data/prices.json`); they win over the table.
An entry may add the rates of the priority and flex tiers (`"priority": {"input": ..., "output": ...}`)
and of audio tokens (`"audio_input"`, `"audio_output"`): the built-in table is the standard tier's,
text only, and a budget refuses a priority or audio call whose rates it does not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._exceptions import ConfigError

DEFAULT_PRICES_FILE = Path(__file__).parent.parent / "data" / "prices.json"  # blackbox_sdk/data/prices.json
TOKENS_PER_PRICE_UNIT = 1_000_000
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")  # -2024-08-06 or -0613

PRIORITY_TIERS = ("priority", "scale")  # the service_tier values billed at a model's `priority` rates ("scale": the older name)
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # USD per million tokens: an infinite one prices nothing


def snapshot_base(model: str) -> str:
    """The model name without a dated snapshot suffix (`gpt-4o-2024-08-06` -> `gpt-4o`)."""
    return _SNAPSHOT_SUFFIX.sub("", model)


class Rates(BaseModel):
    """Token rates in USD per million tokens; cached input defaults to the input rate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Rate
    output: Rate
    cached_input: Rate | None = None


class ModelPrice(Rates):
    """One model's prices in USD per million tokens: the standard tier's rates, and optionally the rates of the
    priority and flex tiers (``service_tier``) and of audio tokens, without which a budget refuses such calls."""

    priority: Rates | None = None  # service_tier="priority" (and the older "scale")
    flex: Rates | None = None  # service_tier="flex"; without it the standard rates bound a flex call from above
    audio_input: Rate | None = None
    audio_output: Rate | None = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, audio: tuple[int, int] = (0, 0)) -> float:
        """USD for a call; `cached_tokens` are the part of `prompt_tokens` billed at the cached rate, `audio` the parts
        of the prompt and of the completion that are audio (billed at the audio rates; a call with audio in its prompt
        gets no cached discount, so that cached audio can't be billed below what it costs)."""
        audio_in, audio_out = audio
        cached_rate = self.input if self.cached_input is None or audio_in else self.cached_input
        fresh = prompt_tokens - cached_tokens - audio_in
        audio_usd = audio_in * _audio_rate(self.audio_input, self.input) + audio_out * _audio_rate(self.audio_output, self.output)
        return (
            fresh * self.input + cached_tokens * cached_rate + (completion_tokens - audio_out) * self.output + audio_usd
        ) / TOKENS_PER_PRICE_UNIT

    def output_usd_per_token(self) -> float:
        """USD for one output token."""
        return self.output / TOKENS_PER_PRICE_UNIT

    def at_tier(self, tier: object) -> ModelPrice | None:
        """The price of a call sent with ``service_tier=tier``: the tier's own rates, the standard rates for the
        standard tiers and for flex when it has none (a flex call costs no more); None for priority unpriced."""
        rates = self.priority if tier in PRIORITY_TIERS else self.flex if tier == "flex" else None
        if rates is None:
            return None if tier in PRIORITY_TIERS else self
        return ModelPrice(**rates.model_dump(), audio_input=self.audio_input, audio_output=self.audio_output)

    def ceiling(self) -> ModelPrice:
        """Rates that bound every token from above, text or audio: what a call with audio is reserved at, since
        which of its tokens will be audio is known only from its usage."""
        return ModelPrice(
            input=max(self.input, self.audio_input or 0.0), output=max(self.output, self.audio_output or 0.0),
            cached_input=None,
        )


def _audio_rate(rate: float | None, text_rate: float) -> float:
    """An audio token's rate; a price without audio rates bills them at the text rate (such calls are refused
    under a cap before they are sent, so this prices only what slipped past one, such as a local model)."""
    return text_rate if rate is None else rate


class PriceTable(BaseModel):
    """A table of model prices with where and when its figures come from."""

    model_config = ConfigDict(frozen=True)

    source: str
    as_of: str | None = None
    models: dict[str, ModelPrice]

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of `model` by exact name, then by its snapshot's base name; None when unpriced."""
        return self.models.get(model) or self.models.get(snapshot_base(model))

    def with_overrides(self, overrides: Mapping[str, ModelPrice], source: str) -> PriceTable:
        """A copy where `overrides` replace or add models; `source` names where they came from."""
        if not overrides:
            return self
        return PriceTable(
            source=f"{self.source}; overrides: {source}", as_of=self.as_of, models={**self.models, **overrides}
        )


def _parse_models(raw: Any, origin: str) -> dict[str, ModelPrice]:
    """Validate a `{"model": {"input": ..., "output": ...}}` mapping into prices, naming `origin` on error."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"prices from {origin} must be a mapping of model name to prices, got {type(raw).__name__}")
    try:
        return {str(name): ModelPrice.model_validate(price) for name, price in raw.items()}
    except ValidationError as error:
        raise ConfigError(
            f"invalid prices from {origin} (expected {{'model': {{'input': 1.0, 'output': 2.0}}}} "
            f"in USD per million tokens, non-negative and finite): {error}"
        ) from error


def load_price_file(path: str | Path) -> dict[str, ModelPrice]:
    """Prices from a JSON file: the model mapping itself, or a document with it under "models"."""
    path = Path(path).expanduser()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"can't read prices file {path}: {error}") from error
    raw = document.get("models", document) if isinstance(document, Mapping) else document
    return _parse_models(raw, str(path))


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    """The built-in table shipped in `blackbox_sdk/data/prices.json`."""
    document = json.loads(DEFAULT_PRICES_FILE.read_text(encoding="utf-8"))
    return PriceTable(
        source=document["source"], as_of=document["as_of"], models=_parse_models(document["models"], "prices.json")
    )
