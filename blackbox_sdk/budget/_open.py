"""Which ledger a Budget's `ledger=` names: an SQLite file, a redis:// URL, or a private temporary file."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from .._exceptions import ConfigError
from .._redis_url import is_redis_url, redact_url
from ._ledger import Ledger
from ._redis_ledger import RedisLedger
from ._store import LedgerStore

LEDGER_FILE_NAME = "ledger.sqlite3"


def open_ledger(owner: object, ledger: str | Path | None, prefix: str) -> tuple[LedgerStore, Path | None]:
    """The store and its file (None for Redis); a private ledger is deleted, a Redis pool closed, with `owner`."""
    if ledger is None:
        folder = Path(tempfile.mkdtemp(prefix="blackbox-budget-"))
        private = Ledger(folder / LEDGER_FILE_NAME)
        weakref.finalize(owner, _remove_private_ledger, private, folder)
        return private, private.path
    if is_redis_url(ledger):
        shared = RedisLedger(str(ledger), prefix=prefix)
        weakref.finalize(owner, shared.close)
        return shared, None
    if isinstance(ledger, str) and "://" in ledger:
        raise ConfigError(
            f"ledger must be a file path or a redis:// / rediss:// URL, got {redact_url(ledger)}"
        )
    store = Ledger(ledger)
    return store, store.path


def _remove_private_ledger(ledger: Ledger, folder: Path) -> None:
    """Close and delete a Budget's private temporary ledger."""
    ledger.close()
    shutil.rmtree(folder, ignore_errors=True)
