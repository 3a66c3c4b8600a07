"""The stored form of a bucket: a JSON list of entries, each wrapped with its format and creation time.

The wrapper lets a reader tell this cache's entries from anything else found under a key:
expired, corrupt and foreign items are counted and dropped instead of being returned.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .._exceptions import ConfigError

CACHE_FORMAT = 1  # version stamped on every stored entry


def wrap(entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Each entry wrapped with the format version and creation time; ConfigError unless all are JSON objects."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError("cache entries must be a list of dicts")
    for entry in entries:
        _check_json(entry)
    return [{"bb": CACHE_FORMAT, "created": now, "entry": entry} for entry in entries]


def encode(wrappers: list[dict[str, Any]]) -> str:
    """A bucket's wrapped entries as the compact JSON text that is stored."""
    return json.dumps(wrappers, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def live_entries(text: str | None, ttl: float | None, now: float) -> tuple[list[dict[str, Any]], int, bool]:
    """The well-formed, unexpired wrappers in a stored bucket, how many others were dropped, and
    whether the whole value was corrupt (not a JSON list)."""
    if text is None:
        return [], 0, False
    try:
        stored = json.loads(text)
    except ValueError:
        return [], 1, True
    if not isinstance(stored, list):
        return [], 1, True
    live = [item for item in stored if _is_wrapper(item) and (ttl is None or now - item["created"] < ttl)]
    return live, len(stored) - len(live), False


def _check_json(entry: dict[str, Any]) -> None:
    """ConfigError unless the entry survives strict JSON encoding (no NaN, no objects)."""
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cache entries must be plain JSON (dicts, lists, str, finite numbers): {exc}") from exc


def _is_wrapper(item: Any) -> bool:
    """Whether a stored item is an entry this cache wrote: our format, a finite time, a dict payload."""
    return (
        isinstance(item, dict)
        and item.keys() == {"bb", "created", "entry"}
        and item["bb"] == CACHE_FORMAT
        and isinstance(item["created"], (int, float))
        and not isinstance(item["created"], bool)
        and math.isfinite(item["created"])
        and isinstance(item["entry"], dict)
    )
