"""Every store that keeps SQLite (or a diskcache folder) refuses a file another application owns, and leaves it as it was."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache  # type: ignore[import-untyped]  # ships no type hints
import pytest

from blackbox_sdk import Budget, CallLog, ConfigError
from blackbox_sdk._sqlite import SHARED_TABLES, table_columns
from blackbox_sdk.budget._calibration import SQLiteCalibration
from blackbox_sdk.budget._ledger import Ledger
from blackbox_sdk.cache import Cache
from blackbox_sdk.limits import RateLimits, SQLiteWindow
from blackbox_sdk.serve import open_key_store

OPENERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "call log": ("call log", CallLog),
    "budget ledger": ("budget ledger", lambda path: Budget(total_usd=1.0, ledger=path)),
    "rate limits": ("rate-limit store", lambda path: RateLimits(rpm=10, store=path)),
    "rate window": ("rate-limit store", SQLiteWindow),
    "key store": ("key store", open_key_store),
}


def _other_app(path: Path, *tables: str) -> bytes:
    """An SQLite file another application made (rollback journal, its own tables); its bytes."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for table in tables:
            conn.execute(f"CREATE TABLE {table} (name TEXT, value TEXT)")
        conn.commit()
    return path.read_bytes()


def _close(store: Any) -> None:
    """Close whatever an opener returned."""
    closing = getattr(store, "close", None)
    if closing is not None:
        closing()


@pytest.mark.parametrize("store", sorted(OPENERS))
def test_every_sqlite_store_refuses_another_apps_database_and_leaves_it_as_it_was(tmp_path: Path, store: str) -> None:
    what, opener = OPENERS[store]
    other = tmp_path / "other-app.db"
    before = _other_app(other, "users", "meta", "orders", "items", "prices", "stock")  # "meta" is a common name: not ours
    message = f"{other} has tables of another application: items, meta, orders, prices, stock, ...; it was left as it was: give the {what} its own file"
    with pytest.raises(ConfigError) as refused:
        opener(other)
    assert str(refused.value) == message
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other-app.db"]  # no tables, no WAL


@pytest.mark.parametrize("store", sorted(OPENERS))
def test_a_new_or_empty_file_is_fine_and_so_is_reopening(tmp_path: Path, store: str) -> None:
    _, opener = OPENERS[store]
    (tmp_path / "empty.db").touch()
    _other_app(tmp_path / "no-tables.db")  # an SQLite file with no table yet
    for name in ("new.db", "empty.db", "no-tables.db", "new.db"):
        _close(opener(tmp_path / name))


def test_the_ledger_the_call_log_and_the_rate_window_may_share_one_file(tmp_path: Path) -> None:
    shared = tmp_path / "blackbox.db"
    for _ in range(2):
        with CallLog(shared):
            pass
        budget = Budget(total_usd=1.0, ledger=shared)
        budget.calibration.overhead("http://api.test/v1", "m")  # the calibration tables, in the ledger's file
        RateLimits(rpm=10, store=shared).close()
        SQLiteWindow(shared).close()
    assert {"calls", "reservations", "calibration", "rate_events"} <= set(table_columns(shared))
    with pytest.raises(ConfigError, match="give the key store its own file"):  # its meta is not the call log's
        open_key_store(shared)


def test_shared_tables_name_every_table_the_stores_make(tmp_path: Path) -> None:
    with CallLog(tmp_path / "log.db"):
        pass
    ledger = Ledger(tmp_path / "ledger.db")
    SQLiteCalibration(ledger).context("k")
    ledger.close()
    SQLiteWindow(tmp_path / "rate.db").close()
    made = {name: columns for file in ("log.db", "ledger.db", "rate.db") for name, columns in table_columns(tmp_path / file).items()}
    assert sorted(set(made) - {"meta"}) == sorted(SHARED_TABLES)
    assert all(SHARED_TABLES[name] <= made[name] for name in SHARED_TABLES)


def test_the_disk_cache_refuses_another_apps_folder_or_cache_db(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match=f"^{folder} holds other files and no response cache: notes.txt; it was left as it was"):
        Cache(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "notes.txt").unlink()
    (folder / ".gitkeep").write_text("")  # a dot file is no one's: a folder kept in git for the cache is fine
    Cache(folder).close()
    for made in sorted(folder.iterdir(), reverse=True):
        if made.name != ".gitkeep":
            shutil.rmtree(made) if made.is_dir() else made.unlink()
    (folder / ".gitkeep").unlink()
    before = _other_app(folder / "cache.db", "users")
    with pytest.raises(ConfigError, match=f"^{folder / 'cache.db'} has tables of another application: users; .*its own folder$"):
        Cache(folder)
    assert (folder / "cache.db").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["cache.db"]
    for path in (tmp_path / "new", tmp_path / "new", folder.parent / "empty"):  # a new folder, the cache again, an empty one
        path.mkdir(exist_ok=True)
        Cache(path).close()


def test_the_disk_cache_refuses_another_apps_diskcache_folder(tmp_path: Path) -> None:
    """Another application's diskcache folder used to be taken: the cache's clear() and eviction would drop that
    application's entries, and opening it rewrote the settings diskcache keeps there (culling turned off)."""
    folder = tmp_path / "app"
    with diskcache.Cache(str(folder)) as theirs:
        theirs.set("user:1", {"name": "Ada"})
        settings = dict(theirs._sql("SELECT key, value FROM Settings").fetchall())
    before = (folder / "cache.db").read_bytes()
    with pytest.raises(ConfigError, match=f"^{folder} is another application's diskcache: it holds the key 'user:1', .*its own folder$"):
        Cache(folder)
    assert (folder / "cache.db").read_bytes() == before
    with diskcache.Cache(str(folder)) as theirs:
        assert theirs.get("user:1") == {"name": "Ada"} and dict(theirs._sql("SELECT key, value FROM Settings").fetchall()) == settings


def test_the_disk_cache_reopens_its_own_folder_with_buckets_and_claims(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache") as cache:
        key = cache.key(route="chat", endpoint="http://127.0.0.1:8080/v1", params={"model": "m", "messages": []})
        cache.extend(key, [{"kind": "chat"}])
        claimed = cache.key(route="chat", endpoint="http://127.0.0.1:8080/v1", params={"model": "n", "messages": []})
        assert cache.claim(claimed, ttl_s=60)
    with Cache(tmp_path / "cache") as again:
        assert again.get(key) == [{"kind": "chat"}] and again.stats.keys == 1  # a claim is no entry
        assert not again.claim(claimed, ttl_s=60)  # still held
