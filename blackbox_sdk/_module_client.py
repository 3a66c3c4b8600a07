"""The module-level client: `blackbox_sdk.api_key = ...; blackbox_sdk.chat.completions.create(...)`,
as the openai package allows. Settings are read from the package's globals on each use.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ._client import OpenAI

MODULE_SETTINGS = (
    "admin_api_key", "api_key", "base_url", "default_headers", "default_query", "http_client", "max_retries", "organization",
    "project", "timeout", "webhook_secret",
)

_lock = threading.Lock()
_cached: tuple[tuple[Any, ...], Any] | None = None


def module_client(package: Mapping[str, Any]) -> OpenAI:
    """The shared client for module-level use (settings read from the package's globals), rebuilt when one changes."""
    global _cached
    settings = tuple(_frozen(package[name]) for name in MODULE_SETTINGS)
    with _lock:
        if _cached is None or _cached[0] != settings:
            kwargs = {name: package[name] for name in MODULE_SETTINGS if package[name] is not None}
            _cached = (settings, OpenAI(**kwargs))
        return _cached[1]


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a setting (mappings by their items)."""
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return value
