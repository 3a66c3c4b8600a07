"""Reranking: a scorer `(question, answers) -> scores` picks the best of several sampled candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._types import CHAT, Route


def question_of(route: Route, params: Mapping[str, Any]) -> str:
    """The text the candidates answer: the last user message for chat, the prompt otherwise."""
    if route is not CHAT:
        prompt = params.get("prompt")
        return prompt if isinstance(prompt, str) else str(prompt)
    for message in reversed(list(params.get("messages") or [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(part.get("text", "") for part in content or [] if isinstance(part, Mapping))
    return ""


def rank(scores: Sequence[float]) -> list[int]:
    """Candidate indices best first; ties keep sampling order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))
