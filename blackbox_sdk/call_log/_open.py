"""Opening a call log by what its target names: a PostgreSQL URL for a fleet, otherwise an SQLite file."""

from __future__ import annotations

from pathlib import Path

from .._exceptions import ConfigError
from ._log import CallLog
from ._postgres import PostgresCallLog
from ._store import CallLogStore
from ._urls import is_postgres_url


def open_call_log(target: str | Path) -> CallLogStore:
    """A ``postgresql://`` / ``postgres://`` URL gives a :class:`PostgresCallLog`, anything else an SQLite :class:`CallLog`."""
    if is_postgres_url(target):
        return PostgresCallLog(str(target))
    if isinstance(target, (str, Path)) and str(target):
        return CallLog(target)
    raise ConfigError(f"a call log is a file path or a postgresql:// URL; got {target!r}")
