"""Strings every store can write: UTF-8 text (no lone surrogate), checked where a caller hands one in.

SQLite, PostgreSQL and Redis take text as UTF-8, and Python raises `UnicodeEncodeError` for a lone
surrogate (half of an emoji cut in two) only once a store encodes it, after work may have been
spent. A name the caller looks up or charges by (a budget key, a model, a call id) is checked here
first and refused with a `ConfigError` that names it. So is a store option's URL missing its `//`
(`redis:/host`), before it is taken for a path.
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


def is_url_of(value: object, schemes: tuple[str, ...], example: str) -> bool:
    """Whether ``value`` is a URL of one of ``schemes`` (any case) rather than a path; ConfigError for a scheme without its
    ``//`` (``redis:/host``), which would make a file or folder of that name in the working folder. ``example`` is the
    rest of a right URL (``host:6379/0``), for the message."""
    if not isinstance(value, str):
        return False
    scheme, colon, rest = value.partition(":")
    if colon and scheme.lower() in schemes and not rest.startswith("//"):
        raise ConfigError(f"{scheme}: needs // after it, as in {scheme.lower()}://{example}; for a file or folder of that name, write ./{scheme}:...")
    return bool(colon) and scheme.lower() in schemes
