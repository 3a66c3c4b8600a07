"""Checks a request before anything is spent: wrong shapes fail as `InvalidRequestError` (a 400)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openai

from .._exceptions import InvalidRequestError
from .._types import CHAT, COMPLETIONS, RESPONSES, Route

_UNSET = (openai.NotGiven, openai.Omit)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def given(value: Any) -> bool:
    """False for None and the openai NOT_GIVEN / omit sentinels."""
    return value is not None and not isinstance(value, _UNSET)


def _check_number(params: Mapping[str, Any], name: str, low: float, high: float) -> None:
    """A numeric option inside [low, high], when given."""
    value = params.get(name)
    if not given(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a number in [{low}, {high}], got {value!r}", param=name)


def validate_sampling(params: Mapping[str, Any]) -> None:
    """`n`, `max_tokens`, `temperature`, `top_p` in range."""
    for name in ("n", "max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if given(value) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}", param=name)
    _check_number(params, "temperature", 0.0, 2.0)
    _check_number(params, "top_p", 0.0, 1.0)


def validate_chat(params: Mapping[str, Any]) -> None:
    """Chat messages: a non-empty list of {role, content} with a known role."""
    messages = params.get("messages")
    if isinstance(messages, (str, bytes)) or not hasattr(messages, "__iter__"):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} objects", param="messages")
    messages = list(messages)
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}] must be an object with a role in {sorted(ROLES)}", param=f"messages[{i}]"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")
    validate_sampling(params)


def validate_completion(params: Mapping[str, Any]) -> None:
    """Legacy completions: a prompt string (or list of strings / token ids)."""
    prompt = params.get("prompt")
    if not isinstance(prompt, (str, list)):
        raise InvalidRequestError("prompt must be a string or a list", param="prompt")
    validate_sampling(params)


def validate_embedding(params: Mapping[str, Any]) -> None:
    """Embeddings: a non-empty string or list."""
    value = params.get("input")
    if not isinstance(value, (str, list)) or len(value) == 0:
        raise InvalidRequestError("input must be a non-empty string or list", param="input")


def validate_responses(params: Mapping[str, Any]) -> None:
    """Responses: `input` a string or a list of items (left out only to continue a stored prompt,
    response or conversation), `max_output_tokens`, `temperature`, `top_p` in range."""
    value = params.get("input")
    continues = any(given(params.get(name)) for name in ("prompt", "previous_response_id", "conversation"))
    if not given(value) and not continues:
        raise InvalidRequestError("input is required: a string or a list of input items", param="input")
    if given(value) and (not isinstance(value, (str, list, tuple)) or not (value or continues)):
        raise InvalidRequestError("input must be a non-empty string or list of input items", param="input")
    cap = params.get("max_output_tokens")
    if given(cap) and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise InvalidRequestError(f"max_output_tokens must be an integer >= 1, got {cap!r}", param="max_output_tokens")
    _check_number(params, "temperature", 0.0, 2.0)
    _check_number(params, "top_p", 0.0, 1.0)


def validate_model(params: Mapping[str, Any]) -> None:
    """A model name: a non-empty string (None would go out as `"model": null`, and no price fits it)."""
    model = params.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model must be a non-empty string, got {model!r}", param="model")


def validate(route: Route, params: Mapping[str, Any]) -> None:
    """The checks of the request's route."""
    validate_model(params)
    if route is CHAT:
        validate_chat(params)
    elif route is COMPLETIONS:
        validate_completion(params)
    elif route is RESPONSES:
        validate_responses(params)
    else:
        validate_embedding(params)
