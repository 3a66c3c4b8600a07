"""Prices: the built-in table, snapshot lookup, cost arithmetic, overrides and local models."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pydantic
import pytest

from blackbox_sdk import ConfigError
from blackbox_sdk.budget import (
    DEFAULT_PRICES_FILE,
    Budget,
    ModelPrice,
    default_prices,
    load_price_file,
    snapshot_base,
)

REQUIRED_MODELS = (
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "o4-mini",
    "o1",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
)


@pytest.fixture(scope="module")
def table_json() -> dict:
    """The shipped prices file, read directly."""
    return json.loads(DEFAULT_PRICES_FILE.read_text(encoding="utf-8"))


def test_table_names_its_source_and_date(table_json: dict) -> None:
    assert "platform.openai.com/docs/pricing" in table_json["source"]
    assert date.fromisoformat(table_json["as_of"]) <= date.today()
    assert default_prices().as_of == table_json["as_of"]


def test_table_prices_the_current_openai_models(table_json: dict) -> None:
    table = default_prices()
    for model in REQUIRED_MODELS:
        assert table.lookup(model) == ModelPrice.model_validate(table_json["models"][model])


def test_cached_input_is_never_dearer_than_input() -> None:
    for name, price in default_prices().models.items():
        assert price.cached_input is None or price.cached_input <= price.input, name


@pytest.mark.parametrize(
    ("model", "base"),
    [
        pytest.param("gpt-4o-2024-08-06", "gpt-4o", id="dated"),
        pytest.param("gpt-4o-mini-2024-07-18", "gpt-4o-mini", id="dated-longer-name"),
        pytest.param("gpt-4-0613", "gpt-4", id="four-digit"),
        pytest.param("gpt-3.5-turbo-0125", "gpt-3.5-turbo", id="four-digit-turbo"),
    ],
)
def test_dated_snapshots_take_their_base_price(model: str, base: str) -> None:
    assert snapshot_base(model) == base
    assert default_prices().lookup(model) == default_prices().models[base]


def test_a_listed_snapshot_wins_over_its_base(table_json: dict) -> None:
    listed = default_prices().lookup("gpt-4o-2024-05-13")
    assert listed == ModelPrice.model_validate(table_json["models"]["gpt-4o-2024-05-13"])
    assert listed != default_prices().models["gpt-4o"]


@pytest.mark.parametrize("model", ["gpt-5-pro", "gpt-4o-realtime-preview", "ft:gpt-4o-mini:org::x", "smollm2"])
def test_variants_priced_differently_are_not_guessed(model: str) -> None:
    assert default_prices().lookup(model) is None


def test_cost_charges_cached_tokens_at_the_cached_rate() -> None:
    price = ModelPrice(input=2.0, cached_input=0.5, output=8.0)
    assert price.cost_usd(1000, 200, cached_tokens=400) == pytest.approx((600 * 2.0 + 400 * 0.5 + 200 * 8.0) / 1e6)


def test_cost_without_a_cached_rate_charges_cached_tokens_as_input() -> None:
    price = ModelPrice(input=0.5, output=1.5)
    assert price.cost_usd(1000, 0, cached_tokens=1000) == price.cost_usd(1000, 0)


def test_override_dict_replaces_and_adds_models() -> None:
    budget = Budget(prices={"gpt-4o": {"input": 1.0, "output": 2.0}, "my-model": {"input": 3.0, "output": 4.0}})
    assert budget.price_for("gpt-4o") == ModelPrice(input=1.0, output=2.0)
    assert budget.price_for("gpt-4o-2024-08-06") == ModelPrice(input=1.0, output=2.0)
    assert budget.price_for("my-model") == ModelPrice(input=3.0, output=4.0)
    assert budget.price_for("gpt-4o-mini") == default_prices().models["gpt-4o-mini"]


@pytest.mark.parametrize("wrapped", [False, True], ids=["flat-mapping", "under-models"])
def test_override_file_in_either_shape(tmp_path: Path, wrapped: bool) -> None:
    models = {"my-model": {"input": 1.5, "cached_input": 0.5, "output": 6.0}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"source": "mine", "models": models} if wrapped else models))
    assert load_price_file(path) == {"my-model": ModelPrice(input=1.5, cached_input=0.5, output=6.0)}
    assert Budget(prices_file=path).price_for("my-model") == ModelPrice(input=1.5, cached_input=0.5, output=6.0)


def test_dict_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": {"input": 1.0, "output": 1.0}}))
    budget = Budget(prices_file=path, prices={"my-model": {"input": 9.0, "output": 9.0}})
    assert budget.price_for("my-model") == ModelPrice(input=9.0, output=9.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{not json", "can't read prices file", id="bad-json"),
        pytest.param(json.dumps({"m": {"input": -1.0, "output": 1.0}}), "invalid prices", id="negative"),
        pytest.param(json.dumps({"m": {"input": 1.0}}), "invalid prices", id="no-output"),
        pytest.param(json.dumps(["m"]), "must be a mapping", id="not-a-mapping"),
        pytest.param('{"m": {"input": Infinity, "output": 1.0}}', "invalid prices", id="infinite"),  # JSON as Python reads it
    ],
)
def test_bad_price_file_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        load_price_file(path)
    assert str(path) in str(raised.value)
    with pytest.raises(ConfigError, match=message) as refused:
        Budget(prices_file=path)
    assert str(path) in str(refused.value)
    assert not isinstance(refused.value, pydantic.ValidationError)


def test_missing_price_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="can't read prices file"):
        load_price_file(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "price",
    [{"input": -0.1, "output": 1.0}, {"input": 1.0, "output": 1.0, "typo": 2.0}, {"output": 1.0}, {"input": 1.0, "output": float("inf")}],
    ids=["negative", "unknown-field", "no-input", "infinite"],
)
def test_bad_override_dict_is_a_config_error_naming_the_field(price: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"invalid Budget: prices\.m") as refused:
        Budget(prices={"m": price})
    assert not isinstance(refused.value, pydantic.ValidationError)


def test_local_models_cost_nothing_unless_priced() -> None:
    assert Budget().price_for("gpt-4o", local=True) == ModelPrice(input=0.0, output=0.0)
    priced = Budget(prices={"smollm2": {"input": 0.01, "output": 0.02}})
    assert priced.price_for("smollm2", local=True) == ModelPrice(input=0.01, output=0.02)
