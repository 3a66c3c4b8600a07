"""What a call-log target names: a PostgreSQL URL (``postgresql://`` or ``postgres://``) or, otherwise, a file.

A URL may carry a password; :func:`url_without_password` is the form messages, reprs and
adapter cards show.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` is a PostgreSQL connection URL rather than a file path."""
    return isinstance(target, str) and target.partition("://")[0].lower() in _SCHEMES and "://" in target


def url_without_password(url: str) -> str:
    """The URL as ``scheme://user@host:port/dbname``: no password, no query (which may hold one)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{parts.scheme}://{user}{at}{hosts}{parts.path}"
