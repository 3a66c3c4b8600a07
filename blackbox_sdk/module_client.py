"""The module-level client: `blackbox_sdk.api_key = ...; blackbox_sdk.chat.completions.create(...)`,
as the openai package allows. Settings are read from the package's globals on each use.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["MODULE_SETTINGS", "module_client"]

MODULE_SETTINGS = ("api_key", "organization", "project", "base_url", "timeout", "max_retries", "default_headers", "default_query")

_lock = threading.Lock()
_cached: tuple[tuple[Any, ...], Any] | None = None


def module_client() -> Any:
    """The shared client for module-level use, rebuilt when a module setting changes."""
    global _cached
    import blackbox_sdk

    settings = tuple(_frozen(getattr(blackbox_sdk, name)) for name in MODULE_SETTINGS)
    with _lock:
        if _cached is None or _cached[0] != settings:
            kwargs = {name: getattr(blackbox_sdk, name) for name in MODULE_SETTINGS}
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
            _cached = (settings, blackbox_sdk.OpenAI(**kwargs))
        return _cached[1]


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a setting (mappings by their items)."""
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return value
