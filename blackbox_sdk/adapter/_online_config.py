"""What the online rounds are given and what they report: the questions, `OnlineConfig`, `OnlineReport`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._exceptions import AdapterError
from ..local import MPNET_ENCODER
from ._config import AdapterConfig
from ._trainer import TrainConfig
from ._verdict import Verdict

LORA_RANK, LORA_LR = 8, 1e-3  # rank-8 LoRA deltas (about 1 MB a folder) learn at 10x the whole layers' rate


def lora_training() -> TrainConfig:
    """How every named recipe trains: NCE through LoRA at lr 1e-3, 8 groups a step, at most 7 negatives each."""
    return TrainConfig(lr=LORA_LR, groups_per_batch=8, max_negatives=7, warmup_steps=5, progress=False)


def default_adapter() -> AdapterConfig:
    """The online rounds' default model: all-mpnet-base-v2's top 4 layers through rank-8 LoRA (`RECIPES["mpnet-lora"]`)."""
    return AdapterConfig(base_model=MPNET_ENCODER, trainable_layers=4, lora_rank=LORA_RANK)


class OnlineQuestion(BaseModel):
    """A training or held-out question: its text, an optional reference answer, and what the labeler checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    reference: str | None = None  # a ground-truth answer, used as a positive
    gold: Any = None  # JSON data for the labeler (the number, the accepted names, ...)


@dataclass
class OnlineConfig:
    """How the rounds run; `train` and `adapter` configure each round's training and the model.

    The defaults are `RECIPES["mpnet-lora"]`, the recipe that leave-one-family-out chose for every
    held-out task family (docs/adapter.md, "Leave one family out").
    """

    rounds: int = 2  # online rounds (the paper: 2-3)
    samples: int = 8  # fresh candidates per training question per round
    epochs_per_round: int = 8  # passes over the round's groups
    validation_fraction: float = 0.25  # training questions kept out of training, to choose `consensus` on
    consensus_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # the consensus weights tried on them (4: near majority vote)
    write_feedback: bool = True  # label the sampled calls in the client's call log, when it has one
    adapter: AdapterConfig = field(default_factory=default_adapter)
    train: TrainConfig = field(default_factory=lora_training)

    def __post_init__(self) -> None:
        """Reject options that cannot run."""
        if self.rounds < 1 or self.samples < 1 or self.epochs_per_round < 1:
            raise AdapterError("rounds, samples and epochs_per_round must be >= 1")
        if not 0 <= self.validation_fraction < 1:
            raise AdapterError(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if not self.consensus_grid or min(self.consensus_grid) < 0:
            raise AdapterError("consensus_grid must hold at least one weight, all >= 0")

    def fingerprint(self, questions: Sequence[OnlineQuestion]) -> str:
        """A hash of the config and the questions, so a state file is never resumed by another run."""
        data = {"config": asdict(self), "questions": [q.model_dump(mode="json") for q in questions]}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class OnlineReport:
    """Per-round numbers (samples, tokens, cost, training, held-out accuracy), where the adapter is, and
    whether its picks beat majority vote on the validation questions (`verdict`; None without any)."""

    rounds: list[dict[str, Any]]
    baseline: dict[str, float]
    adapter_path: str
    state_path: str
    verdict: Verdict | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {**asdict(self), "verdict": self.verdict.to_dict() if self.verdict else None}
