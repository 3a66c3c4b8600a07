"""Reading a text against a compiled schema: `match` says whether it is a complete valid document,
a prefix of one (with the text that must come next), or neither. Constrained decoding asks it about
each candidate token, and the finished answer is checked with it too, so one reading decides both.

Documents are canonical JSON as `json.dumps` writes it: `", "` and `": "` separators, no other
whitespace, object keys in the schema's order. Numbers keep at most 15 integer, 10 fraction and 3
exponent digits, a string without maxLength at most 1,000 characters, and values nest at most 32
deep, so that a rambling answer ends. Imports without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._schema import ANY, MAP, Node, dumps, first_chars

MAX_DEPTH = 32
MAX_STRING = 1000  # characters of a string without maxLength, so that a rambling value ends
DIGITS = "0123456789"
ESCAPES = '"\\/bfnrt'


@dataclass(frozen=True)
class Match:
    """What a text is under a schema: complete, a viable prefix (`forced`: text that must follow), or invalid."""

    status: str  # complete | partial | invalid
    forced: str = ""


COMPLETE, INVALID = Match("complete"), Match("invalid")


def match(node: Node, text: str) -> Match:
    """Whether text is a valid document under node, a prefix of one, or neither."""
    reader = _Reader(text)
    try:
        reader.value(node, 0)
    except _Partial as partial:
        return Match("partial", partial.forced)
    except _Invalid:
        return INVALID
    return COMPLETE if reader.pos == len(text) else INVALID


class _Partial(Exception):
    """The text ended inside a possible document; `forced` must come next."""

    def __init__(self, forced: str) -> None:
        self.forced = forced


class _Invalid(Exception):
    """No document starts with the text."""


class _Reader:
    """A recursive-descent reader over one text that stops where the text ends."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def peek(self) -> str:
        """The next character, or a partial result when the text ends here."""
        if self.pos >= len(self.text):
            raise _Partial("")
        return self.text[self.pos]

    def take(self) -> str:
        """Consume and return the next character."""
        char = self.peek()
        self.pos += 1
        return char

    def one_of(self, options: list[str]) -> str:
        """Consume the longest of the literal options that the text holds."""
        rest = self.text[self.pos :]
        full = [option for option in options if rest.startswith(option)]
        if full:
            chosen = max(full, key=len)
            self.pos += len(chosen)
            return chosen
        open_ = [option[len(rest) :] for option in options if option.startswith(rest)]
        if not open_:
            raise _Invalid
        raise _Partial(os.path.commonprefix(open_))

    def value(self, node: Node, depth: int) -> None:
        """One value of node."""
        if depth > MAX_DEPTH:
            raise _Invalid
        kind = node.kind
        if kind in ("union", "any"):
            char = self.peek()
            choices = node.choices if kind == "union" else _ANY_CHOICES
            chosen = next((c for c in choices if char in first_chars(c)), None)
            if chosen is None:
                raise _Invalid
            self.value(chosen, depth)
        elif kind == "object":
            self.object(node, depth)
        elif kind == "map":
            self.map(depth)
        elif kind == "array":
            self.array(node, depth)
        elif kind == "string":
            self.string(node)
        elif kind in ("number", "integer"):
            self.number(kind == "integer")
        else:
            self.one_of(list(node.options))

    def object(self, node: Node, depth: int) -> None:
        """`{"a": ..., "b": ...}`: keys in schema order, optional ones may be left out."""
        self.one_of(["{"])
        rest, first = list(node.properties), True
        while True:
            upto = next((i for i, (name, _) in enumerate(rest) if name in node.required), len(rest) - 1)
            keys = {("" if first else ", ") + dumps(name) + ": ": i for i, (name, _) in enumerate(rest[: upto + 1])}
            closable = not any(name in node.required for name, _ in rest)
            chosen = self.one_of([*(["}"] if closable else []), *keys])
            if chosen == "}":
                return
            index = keys[chosen]
            self.value(rest[index][1], depth + 1)
            rest, first = rest[index + 1 :], False

    def map(self, depth: int) -> None:
        """`{...}` with any string keys and any values."""
        self.one_of(["{"])
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            self.string(_STRING)
            self.one_of([": "])
            self.value(ANY, depth + 1)
            if self.one_of(["}", ", "]) == "}":
                return

    def array(self, node: Node, depth: int) -> None:
        """`[item, item]` within minItems..maxItems."""
        self.one_of(["["])
        items, count = node.items or ANY, 0
        if node.high == 0 or (node.low == 0 and self.peek() == "]"):
            self.one_of(["]"])
            return
        while True:
            self.value(items, depth + 1)
            count += 1
            ends = ["]"] if count >= node.low else []
            more = [", "] if node.high is None or count < node.high else []
            if self.one_of(ends + more) == "]":
                return

    def string(self, node: Node) -> None:
        """A JSON string, escapes checked, within minLength..maxLength characters."""
        self.one_of(['"'])
        length, high = 0, MAX_STRING if node.high is None else node.high
        while True:
            if length >= high:
                self.one_of(['"'])
                return
            char = self.take()
            if char == '"':
                if length < node.low:
                    raise _Invalid
                return
            if char == "\\":
                self.escape()
            elif ord(char) < 0x20:
                raise _Invalid
            length += 1

    def escape(self) -> None:
        """The rest of a backslash escape."""
        char = self.take()
        if char == "u":
            for _ in range(4):
                if self.take() not in "0123456789abcdefABCDEF":
                    raise _Invalid
        elif char not in ESCAPES:
            raise _Invalid

    def number(self, integer: bool) -> None:
        """A JSON number (an integer: no fraction or exponent), digits capped."""
        if self.peek() == "-":
            self.pos += 1
        if self.take() not in DIGITS:
            raise _Invalid
        if self.text[self.pos - 1] == "0":
            if self.at_digit():
                raise _Invalid  # a leading zero
        else:
            self.more_digits(14)
        if integer:
            return
        if self.peek() == ".":
            self.pos += 1
            self.digits(10)
        if self.peek() in "eE":
            self.pos += 1
            if self.peek() in "+-":
                self.pos += 1
            self.digits(3)

    def digits(self, most: int) -> None:
        """One to `most` digits."""
        if self.take() not in DIGITS:
            raise _Invalid
        self.more_digits(most - 1)

    def more_digits(self, most: int) -> None:
        """Up to `most` further digits; one more is invalid."""
        count = 0
        while self.at_digit():
            if count == most:
                raise _Invalid
            self.pos += 1
            count += 1

    def at_digit(self) -> bool:
        """Whether the next character is a digit; a partial result when the text ends here."""
        return self.peek() in DIGITS


_STRING = Node("string")
_ANY_CHOICES = (_STRING, Node("number"), MAP, Node("array", items=ANY), Node("literal", options=("true", "false", "null")))
