"""`response.blackbox`: what the SDK did for one call, attached to every response it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import openai
from openai._models import add_request_id


@dataclass
class BlackBoxInfo:
    """Call id, cache and cost facts, and the reranker's candidates and scores for one call."""

    call_id: str
    cache_hit: bool = False  # every returned candidate came from the cache
    cached_candidates: int = 0  # how many candidates the cache supplied
    cost_usd: float = 0.0  # settled cost of what was sent (0 for a hit)
    usage_counted: bool = False  # the server sent no usage, so the SDK counted tokens itself
    requests: int = 0  # HTTP requests sent (fan-out included, retries excluded)
    retries: int = 0
    latency_s: float = 0.0
    candidates: list[str] | None = None  # every candidate the reranker saw, in sampling order
    scores: list[float] | None = None  # the reranker's score per candidate (higher is better)
    chosen: list[int] = field(default_factory=list)  # candidate indices returned as choices, in order
    usage: dict[str, Any] | None = None  # tokens of the whole call (a stream's too, once it has ended), as logged
    error: str | None = None  # why a stream that ended was incomplete (the server cut it short), as logged; None when whole

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dict(self.__dict__)


def attach(obj: Any, info: BlackBoxInfo) -> Any:
    """Set `obj.blackbox` without making it part of the openai model's fields or its JSON dump; an
    openai model the SDK built (a hit, a merged or parsed answer) gets openai's `_request_id` too
    (None when no one request answered it)."""
    object.__setattr__(obj, "blackbox", info)
    if isinstance(obj, openai.BaseModel) and not _has_request_id(obj):
        add_request_id(obj, None)
    return obj


def _has_request_id(model: openai.BaseModel) -> bool:
    """Whether openai set the model's `_request_id` (as an attribute, or a pydantic private one), asked without `hasattr`:
    a missing one goes through pydantic's `__getattr__` and an AttributeError, a tenth of a cache hit's time."""
    private = model.__pydantic_private__
    return "_request_id" in model.__dict__ or (private is not None and "_request_id" in private)


def rebuilt(obj: Any, original: Any) -> Any:
    """`obj`, an answer the SDK built over `original` (the one response that answered it, or None): openai's
    `_request_id` carried over, so a reranked or counted answer keeps the request id a support ticket needs."""
    request_id = getattr(original, "_request_id", None)
    if request_id is not None:
        add_request_id(obj, request_id)
    return obj
