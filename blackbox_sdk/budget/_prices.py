"""Model prices in USD per million tokens: a built-in table (with its date and source) plus overrides.

Lookup is by exact name, then by the base name of a dated snapshot (`gpt-4o-2024-08-06` ->
`gpt-4o`, `gpt-4-0613` -> `gpt-4`). Other variants (`-pro`, `-realtime-preview`, fine-tunes) are
not guessed: they are priced differently, and a budget must not under-count them.
Overrides are a mapping `{"model": {"input": ..., "cached_input": ..., "output": ...}}` or a JSON
file holding that mapping (alone, or under "models" as in `data/prices.json`); they win over the table.
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

Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # USD per million tokens: an infinite one prices nothing


def snapshot_base(model: str) -> str:
    """The model name without a dated snapshot suffix (`gpt-4o-2024-08-06` -> `gpt-4o`)."""
    return _SNAPSHOT_SUFFIX.sub("", model)


class ModelPrice(BaseModel):
    """One model's prices in USD per million tokens; cached input defaults to the input price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Rate
    output: Rate
    cached_input: Rate | None = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for a call; `cached_tokens` are the part of `prompt_tokens` billed at the cached rate."""
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = prompt_tokens - cached_tokens
        return (
            fresh * self.input + cached_tokens * cached_rate + completion_tokens * self.output
        ) / TOKENS_PER_PRICE_UNIT

    def output_usd_per_token(self) -> float:
        """USD for one output token."""
        return self.output / TOKENS_PER_PRICE_UNIT


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
