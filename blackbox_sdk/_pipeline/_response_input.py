"""The Responses API's `instructions` + `input` read as chat messages: what the SDK counts before
sending (the budget's estimate, a rate limit's admission) and what a reranker scores answers against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._types import Json

_ROLES = {"system", "developer", "user", "assistant"}
_TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "reasoning_text"}
_IMAGE_PARTS = {"input_image", "computer_screenshot"}  # an image given, or a computer-use tool's screenshot
_FILE_FIELDS = ("file_data", "file_id", "file_url", "filename")  # what an `input_file` part may carry
_TOOL_OUTPUTS = {"function_call_output", "custom_tool_call_output", "computer_call_output"}  # a tool's output, given back


def _part(part: Any) -> Json:
    """One content part as a chat part: text as text, an image as image_url, a file as file, anything else as its JSON."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        return {"type": "text", "text": json.dumps(part, default=str)}
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_file":  # as chat's file part, which the count bounds when it is a PDF given inline
        return {"type": "file", "file": {key: part[key] for key in _FILE_FIELDS if key in part}}
    if kind in _IMAGE_PARTS:
        return {"type": "image_url", "image_url": {"url": str(part.get("image_url") or part.get("file_id") or ""), "detail": part.get("detail") or "auto"}}
    return {"type": "text", "text": json.dumps(dict(part), sort_keys=True, default=str)}


def _content(content: Any) -> str | list[Json]:
    """A message's content: a string stays one; a list of parts becomes chat parts (plain text when all are text)."""
    if isinstance(content, str):
        return content
    parts = [_part(p) for p in content or []]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _message(item: Any) -> Json:
    """One input item as a chat message (tool calls and their outputs as text, so every counter reads them)."""
    if not isinstance(item, Mapping):
        return {"role": "user", "content": json.dumps(item, default=str)}
    if item.get("role") in _ROLES:
        role = "system" if item["role"] == "developer" else item["role"]
        return {"role": role, "content": _content(item.get("content"))}
    kind = item.get("type")
    if kind == "function_call":
        return {"role": "assistant", "content": f"{item.get('name', '')}({item.get('arguments', '')})"}
    if kind in _TOOL_OUTPUTS:  # text, or parts (an image counted as an image, not as its data URL's text)
        output = item.get("output")
        return {"role": "user", "content": _content(output if isinstance(output, (str, list)) else [output])}
    return {"role": "user", "content": json.dumps(dict(item), sort_keys=True, default=str)}


def input_messages(params: Mapping[str, Any]) -> list[Json]:
    """`instructions` (a system message) and `input` (a user message, or its items) as chat messages."""
    messages: list[Json] = []
    instructions = params.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = params.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, (list, tuple)):
        messages += [_message(item) for item in given]
    return messages


def question(params: Mapping[str, Any]) -> str:
    """The text the answers answer, for a reranker: `input` as a string, else its last user message's text parts joined
    (a tool's output, or an earlier answer's item given back as openai's object, is counted as a user turn but is not the question)."""
    given = params.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given if isinstance(given, (list, tuple)) else []):
        if isinstance(item, Mapping) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            texts = [part.get("text") for part in content or [] if isinstance(part, Mapping)]
            return " ".join(text for text in texts if isinstance(text, str))  # as chat's question, and the feedback log's
    return ""
