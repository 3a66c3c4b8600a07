"""Structured output requests: chat's `response_format` and the Responses API's `text.format`, read
into the schema the answer is held to and a system instruction that shows the model the shape.

`{"type": "text"}` (or nothing) asks for free text; `{"type": "json_object"}` for any JSON object
(or, as llama.cpp's servers take it, one valid under the schema given beside it as `"schema"`);
`json_schema` for an object valid under its schema (the subset in `_schema`). Imports without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._requests import LocalRequestError, Message
from ._matching import match
from ._schema import Node, compile_schema

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Structured:
    """What a structured answer must be: the compiled schema and the instruction that describes it."""

    node: Node
    instruction: str
    needs_json_word: bool = False  # OpenAI's plain json_object mode: the messages must say "json" themselves


def chat_format(response_format: object) -> Structured | None:
    """The structured output a chat `response_format` asks for, None for text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise LocalRequestError("response_format must be an object", param="response_format")
    inner = response_format.get("json_schema")
    fields = {**inner, "type": response_format.get("type")} if isinstance(inner, dict) else dict(response_format)
    if response_format.get("type") == "json_schema" and not isinstance(inner, dict):
        raise LocalRequestError("response_format.json_schema must be an object", param="response_format.json_schema")
    return _read(fields, "response_format", "response_format.json_schema")


def text_format(text: object) -> Structured | None:
    """The structured output a Responses `text` config asks for, None for text."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise LocalRequestError("text must be an object", param="text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise LocalRequestError("text.format must be an object", param="text.format")
    return _read(fmt, "text.format", "text.format")


def _read(fields: dict[str, Any], param: str, schema_param: str) -> Structured | None:
    """A format's fields (`type`, and for json_schema `name`, `schema`, `strict`) as a Structured."""
    kind = fields.get("type")
    if kind == "text":
        return None
    if kind == "json_object":  # llama.cpp's servers also take a schema here, under "schema"
        schema = fields.get("schema") or JSON_OBJECT_SCHEMA
        node = compile_schema(schema, param=f"{param}.schema")
        return Structured(node, instruction(schema, None), needs_json_word="schema" not in fields)
    if kind != "json_schema":
        message = f"{param}.type must be 'text', 'json_object' or 'json_schema', not {kind!r}"
        raise LocalRequestError(message, param=f"{param}.type")
    name = fields.get("name")
    if not isinstance(name, str) or not name:
        raise LocalRequestError(f"{schema_param}.name is required", param=f"{schema_param}.name")
    schema = fields.get("schema", JSON_OBJECT_SCHEMA)
    node = compile_schema(schema, param=f"{schema_param}.schema")
    return Structured(node, instruction(schema, fields.get("description")))


def instruction(schema: dict[str, Any], description: object) -> str:
    """The system instruction: answer with JSON only, in this shape."""
    lines = ["Reply with one JSON object and nothing else."]
    if isinstance(description, str) and description:
        lines.append(description)
    if schema.get("properties"):
        lines.append("Use this JSON schema: " + json.dumps(_bare(schema, schema)))
    return " ".join(lines)


def _bare(schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """The schema without titles and definitions (refs inlined), which a small model reads more easily."""
    if depth > 8 or not isinstance(schema, dict):
        return schema
    if isinstance(schema.get("$ref"), str):
        target: Any = root
        for part in [p for p in schema["$ref"][1:].split("/") if p]:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _bare(target, root, depth + 1)
    skip = {"title", "$defs", "definitions", "additionalProperties", "$schema", "default"}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in skip:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: _bare(v, root, depth + 1) for k, v in value.items()}
        elif key in ("items",) or (key in ("anyOf", "oneOf", "allOf") and isinstance(value, list)):
            out[key] = [_bare(v, root, depth + 1) for v in value] if isinstance(value, list) else _bare(value, root, depth + 1)
        else:
            out[key] = value
    return out


def check_json_word(messages: list[Message], structured: Structured | None) -> None:
    """Refuse OpenAI's plain json_object mode, as OpenAI does, unless the caller's own messages say "json"
    (the instruction this backend adds would otherwise hide a request that fails against OpenAI)."""
    if structured is not None and structured.needs_json_word and not any("json" in m.content.lower() for m in messages):
        message = "'messages' must contain the word 'json' in some form, to use a format of type 'json_object'"
        raise LocalRequestError(message, param="messages")


def with_instruction(messages: list[Message], structured: Structured | None) -> list[Message]:
    """The conversation with the format's instruction in its system message (added first when there is none)."""
    if structured is None:
        return messages
    first = messages[0] if messages else None
    if first is not None and first.role in ("system", "developer"):
        merged = first.model_copy(update={"content": f"{first.content}\n\n{structured.instruction}"})
        return [merged, *messages[1:]]
    return [Message(role="system", content=structured.instruction), *messages]


def conforms(structured: Structured, text: str) -> bool:
    """Whether a finished answer is a complete, valid document under the format's schema."""
    return match(structured.node, text).status == "complete"
