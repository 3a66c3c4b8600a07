"""The CMA-ES that searches z: built at z = 0 with a private seeded normal source, or rebuilt by replay.

Replaying ask/tell with the fitness values a checkpoint stored rebuilds the strategy's state
exactly (mean, step size, covariance, evolution paths, random stream) without a forward call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._exceptions import TuningError
from ._config import BBTConfig


class _Normal:
    """CMA-ES's private N(0, 1) source, so the search neither reads nor moves numpy's global random state."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, count: int, dimension: int) -> np.ndarray:
        """A [count, dimension] array of standard normal numbers."""
        return self._rng.standard_normal((count, dimension))


def new_strategy(config: BBTConfig) -> Any:
    """A fresh CMA-ES at z = 0 with its own seeded normal source."""
    import cma

    bounds = [None, None] if config.bounds is None else list(config.bounds)
    options = {
        "popsize": config.popsize,
        "bounds": bounds,
        "randn": _Normal(config.seed),
        "seed": float("nan"),
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
    }
    return cma.CMAEvolutionStrategy(np.zeros(config.d), config.sigma0, options)


def replayed_strategy(config: BBTConfig, fitness: list[list[float]], mean: np.ndarray, sigma: float) -> Any:
    """A fresh CMA-ES told the stored fitness values again, generation by generation; checked after."""
    es = new_strategy(config)
    for values in fitness:
        es.tell(es.ask(), values)
    if not (np.allclose(es.mean, mean, rtol=0, atol=1e-12) and math.isclose(es.sigma, sigma, rel_tol=1e-12)):
        raise TuningError(
            "replaying the checkpoint did not rebuild the same CMA-ES state (another cma or numpy version?)"
        )
    return es
