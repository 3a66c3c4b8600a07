"""Black-Box Tuning under bad options, broken checkpoints and runs stopped midway: clear errors, nothing lost."""

from __future__ import annotations

import math
from typing import Any

import pytest

from blackbox_sdk._exceptions import BlackBoxError, TuningError
from blackbox_sdk.tuning import BBTConfig


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"d": 0}, id="d-zero"),
        pytest.param({"popsize": 1}, id="population-of-one"),
        pytest.param({"extra_option": 1}, id="unknown-option"),
        pytest.param({"d": True}, id="bool-for-int"),
        pytest.param({"budget": True, "popsize": 2}, id="bool-budget"),
        pytest.param({"sigma0": True}, id="bool-for-float"),
        pytest.param({"sigma0": math.inf}, id="infinite-sigma"),
        pytest.param({"alpha": math.inf}, id="infinite-alpha"),
        pytest.param({"margin": math.inf}, id="infinite-margin"),
        pytest.param({"sigma0": math.nan}, id="nan-sigma"),
        pytest.param({"d": 10**7}, id="huge-d"),
        pytest.param({"seed": -1}, id="negative-seed"),
        pytest.param({"seed": 2**70}, id="seed-too-big-for-torch"),
        pytest.param({"bounds": (1.0, 2.0)}, id="bounds-without-the-start"),
        pytest.param({"bounds": (0.0, 0.0)}, id="empty-bounds"),
    ],
)
def test_bad_options_are_a_tuning_error_when_the_config_is_built(options: dict[str, Any]) -> None:
    with pytest.raises(TuningError) as caught:
        BBTConfig(**options)
    assert isinstance(caught.value, BlackBoxError)
    assert str(next(iter(options))) in str(caught.value)


def test_edge_values_that_can_run_are_kept() -> None:
    config = BBTConfig(d=10_000, seed=2**64 - 1, bounds=(0.0, 1.0), popsize=2, budget=2)
    assert (config.d, config.seed, config.bounds) == (10_000, 2**64 - 1, (0.0, 1.0))
