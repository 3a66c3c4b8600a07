"""RateLimits' option checks: every bad value is a ConfigError at construction, never a call later."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from .._redis_url import REDIS_OR_UNIX, RedisURL, is_redis_url
from .._sqlite import SHARED_TABLES, refuse_foreign
from .._text import checked_text
from ._redis import KEY_PREFIX, SOCKET_TIMEOUT_S

MAX_AMOUNT = 2**53  # the largest count every store holds exactly: Lua's numbers (Redis), SQLite's INTEGER
MAX_WINDOW_S = 366 * 86_400.0  # a year at most: the Redis keys' expiry in ms and the stored times stay exact


def limit(name: str, value: Any) -> int | None:
    """A per-window limit: None, or a positive integer (not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_AMOUNT:
        raise ConfigError(f"{name} must be a positive integer up to 2**53 or None, got {value!r}")
    return value


def seconds(name: str, value: Any, *, zero: bool) -> float:
    """A finite number of seconds, > 0 (or >= 0 where ``zero``); an int too large for a float is not one (no OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= sys.float_info.max or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def window(value: Any) -> float:
    """The window's length: seconds > 0 and at most a year (a longer one would overflow the stores' arithmetic at the first call)."""
    seconds_ = seconds("window_s", value, zero=False)
    if seconds_ > MAX_WINDOW_S:
        raise ConfigError(f"window_s must be at most {MAX_WINDOW_S:g} seconds (a year), got {value!r}")
    return seconds_


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """One of a few option words."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


def is_url(store: str | Path | None) -> bool:
    """Whether a store option names a server (Redis) rather than a file."""
    return isinstance(store, str) and "://" in store


def store(value: Any) -> str | Path | None:
    """None (in-process), a Redis URL, or an SQLite file path (``~`` expanded) that is not another application's database."""
    if value is None:
        return None
    if is_redis_url(value) or (isinstance(value, str) and "://" in value):  # is_redis_url: ConfigError for redis:/host
        # a ConfigError now for a bad URL or option, or one the server refuses (its password never shown), not at the first call
        RedisURL(value, "rate-limit store", schemes=REDIS_OR_UNIX).check(
            SOCKET_TIMEOUT_S, forgets="the requests and tokens it counts in each window", prefix=f"{KEY_PREFIX}:"
        )
        return value
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        path = Path(value).expanduser()
        with contextlib.suppress(OSError, sqlite3.Error):  # a file SQLite can't read: StoreUnavailableError when it opens
            refuse_foreign(path, SHARED_TABLES, "rate-limit store")  # another application's database: ConfigError now
        return path
    raise ConfigError(f"store must be None, a file path or a redis:// URL, got {value!r}")


def callable_or_none(name: str, value: Any, *, optional: bool) -> None:
    """An injected clock or sleep must be callable."""
    if (value is None and optional) or callable(value):
        return
    raise ConfigError(f"{name} must be callable{' or None' if optional else ''}, got {value!r}")


def tokens(name: str, value: Any) -> int:
    """A token amount: a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT:
        raise ConfigError(f"{name} must be a non-negative integer up to 2**53, got {value!r}")
    return value


def label(name: str, value: Any, *, optional: bool) -> str | None:
    """A key or model name: a non-empty string that encodes as UTF-8 (or None where ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string{' or None' if optional else ''}, got {value!r}")
    return checked_text(value, name)  # half an emoji: no store can write it as UTF-8
