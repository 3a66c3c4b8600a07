"""Types every layer shares: JSON bodies, routes (what differs between chat, completions and
embeddings), the reranker's scorer, and usage arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
Scorer = Callable[[str, Sequence[str]], Sequence[float]]  # (question, answers) -> one score each, higher is better


@dataclass(frozen=True)
class Route:
    """What differs between chat and legacy completions: where the text sits, what objects are called."""

    name: str
    object: str
    chunk_object: str

    def text(self, choice: Json) -> str:
        """The answer text of one choice."""
        if self.name == CHAT_NAME:
            return (choice.get("message") or {}).get("content") or ""
        return choice.get("text") or ""

    def with_text(self, choice: Json, text: str) -> Json:
        """A copy of `choice` whose answer text is `text`."""
        out = copy.deepcopy(choice)
        if self.name == CHAT_NAME:
            out.setdefault("message", {"role": "assistant"})["content"] = text
        else:
            out["text"] = text
        return out

    def delta_text(self, chunk_choice: Json) -> str:
        """The text a streamed chunk's choice adds."""
        if self.name == CHAT_NAME:
            return (chunk_choice.get("delta") or {}).get("content") or ""
        return chunk_choice.get("text") or ""


CHAT_NAME = "chat.completions"
CHAT = Route(name=CHAT_NAME, object="chat.completion", chunk_object="chat.completion.chunk")
COMPLETIONS = Route(name="completions", object="text_completion", chunk_object="text_completion")
EMBEDDINGS = Route(name="embeddings", object="list", chunk_object="")


def add_usage(a: Json, b: Json) -> Json:
    """Two usages summed (prompt, completion, total)."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(a.get(k) or 0) + int(b.get(k) or 0) for k in keys}
