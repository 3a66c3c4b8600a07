"""The JSON Schema subset the local model can be held to: a response schema compiled into a tree
of `Node`s, local `$ref`s followed, anything outside the subset refused with a 400 that names the
keyword. `_matching` reads texts against the tree. Imports without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._requests import LocalRequestError

KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength",
     "maxLength", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"}
)  # fmt: skip
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated"})
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
NUMBER_START = "-0123456789"


@dataclass(frozen=True)
class Node:
    """One compiled schema: its kind and what that kind needs (see `compile_schema`)."""

    kind: str  # object | map (any keys) | array | string | number | integer | literal | union | any
    properties: tuple[tuple[str, Node], ...] = ()
    required: frozenset[str] = frozenset()
    items: Node | None = None
    low: int = 0  # minItems or minLength
    high: int | None = None  # maxItems or maxLength
    options: tuple[str, ...] = ()  # literal: the JSON texts allowed (enum, const, true/false, null)
    choices: tuple[Node, ...] = ()  # union: alternatives told apart by their first character


ANY = Node("any")
MAP = Node("map")


def compile_schema(schema: object, *, param: str) -> Node:
    """A response schema as a Node; its root must be an object, as OpenAI requires."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise LocalRequestError("the schema's root must be a JSON object schema ({'type': 'object', ...})", param=param)
    return _Compiler(schema, param).node(schema, ())


class _Compiler:
    """Reads a schema into Nodes, resolving local `$ref`s and refusing what the subset lacks."""

    def __init__(self, root: dict[str, Any], param: str) -> None:
        self.root, self.param = root, param
        self.refs: tuple[str, ...] = ()

    def refuse(self, why: str, path: tuple[str, ...]) -> LocalRequestError:
        """A 400 naming where in the schema the problem is."""
        where = "/".join(path) or "the root"
        return LocalRequestError(f"schema at {where}: {why} (not supported by the local model)", param=self.param)

    def node(self, schema: object, path: tuple[str, ...]) -> Node:
        """Compile one (sub)schema."""
        if schema is True or schema == {}:
            return ANY
        if not isinstance(schema, dict):
            raise self.refuse("a schema must be an object", path)
        unknown = sorted(set(schema) - KEYWORDS - ANNOTATIONS)
        if unknown:
            raise self.refuse(f"the keyword {unknown[0]!r}", path)
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise self.refuse("allOf with more than one schema", path)
            return self.node(parts[0], (*path, "allOf"))
        if "const" in schema:
            return Node("literal", options=(dumps(schema["const"]),))
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise self.refuse("enum must be a non-empty list", path)
            return Node("literal", options=tuple(dict.fromkeys(dumps(v) for v in schema["enum"])))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.union([self.node(s, (*path, key, str(i))) for i, s in enumerate(schema[key])], path)
        kind = schema.get("type", "object" if "properties" in schema else None)
        if isinstance(kind, list):
            return self.union([self.node({**schema, "type": k}, path) for k in kind], path)
        return self.typed(kind, schema, path)

    def typed(self, kind: object, schema: dict[str, Any], path: tuple[str, ...]) -> Node:
        """A schema with one `type`."""
        if kind is None:
            return ANY
        if kind not in TYPES:
            raise self.refuse(f"the type {kind!r}", path)
        if kind == "object":
            return self.object_node(schema, path)
        if kind == "array":
            items = self.node(schema.get("items", {}), (*path, "items"))
            low, high = self.bounds(schema, "minItems", "maxItems", path)
            return Node("array", items=items, low=low, high=high)
        if kind == "string":
            low, high = self.bounds(schema, "minLength", "maxLength", path)
            return Node("string", low=low, high=high)
        if kind == "boolean":
            return Node("literal", options=("true", "false"))
        if kind == "null":
            return Node("literal", options=("null",))
        return Node(str(kind))

    def bounds(
        self, schema: dict[str, Any], low_key: str, high_key: str, path: tuple[str, ...]
    ) -> tuple[int, int | None]:
        """A length or item-count range; a bound that is not a non-negative integer, or a range no value fits, is
        refused (constrained decoding could only end such an answer invalid)."""
        low, high = schema.get(low_key) or 0, schema.get(high_key)  # null as absent
        for key, value in ((low_key, low), (high_key, high)):
            if value is not None and (type(value) is not int or value < 0):
                raise self.refuse(f"{key} must be a non-negative integer, not {value!r}", path)
        if high is not None and low > high:
            raise self.refuse(f"{low_key} {low} is above {high_key} {high}, so no value fits", path)
        return low, high

    def object_node(self, schema: dict[str, Any], path: tuple[str, ...]) -> Node:
        """An object schema; with no `properties` any keys and values are allowed (json_object)."""
        properties = schema.get("properties")
        if properties is None:
            return MAP
        if not isinstance(properties, dict):
            raise self.refuse("properties must be an object", path)
        compiled = tuple((str(k), self.node(v, (*path, "properties", str(k)))) for k, v in properties.items())
        required = schema.get("required", [])
        if not isinstance(required, list) or not set(required) <= set(properties):
            raise self.refuse("required must list names of properties", path)
        return Node("object", properties=compiled, required=frozenset(required))

    def ref(self, ref: object, path: tuple[str, ...]) -> Node:
        """A local `#/...` reference, followed; a schema that refers to itself is refused."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.refuse(f"the reference {ref!r} (only local '#/...' references)", path)
        if ref in self.refs:
            raise self.refuse(f"the recursive reference {ref!r}", path)
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            if not isinstance(target, dict) or part not in target:
                raise self.refuse(f"the reference {ref!r} points nowhere", path)
            target = target[part]
        self.refs = (*self.refs, ref)
        try:
            return self.node(target, (*path, ref))
        finally:
            self.refs = self.refs[:-1]

    def union(self, choices: list[Node], path: tuple[str, ...]) -> Node:
        """Alternatives (anyOf, a list of types), which must start with different characters."""
        flat = [c for choice in choices for c in (choice.choices if choice.kind == "union" else (choice,))]
        if not flat:
            raise self.refuse("anyOf must list at least one schema", path)
        starts = [first_chars(c) for c in flat]
        if sum(len(s) for s in starts) != len(set().union(*starts)):
            raise self.refuse("alternatives that both start alike (say two objects or two strings)", path)
        return flat[0] if len(flat) == 1 else Node("union", choices=tuple(flat))


def dumps(value: Any) -> str:
    """A value in the canonical form documents use."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def first_chars(node: Node) -> set[str]:
    """The characters a value of node can start with."""
    starts = {"object": "{", "map": "{", "array": "[", "string": '"', "number": NUMBER_START, "integer": NUMBER_START}
    if node.kind in starts:
        return set(starts[node.kind])
    if node.kind == "literal":
        return {option[0] for option in node.options}
    if node.kind == "union":
        return set().union(*(first_chars(c) for c in node.choices))
    return set('{["tfn' + NUMBER_START)
