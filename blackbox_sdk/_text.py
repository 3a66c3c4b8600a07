"""Strings every store can write: UTF-8 text (no lone surrogate), checked where a caller hands one in.

SQLite, PostgreSQL and Redis take text as UTF-8, and Python raises `UnicodeEncodeError` for a lone
surrogate (half of an emoji cut in two) only once a store encodes it, after work may have been
spent. A name the caller looks up or charges by (a budget key, a model, a call id) is checked here
first and refused with a `ConfigError` that names it.
"""

from __future__ import annotations

from pathlib import Path

from ._exceptions import ConfigError


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (holds no lone surrogate); ASCII is known at once."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_text(value: object, what: str) -> str:
    """`value` when it is a non-empty string that encodes as UTF-8, else a ConfigError naming `what`."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r:.80}")
    if not is_utf8(value):
        raise ConfigError(f"{what} must be text that encodes as UTF-8 (it holds a lone surrogate), got {value!r:.80}")
    return value


def checked_path(value: str | Path, what: str) -> Path:
    """`value` as a path with ``~`` expanded; a ConfigError naming `what` for one no file can have (a NUL byte), which
    the system would refuse later as a bare ValueError, and for a blank one ("" or spaces: a setting left empty), which
    would name the working folder or make a file called "   " there."""
    if not str(value).strip():
        raise ConfigError(f"{what} must be a file system path; got a blank one, {str(value)!r:.80}")
    if "\x00" in str(value):
        raise ConfigError(f"{what} must be a file system path, and no path holds a NUL byte; got {str(value)!r:.80}")
    return Path(value).expanduser()
