"""The options of a black-box tuning run, validated up front so that a bad setting costs no call."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._exceptions import TuningError
from ._template import Placement


class BBTConfig(BaseModel):
    """Options of a black-box tuning run; defaults are the paper's (official code) settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: int = Field(500, ge=1)  # dimension of the search space z
    prompt_len: int = Field(50, ge=1)  # L: soft-prompt vectors
    popsize: int = Field(20, ge=2)  # CMA-ES population per generation
    sigma0: float = Field(1.0, gt=0)  # CMA-ES initial step size (the ICML paper: 0.5 with bounds)
    alpha: float = Field(1.0, gt=0)  # A's scale: A z starts with per-entry std ~ alpha * std_e
    bounds: tuple[float, float] | None = None  # box on every z coordinate, e.g. (-5, 5); None: unbounded
    budget: int = Field(
        8000, ge=1
    )  # training calls (candidate x whole train set); a run stops at budget // popsize generations
    loss: Literal["ce", "hinge", "neg_acc"] = "ce"  # cross entropy, multi-class hinge, or minus accuracy
    margin: float = Field(2.0, gt=0)  # hinge margin, in log-prob units
    p0: Literal["zeros", "vocab"] | Path = "zeros"  # offset: zeros, word embeddings, or a saved SoftPrompt folder
    p0_words: str | None = (
        None  # with p0="vocab": text whose token embeddings (cycled to L) start the prompt; None: random tokens
    )
    placement: Placement = "prefix"  # where the prompt goes: prefix (paper), after_text or suffix (KV cache reused)
    deep: bool = False  # BBTv2: a prompt at every layer's input, one CMA-ES per layer in turn (local models only)
    dev_every: int = Field(100, ge=1)  # training calls between dev evaluations (the paper: 100)
    seed: int = 0  # seeds A, random p0 words and CMA-ES sampling
    batch_size: int = Field(256, ge=1)  # sequences per forward pass
    checkpoint_dir: Path | None = None  # where the resumable CMA-ES state goes; None: no checkpoints
    checkpoint_every: int = Field(10, ge=1)  # generations between checkpoints
    progress: bool = True  # tqdm bar with the best loss and dev accuracy

    @model_validator(mode="after")
    def _check(self) -> BBTConfig:
        """Refuse a budget below one generation and inverted bounds."""
        if self.budget < self.popsize:
            raise TuningError(f"budget ({self.budget} calls) is below one generation (popsize {self.popsize})")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise TuningError(f"bounds must be (low, high) with low < high, got {self.bounds}")
        return self
