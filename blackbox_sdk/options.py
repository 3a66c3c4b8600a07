"""The SDK's own options for a client, and their per-call overrides (a new Options, never mutation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .retry import RetryPolicy

__all__ = ["BeamOptions", "DEFAULT_RERANK_N", "Options", "Scorer", "open_beam", "open_budget", "open_cache", "open_log", "open_reranker", "open_soft_prompt"]

Scorer = Callable[[str, Sequence[str]], Sequence[float]]
DEFAULT_RERANK_N = 8
CACHE_MODES = ("on", "read", "write", "refresh", "off")


def open_cache(value: Any, current: Any = None) -> Any:
    """A Cache from what a caller passed: a folder, a Cache, a mode string for the current one, or None."""
    from .cache import Cache

    if value is None or isinstance(value, Cache):
        return value
    if isinstance(value, str) and value in CACHE_MODES:
        if current is None:
            raise ConfigError(f"cache={value!r} needs a cache on the client: OpenAI(cache='folder')")
        return current.with_mode(value)
    if isinstance(value, (str, Path)):
        return Cache(value)
    raise ConfigError(f"cache must be a folder, a blackbox_sdk.Cache, one of {CACHE_MODES} or None; got {value!r}")


def open_log(value: Any) -> Any:
    """A CallLog from a file path, a CallLog, or None."""
    from .calllog import CallLog

    if value is None or isinstance(value, CallLog):
        return value
    if isinstance(value, (str, Path)):
        return CallLog(value)
    raise ConfigError(f"log must be a file path, a blackbox_sdk.CallLog or None; got {value!r}")


def open_budget(value: Any) -> Any:
    """A Budget, or None for no limit."""
    from .budget import Budget

    if value is None or isinstance(value, Budget):
        return value
    raise ConfigError(f"budget must be a blackbox_sdk.Budget or None; got {value!r}")


def open_reranker(value: Any) -> Scorer | None:
    """A scorer from an adapter folder, an object with `.score`, a callable, or None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        from .rerank import load_scorer

        return load_scorer(value)
    score = getattr(value, "score", None)
    if callable(score):
        return score
    if callable(value):
        return value
    raise ConfigError(f"reranker must be an adapter folder, an Adapter, a callable or None; got {value!r}")


@dataclass(frozen=True)
class BeamOptions:
    """Step-wise reranking (the paper's sentence-level beam search) instead of best-of-n."""

    beam: int = 3  # prefixes kept after each step
    candidates: int = 5  # next steps sampled per kept prefix per step
    max_steps: int = 8
    answer_marker: str | None = "####"  # a step holding it ends its beam
    separator: str = "\n"  # the step boundary (sampling stops there)
    mode: str = "chat"  # "chat": the partial answer quoted in the user turn; "completions": ChatML continued

    def __post_init__(self) -> None:
        for name in ("beam", "candidates", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"beam option {name} must be an integer >= 1, got {value!r}")
        if self.mode not in ("chat", "completions"):
            raise ConfigError(f"beam option mode must be 'chat' or 'completions', got {self.mode!r}")


def open_beam(value: Any) -> BeamOptions | None:
    """BeamOptions from None (best-of-n), True (defaults), a mapping or a BeamOptions."""
    if value is None or value is False:
        return None
    if value is True:
        return BeamOptions()
    if isinstance(value, BeamOptions):
        return value
    if isinstance(value, dict):
        try:
            return BeamOptions(**value)
        except TypeError as error:
            raise ConfigError(f"unknown beam option: {error}") from None
    raise ConfigError(f"beam must be None, True, a dict of BeamOptions fields or a BeamOptions; got {value!r}")


def open_soft_prompt(value: Any) -> Any:
    """A SoftPrompt from a saved folder or a SoftPrompt, or None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        from .soft_prompt import SoftPrompt

        return SoftPrompt.load(value)
    if hasattr(value, "embeds") and hasattr(value, "name"):
        return value
    raise ConfigError(f"soft_prompt must be a SoftPrompt, a saved soft-prompt folder or None; got {value!r}")


@dataclass(frozen=True)
class Options:
    """Cache, budget, log, reranker, retries: what the SDK adds around each call."""

    cache: Any = None
    budget: Any = None
    log: Any = None
    reranker: Scorer | None = None
    rerank_n: int = DEFAULT_RERANK_N
    beam: BeamOptions | None = None
    soft_prompt: Any = None  # a tuned SoftPrompt (Black-Box Tuning) served with every call
    budget_key: str | None = None
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def build(
        cls,
        *,
        cache: Any = None,
        budget: Any = None,
        log: Any = None,
        reranker: Any = None,
        rerank_n: int | None = None,
        beam: Any = None,
        soft_prompt: Any = None,
        budget_key: str | None = None,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
    ) -> Options:
        """Options from constructor arguments, each checked and opened; `retry` wins over `max_retries`."""
        return cls(
            cache=open_cache(cache),
            budget=open_budget(budget),
            log=open_log(log),
            reranker=open_reranker(reranker),
            rerank_n=_rerank_n(rerank_n),
            beam=open_beam(beam),
            soft_prompt=open_soft_prompt(soft_prompt),
            budget_key=budget_key,
            retry=retry if retry is not None else RetryPolicy(max_retries=max_retries),
        )

    def merge(self, **overrides: Any) -> Options:
        """These options with per-call overrides (only the keys given) applied."""
        changes: dict[str, Any] = {}
        if "cache" in overrides:
            changes["cache"] = open_cache(overrides["cache"], self.cache)
        if "budget" in overrides:
            changes["budget"] = open_budget(overrides["budget"])
        if "log" in overrides:
            changes["log"] = open_log(overrides["log"])
        if "reranker" in overrides:
            changes["reranker"] = open_reranker(overrides["reranker"])
        if "rerank_n" in overrides:
            changes["rerank_n"] = _rerank_n(overrides["rerank_n"])
        if "beam" in overrides:
            changes["beam"] = open_beam(overrides["beam"])
        if "soft_prompt" in overrides:
            changes["soft_prompt"] = open_soft_prompt(overrides["soft_prompt"])
        if "budget_key" in overrides:
            changes["budget_key"] = overrides["budget_key"]
        if "retry" in overrides:
            changes["retry"] = overrides["retry"]
        if "max_retries" in overrides:
            changes["retry"] = replace(self.retry, max_retries=overrides["max_retries"])
        return replace(self, **changes)


def _rerank_n(value: int | None) -> int:
    """rerank_n checked: an integer >= 1 (None means the default)."""
    if value is None:
        return DEFAULT_RERANK_N
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"rerank_n must be an integer >= 1, got {value!r}")
    return value
