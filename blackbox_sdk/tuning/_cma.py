"""The CMA-ES search over z: one strategy per prompt layer, taken in turn, rebuilt exactly by replay.

Plain BBT searches one layer (the input embeddings), so every generation asks the same strategy and
its candidates are its solutions. A deep prompt (BBTv2's divide and conquer) has one strategy per
layer: generation g searches layer g mod n, its candidates are the current z of every layer with
that layer's row replaced by each solution, and a winner that beats the best training loss so far
becomes that layer's current z, so the other layers stay at their best. Everything here follows from
the fitness values told, so replaying them (ask, tell) rebuilds the search exactly (mean, step
size, covariance, evolution paths, random streams, current z) without a forward call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._exceptions import TuningError
from ._config import BBTConfig


class _Normal:
    """CMA-ES's private N(0, 1) source, so the search neither reads nor moves numpy's global random state."""

    def __init__(self, seed: int | list[int]) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, count: int, dimension: int) -> np.ndarray:
        """A [count, dimension] array of standard normal numbers."""
        return self._rng.standard_normal((count, dimension))


def new_strategy(config: BBTConfig, layer: int = 0) -> Any:
    """A fresh CMA-ES at z = 0 with its own seeded normal source (layer 0 draws from the plain seed)."""
    import cma

    bounds = [None, None] if config.bounds is None else list(config.bounds)
    options = {
        "popsize": config.popsize,
        "bounds": bounds,
        "randn": _Normal(config.seed if layer == 0 else [config.seed, layer]),
        "seed": float("nan"),
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
    }
    return cma.CMAEvolutionStrategy(np.zeros(config.d), config.sigma0, options)


class LayerSearch:
    """CMA-ES over every prompt layer's z in turn, each layer held at its best while another is searched."""

    def __init__(self, config: BBTConfig, layers: int) -> None:
        self.strategies = [new_strategy(config, layer) for layer in range(layers)]
        self.current = np.zeros((layers, config.d))  # [n, d]: each layer's z in the best combination so far
        self.best_loss = math.inf
        self.generations = 0

    @property
    def layer(self) -> int:
        """The layer the next generation searches."""
        return self.generations % len(self.strategies)

    @property
    def sigma(self) -> float:
        """The step size of the strategy told last (the first one's before any generation)."""
        return float(self.strategies[(self.generations - 1) % len(self.strategies)].sigma)

    def ask(self) -> tuple[list[np.ndarray], np.ndarray]:
        """This generation's solutions for its layer, and the candidates [P, n, d] they make with the other layers' current z."""
        solutions = self.strategies[self.layer].ask()
        candidates = np.repeat(self.current[None], len(solutions), axis=0)
        candidates[:, self.layer] = np.stack(solutions)
        return solutions, candidates

    def tell(self, solutions: list[np.ndarray], fitness: list[float]) -> int:
        """Tell the generation's strategy its fitness; a winner better than the best so far becomes its layer's z. Returns the winner."""
        layer = self.layer
        self.strategies[layer].tell(solutions, fitness)
        winner = int(np.argmin(fitness))
        if fitness[winner] < self.best_loss:
            self.best_loss = fitness[winner]
            self.current[layer] = solutions[winner]
        self.generations += 1
        return winner

    def means(self) -> np.ndarray:
        """Every strategy's mean, [n, d]."""
        return np.stack([np.asarray(s.mean) for s in self.strategies])

    def sigmas(self) -> list[float]:
        """Every strategy's step size."""
        return [float(s.sigma) for s in self.strategies]

    @classmethod
    def replayed(
        cls, config: BBTConfig, layers: int, fitness: Sequence[list[float]], means: np.ndarray, sigmas: Sequence[float]
    ) -> LayerSearch:
        """A fresh search told the stored fitness values again, generation by generation; checked against the stored means and step sizes."""
        search = cls(config, layers)
        for values in fitness:
            solutions, _ = search.ask()
            search.tell(solutions, values)
        same_means = np.allclose(search.means(), np.reshape(means, (layers, config.d)), rtol=0, atol=1e-12)
        same_sigmas = len(sigmas) == layers and all(
            math.isclose(a, b, rel_tol=1e-12) for a, b in zip(search.sigmas(), sigmas, strict=True)
        )
        if not (same_means and same_sigmas):
            raise TuningError(
                "replaying the checkpoint did not rebuild the same CMA-ES state (another cma or numpy version?)"
            )
        return search
