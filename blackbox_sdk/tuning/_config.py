"""The options of a black-box tuning run, validated up front so that a bad setting costs no call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._exceptions import TuningError
from ._template import Placement

MAX_D = 10_000  # CMA-ES keeps a d x d covariance and decomposes it: far beyond the paper's 500 it only runs out of memory
MAX_PROMPT_LEN = 1_000  # 20x the paper's 50, as MAX_D is 20x its d: A alone is L * H * d floats (500 + L vectors per example)
MAX_SEED = 2**64 - 1  # torch.Generator's largest seed


class BBTConfig(BaseModel):
    """Options of a black-box tuning run; defaults are the paper's (official code) settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d: int = Field(500, ge=1, le=MAX_D)  # dimension of the search space z
    prompt_len: int = Field(50, ge=1, le=MAX_PROMPT_LEN)  # L: soft-prompt vectors
    popsize: int = Field(20, ge=2)  # CMA-ES population per generation
    sigma0: float = Field(1.0, gt=0, allow_inf_nan=False)  # CMA-ES initial step size (the ICML paper: 0.5 with bounds)
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)  # A's scale: A z starts with per-entry std ~ alpha * std_e
    bounds: tuple[float, float] | None = None  # box on every z coordinate, e.g. (-5, 5); None: unbounded
    budget: int = Field(
        8000, ge=1
    )  # training calls (candidate x whole train set); a run stops at budget // popsize generations
    loss: Literal["ce", "hinge", "neg_acc"] = "ce"  # cross entropy, multi-class hinge, or minus accuracy
    margin: float = Field(2.0, gt=0, allow_inf_nan=False)  # hinge margin, in log-prob units
    p0: Literal["zeros", "vocab"] | Path = "zeros"  # offset: zeros, word embeddings, or a saved SoftPrompt folder
    p0_words: str | None = (
        None  # with p0="vocab": text whose token embeddings (cycled to L) start the prompt; None: random tokens
    )
    placement: Placement = "prefix"  # where the prompt goes: prefix (paper), after_text or suffix (KV cache reused)
    deep: bool = False  # BBTv2: a prompt at every layer's input, one CMA-ES per layer in turn (local models only)
    dev_every: int = Field(100, ge=1)  # training calls between dev evaluations (the paper: 100)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # seeds A, random p0 words and CMA-ES sampling
    batch_size: int = Field(256, ge=1)  # sequences per forward pass
    checkpoint_dir: Path | None = None  # where the resumable CMA-ES state goes; None: no checkpoints
    checkpoint_every: int = Field(10, ge=1)  # generations between checkpoints
    progress: bool = True  # tqdm bar with the best loss and dev accuracy

    def __init__(self, /, **options: Any) -> None:
        """Validate the options; TuningError naming each bad field, so a bad setting is a BlackBoxError."""
        try:
            super().__init__(**options)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'BBTConfig'}: {e['msg']}" for e in error.errors())
            raise TuningError(f"bad BBTConfig: {problems}") from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: Any) -> Any:
        """Refuse True/False or a string for a number (pydantic would read them as 1, 0 and "7" as 7), and anything else
        for a bool ("yes", 1)."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, (bool, str, bytes)) and annotation in (int, float):
            raise ValueError(f"a number is needed, not {type(value).__name__} {value!r:.40}")
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"True or False is needed, not {type(value).__name__} {value!r:.40}")
        return value

    @model_validator(mode="after")
    def _check(self) -> BBTConfig:
        """Refuse a budget below one generation and bounds that are inverted or leave out z = 0, where the search starts."""
        if self.budget < self.popsize:
            raise TuningError(f"budget ({self.budget} calls) is below one generation (popsize {self.popsize})")
        low, high = self.bounds or (-1.0, 1.0)
        if not (low <= 0 <= high and low < high):
            raise TuningError(f"bounds must be (low, high) with low <= 0 <= high, low < high (z starts at 0), got {self.bounds}")
        return self
