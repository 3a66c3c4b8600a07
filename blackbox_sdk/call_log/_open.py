"""Opening a call log by what its target names: a PostgreSQL URL for a fleet, otherwise an SQLite file."""

from __future__ import annotations

from pathlib import Path

from .._exceptions import ConfigError
from ._log import CallLog
from ._postgres import PostgresCallLog
from ._store import CallLogStore
from ._urls import is_postgres_url, other_url_scheme


def open_call_log(target: str | Path, *, create: bool = True) -> CallLogStore:
    """A ``postgresql://`` URL gives a :class:`PostgresCallLog`, a path an SQLite :class:`CallLog`; ``create=False`` only opens an existing log."""
    if is_postgres_url(target):
        return PostgresCallLog(str(target), create=create)
    if (other := other_url_scheme(target)) is not None:
        raise ConfigError(f"a call log is a file path or a postgresql:// URL, not {other}")
    if isinstance(target, (str, Path)) and str(target):
        return CallLog(target, create=create)
    raise ConfigError(f"a call log is a file path or a postgresql:// URL; got {target!r}")
