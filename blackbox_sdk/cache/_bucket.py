"""The stored form of a bucket: a JSON list of entries, each wrapped with its format and creation time.

The wrapper lets a reader tell this cache's entries from anything else found under a key:
expired, corrupt and foreign items are counted and dropped instead of being returned.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .._exceptions import ConfigError

CACHE_FORMAT = 1  # version stamped on every stored entry

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # compact, strict; built once
_SURROGATE = re.compile("[\ud800-\udfff]")


def _finite(text: str) -> float:
    """A stored JSON number as a float; ValueError for one beyond a float (``1e400``), which would read as infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is beyond a float")
    return value


def _no_constant(name: str) -> Any:
    """ValueError for ``NaN`` and ``Infinity``, which Python's json reads but strict JSON (and this cache) never writes."""
    raise ValueError(f"{name} is not JSON")


# strict: a non-finite number would be served, and would make the next write of the bucket fail to encode it
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)


def _encoded(value: Any) -> str:
    """Compact JSON text that every store can write as UTF-8: a lone surrogate (an emoji a server cut
    in half) is escaped as ``\\udXXX``, which JSON reads back as the same string, not left raw."""
    text = _ENCODER.encode(value)
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def wrap(entries: list[dict[str, Any]], now: float) -> list[str]:
    """Each entry wrapped with the format version and creation time, as the JSON text that is stored:
    encoded once, which also checks it (ConfigError unless all are plain JSON objects)."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError("cache entries must be a list of dicts")
    try:
        return [_encoded({"bb": CACHE_FORMAT, "created": now, "entry": entry}) for entry in entries]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cache entries must be plain JSON (dicts, lists, str, finite numbers): {exc}") from exc


def encode(wrappers: list[dict[str, Any]]) -> str:
    """A bucket's wrapped entries as the compact JSON text that is stored."""
    return _encoded(wrappers)


def joined(kept: list[dict[str, Any]], fresh: list[str], limit: int) -> str:
    """The stored text of a bucket of the ``kept`` wrappers then the ``fresh`` ones (already text),
    the newest ``limit`` of them; only the kept ones that stay are encoded."""
    fresh = fresh[-limit:]
    room = limit - len(fresh)
    texts = [_encoded(wrapper) for wrapper in kept[max(0, len(kept) - room):]] if room else []
    return "[" + ",".join(texts + fresh) + "]"


def live_entries(text: str | None, ttl: float | None, now: float) -> tuple[list[dict[str, Any]], int, bool]:
    """The well-formed, unexpired wrappers in a stored bucket, how many others were dropped, and
    whether the whole value was corrupt (not a JSON list, a number beyond a float or NaN, or nested too deep for Python to read)."""
    if text is None:
        return [], 0, False
    try:
        stored = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return [], 1, True
    if not isinstance(stored, list):
        return [], 1, True
    live = [item for item in stored if _is_wrapper(item) and (ttl is None or now - item["created"] < ttl)]
    return live, len(stored) - len(live), False


def _is_wrapper(item: Any) -> bool:
    """Whether a stored item is an entry this cache wrote: our format, a finite time, a dict payload."""
    return (
        isinstance(item, dict)
        and item.keys() == {"bb", "created", "entry"}
        and item["bb"] == CACHE_FORMAT
        and _is_time(item["created"])
        and isinstance(item["entry"], dict)
    )


def _is_time(value: Any) -> bool:
    """Whether a stored creation time is one this cache could have written: a finite float, or an integer
    a float holds exactly (a planted 400-digit integer would overflow the TTL arithmetic)."""
    if type(value) is int:
        return abs(value) < 2**53
    return type(value) is float and math.isfinite(value)
