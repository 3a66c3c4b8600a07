"""What in a request changes the rates it is billed at: its ``service_tier``, and audio in its prompt or its answer.

A budget prices such a call at the tier's rates and reserves audio at the dearer of the text and audio rates
(``Budget.reserve``), and refuses it under a cap when the model's price lacks them.
"""

from __future__ import annotations

from typing import Any

from .._logging import logger
from .._types import CHAT, Json, Route
from ..budget import PRIORITY_TIERS


def service_tier(params: Json) -> str | None:
    """The tier the request asks for; None when it leaves it to the provider (the standard tier unless the
    project's default says otherwise, which only the answer's ``service_tier`` tells)."""
    tier = params.get("service_tier")
    return tier if isinstance(tier, str) else None


def has_audio(route: Route, params: Json) -> bool:
    """Whether the request asks for an audio answer or sends audio (an ``input_audio`` part anywhere in its input)."""
    if route is CHAT:
        modalities = params.get("modalities")
        if params.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
            return True
    return _holds_audio(params.get("messages", params.get("input")), depth=0)


def _holds_audio(value: Any, depth: int) -> bool:
    """Whether ``value`` (a request's messages or input) holds an ``input_audio`` part, looked for a few levels deep."""
    if depth > 6:
        return False
    if isinstance(value, dict):
        return value.get("type") == "input_audio" or any(_holds_audio(item, depth + 1) for item in value.values() if isinstance(item, (dict, list)))
    if isinstance(value, list):
        return any(_holds_audio(item, depth + 1) for item in value)
    return False


def warn_unasked_priority(call_id: str, params: Json, response: Json) -> None:
    """Warn when an answer says it was served at the priority tier that its request did not ask for (the project's
    default tier): its budget charged it at the rates the request asked for, which are lower."""
    served = response.get("service_tier")
    if served in PRIORITY_TIERS and service_tier(params) not in PRIORITY_TIERS:
        logger.warning(
            "call %s was served at the %r tier (the project's default) without asking for it, and was charged at the "
            "standard rates: under a budget, send service_tier='default', or ask for 'priority' with its rates", call_id, served,
        )
