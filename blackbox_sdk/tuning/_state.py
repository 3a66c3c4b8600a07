"""What a search records and changes: per-generation and dev records, the selected candidate, the
counters. All of it goes into a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np

from ._cma import LayerSearch


@dataclass(frozen=True)
class GenerationRecord:
    """One CMA-ES generation: calls so far, this generation's best and mean loss, the best so far, sigma."""

    calls: int
    best_loss: float
    mean_loss: float
    best_so_far: float
    sigma: float
    seconds: float


@dataclass(frozen=True)
class DevRecord:
    """One dev evaluation of a generation's best candidate."""

    calls: int
    accuracy: float
    loss: float
    seconds: float


@dataclass
class Best:
    """The selected candidate: best dev accuracy (ties: lower dev loss), or lowest train loss without dev."""

    z: np.ndarray
    train_loss: float
    train_accuracy: float
    dev_accuracy: float | None
    dev_loss: float | None
    calls: int
    seconds: float

    def beaten_by(self, other: Best) -> bool:
        """Whether another candidate's scores beat this one's."""
        accuracy, loss = other.dev_accuracy, other.dev_loss
        if accuracy is None or loss is None or self.dev_accuracy is None or self.dev_loss is None:
            return other.train_loss < self.train_loss
        return (accuracy, -loss) > (self.dev_accuracy, -self.dev_loss)


@dataclass
class SearchState:
    """Everything the search loop changes: the CMA-ES search, what it was told, counters, history, the selection."""

    search: LayerSearch
    fitness: list[list[float]] = field(default_factory=list)  # what CMA-ES was told, per generation
    calls: int = 0
    dev_calls: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    generations: list[GenerationRecord] = field(default_factory=list)
    dev: list[DevRecord] = field(default_factory=list)
    best: Best | None = None

    def record_generation(self, fitness: list[float], *, calls: int, tokens: int, seconds: float) -> int:
        """Count a generation whose fitness CMA-ES was just told; returns the index of its best candidate."""
        self.fitness.append(fitness)
        self.calls += calls
        self.tokens += tokens
        self.elapsed = seconds
        winner = int(np.argmin(fitness))
        best_so_far = min(fitness[winner], self.generations[-1].best_so_far if self.generations else math.inf)
        record = GenerationRecord(
            self.calls, fitness[winner], float(np.mean(fitness)), best_so_far, self.search.sigma, seconds
        )
        self.generations.append(record)
        return winner

    def record_dev(self, record: DevRecord, tokens: int) -> None:
        """Count one dev evaluation (one call, apart from the training calls)."""
        self.dev.append(record)
        self.dev_calls += 1
        self.tokens += tokens

    def offer(self, candidate: Best) -> None:
        """Select candidate when there is no selection yet or it beats the selected one."""
        if self.best is None or self.best.beaten_by(candidate):
            self.best = candidate

    def scores(self, best: Best) -> dict[str, float]:
        """The run's counters and the selected candidate's scores, as the tuned SoftPrompt reports them."""
        scores = {
            "train_loss": best.train_loss,
            "train_accuracy": best.train_accuracy,
            "calls": float(self.calls),
            "dev_calls": float(self.dev_calls),
            "tokens": float(self.tokens),
            "calls_to_best": float(best.calls),
            "seconds": self.elapsed,
            "seconds_to_best": best.seconds,
        }
        if best.dev_accuracy is not None and best.dev_loss is not None:
            scores |= {"dev_accuracy": best.dev_accuracy, "dev_loss": best.dev_loss}
        return scores
