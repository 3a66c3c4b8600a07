"""The response cache: canonical keys, buckets, modes, expiry, planted values, locks and bad folders."""

from __future__ import annotations

import contextlib
import ctypes
import doctest
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import diskcache
import openai
import pydantic
import pytest
from payloads import RunsOnUnpickle

from blackbox_sdk import CacheError, ConfigError
from blackbox_sdk import cache as cache_module
from blackbox_sdk.cache import (
    CACHE_FORMAT,
    KEY_SCHEMA_VERSION,
    Cache,
    CacheStore,
    canonical_params,
)
from blackbox_sdk.cache._disk import DiskStore

REPO_ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "https://api.example.test/v1"
BASE: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "temperature": 0.7}
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


class Answer(pydantic.BaseModel):
    """A structured-output schema."""

    value: int


class OtherAnswer(pydantic.BaseModel):
    """A different structured-output schema."""

    value: str


class Message(pydantic.BaseModel):
    """A message given as a pydantic instance."""

    role: str
    content: str


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    """A fresh cache in a temporary folder."""
    with Cache(tmp_path / "cache") as opened:
        yield opened


def _key(cache: Cache, **changes: Any) -> str:
    """The key of BASE with some arguments changed."""
    return cache.key(route="chat", endpoint=ENDPOINT, params={**BASE, **changes})


def _entry(text: str) -> dict[str, Any]:
    """A stored chat candidate the way a client might shape it."""
    return {"kind": "chat", "response": {"choices": [{"message": {"role": "assistant", "content": text}}]}}


def _plant(directory: Path, key: str, *, mode: int, value: Any, filename: str | None = None) -> None:
    """Write a row straight into the cache's SQLite table, as an attacker or another program could."""
    now = time.time()
    with contextlib.closing(sqlite3.connect(directory / "cache.db")) as conn, conn:
        conn.execute("DELETE FROM Cache WHERE key = ?", (key,))
        conn.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
            " VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, ?, ?, ?)",
            (key, now, now, mode, filename, value),
        )


def _row_count(directory: Path, key: str, table: str = "Cache") -> int:
    """How many rows the cache's SQLite table (diskcache's, or the claims') holds for a key."""
    with contextlib.closing(sqlite3.connect(directory / "cache.db")) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE key = ?", (key,)).fetchone()[0])


# ------------------------------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"temperature": 0.7}, id="same-arguments"),
        pytest.param({"seed": None}, id="none-dropped"),
        pytest.param({"seed": openai.NOT_GIVEN}, id="not-given-dropped"),
        pytest.param({"seed": openai.omit}, id="omit-dropped"),
        pytest.param({"timeout": 12.5}, id="timeout-dropped"),
        pytest.param({"extra_headers": {"traceparent": "00-1-2-01", "X-Request-Id": "1", "X-B3-TraceId": "2"}}, id="tracing-headers-dropped"),
        pytest.param({"api_key": "sk-test-" + "x" * 40}, id="api-key-dropped"),
        pytest.param({"Authorization": "Bearer abcdefghijkl"}, id="auth-header-dropped"),
        pytest.param({"extra_body": {}, "extra_query": {}}, id="empty-extras-send-nothing"),
        pytest.param({"extra_body": {"top_k": openai.NOT_GIVEN}, "extra_query": {"api-key": "secret-value"}}, id="extras-emptied-send-nothing"),
        pytest.param({"messages": ({"role": "user", "content": "What is 2 + 2?"},)}, id="tuple-equals-list"),
        pytest.param({"messages": [Message(role="user", content="What is 2 + 2?")]}, id="pydantic-instance-equals-dump"),
        pytest.param({"messages": [{"role": "user", "content": "What is 2 + 2?", "name": openai.NOT_GIVEN}]}, id="nested-not-given-dropped"),
    ],
)
def test_arguments_that_do_not_change_the_answer_do_not_change_the_key(cache: Cache, changes: dict[str, Any]) -> None:
    assert _key(cache, **changes) == _key(cache)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"model": "gpt-4o"}, id="model"),
        pytest.param({"temperature": 0.0}, id="temperature"),
        pytest.param({"messages": [{"role": "system", "content": "Be terse."}, *BASE["messages"]]}, id="system-prompt"),
        pytest.param({"messages": [{"role": "user", "content": "What is 2 + 3?"}]}, id="last-message"),
        pytest.param({"response_format": Answer}, id="response-format-added"),
        pytest.param({"extra_body": {"top_k": 5}}, id="extra-body"),
        pytest.param({"seed": 1}, id="seed"),
    ],
)
def test_arguments_that_change_the_answer_change_the_key(cache: Cache, changes: dict[str, Any]) -> None:
    assert _key(cache, **changes) != _key(cache)


def test_namespace_route_and_endpoint_are_part_of_the_key(tmp_path: Path) -> None:
    with Cache(tmp_path / "a") as first, Cache(tmp_path / "a", namespace="other") as second:
        keys = {
            first.key(route="chat", endpoint=ENDPOINT, params=BASE),
            second.key(route="chat", endpoint=ENDPOINT, params=BASE),
            first.key(route="completions", endpoint=ENDPOINT, params=BASE),
            first.key(route="chat", endpoint="http://127.0.0.1:8080/v1", params=BASE),
        }
    assert len(keys) == 4


def test_key_order_of_arguments_does_not_matter(cache: Cache) -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert cache.key(route="chat", endpoint=ENDPOINT, params=reordered) == _key(cache)


def test_key_is_sha256_of_the_canonical_json_recipe(cache: Cache) -> None:
    material = {"v": KEY_SCHEMA_VERSION, "namespace": "default", "route": "chat", "endpoint": ENDPOINT, "params": BASE}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert _key(cache) == hashlib.sha256(text.encode("ascii")).hexdigest()


def test_response_format_class_is_keyed_by_its_json_schema(cache: Cache) -> None:
    assert canonical_params({"response_format": Answer})["response_format"] == Answer.model_json_schema()
    assert _key(cache, response_format=Answer) != _key(cache, response_format=OtherAnswer)


def test_credentials_inside_extra_query_are_dropped_but_other_query_values_kept() -> None:
    params = canonical_params({"extra_query": {"api-key": "secret-value", "api-version": "2024-06-01"}})
    assert params == {"extra_query": {"api-version": "2024-06-01"}}


def test_nested_none_is_kept_because_null_is_sent() -> None:
    schema = {"type": "object", "properties": {"x": {"default": None}}}
    assert canonical_params({"tools": [schema]})["tools"] == [schema]


def test_int_keys_are_keyed_as_the_strings_json_sends(cache: Cache) -> None:
    """logit_bias takes token ids as int keys, as openai's own client does (JSON sends them as strings)."""
    assert canonical_params({"logit_bias": {50256: -100}}) == {"logit_bias": {"50256": -100}}
    assert _key(cache, logit_bias={50256: -100}) == _key(cache, logit_bias={"50256": -100}) != _key(cache)


def test_a_float_with_an_integral_value_is_keyed_as_the_integer_json_sends_alike(cache: Cache) -> None:
    """temperature=1 and temperature=1.0 are one number on the wire: they missed each other's answers."""
    assert _key(cache, temperature=1.0, top_p=0.0) == _key(cache, temperature=1, top_p=-0.0) == _key(cache, temperature=1, top_p=0)
    assert canonical_params({"tools": [{"default": 2.0, "max": 1e300}]}) == {"tools": [{"default": 2, "max": 1e300}]}
    assert _key(cache, temperature=1.5) != _key(cache, temperature=1) != _key(cache, temperature=True)


@pytest.mark.parametrize(
    ("params", "where"),
    [
        pytest.param({"messages": [{"role": "user", "content": b"bytes"}]}, "params['messages'][0]['content']", id="bytes"),
        pytest.param({"stop": {"a", "b"}}, "params['stop']", id="set"),
        pytest.param({"temperature": float("nan")}, "params['temperature']", id="nan"),
        pytest.param({"metadata": {1.5: "x"}}, "params['metadata']", id="float-key"),
        pytest.param({"logit_bias": {50256: -100, "50256": 5}}, "params['logit_bias']", id="int-key-sent-twice"),
        pytest.param({"messages": (m for m in BASE["messages"])}, "params['messages']", id="generator"),
        pytest.param({"user": object()}, "params['user']", id="arbitrary-object"),
    ],
)
def test_values_that_are_not_json_raise_config_error_naming_where(cache: Cache, params: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        cache.key(route="chat", endpoint=ENDPOINT, params=params)


# --------------------------------------------------------------------------------------- buckets


def test_bucket_returns_entries_oldest_first_across_writes(cache: Cache) -> None:
    key = _key(cache)
    assert cache.get(key) == []
    cache.extend(key, [_entry("four")])
    cache.extend(key, [_entry("4"), _entry("Four.")])
    assert cache.get(key) == [_entry("four"), _entry("4"), _entry("Four.")]


def test_bucket_keeps_only_the_newest_max_bucket_entries(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", max_bucket=3) as small:
        key = _key(small)
        for i in range(5):
            small.extend(key, [_entry(str(i))])
        assert small.get(key) == [_entry("2"), _entry("3"), _entry("4")]


def test_large_and_unicode_entries_round_trip(cache: Cache) -> None:
    key = _key(cache)
    big = _entry("ü✓ " * 40_000)  # beyond diskcache's 32 KiB inline limit: stored as a .val file
    cache.extend(key, [big])
    assert cache.get(key) == [big]
    assert list((cache.directory).rglob("*.val"))


@pytest.mark.parametrize(
    ("mode", "reads", "writes"),
    [
        pytest.param("on", True, True, id="on"),
        pytest.param("read", True, False, id="read"),
        pytest.param("write", False, True, id="write"),
        pytest.param("refresh", False, True, id="refresh"),
        pytest.param("off", False, False, id="off"),
    ],
)
def test_modes_decide_what_get_and_extend_do(cache: Cache, mode: str, reads: bool, writes: bool) -> None:
    key = _key(cache)
    cache.extend(key, [_entry("old")])
    view = cache.with_mode(mode)  # type: ignore[arg-type]
    assert view.get(key) == ([_entry("old")] if reads else [])
    view.extend(key, [_entry("new")])
    stored = cache.get(key)
    assert (_entry("new") in stored) is writes
    assert (_entry("old") in stored) is (mode != "refresh")


def test_with_mode_shares_the_store_and_leaves_the_original_unchanged(cache: Cache) -> None:
    key = _key(cache)
    writer = cache.with_mode("write")
    writer.extend(key, [_entry("shared")])
    assert cache.mode == "on" and writer.mode == "write"
    assert cache.get(key) == [_entry("shared")]
    assert writer.stats == cache.stats


def test_stats_count_hits_misses_writes_and_keys(cache: Cache) -> None:
    key, other = _key(cache), _key(cache, seed=2)
    cache.get(key)
    cache.extend(key, [_entry("a")])
    cache.get(key)
    cache.get(other)
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.writes, stats.keys) == (1, 2, 1, 1)
    assert stats.volume_bytes > 0


def test_clear_removes_every_bucket(cache: Cache) -> None:
    keys = [_key(cache, seed=i) for i in range(3)]
    for key in keys:
        cache.extend(key, [_entry("x")])
    cache.clear()
    assert [cache.get(key) for key in keys] == [[], [], []]


def _extend_many(directory: str, key: str, worker: int, count: int) -> None:
    """Child process: append entries one at a time to a shared bucket."""
    with Cache(directory) as shared:
        for i in range(count):
            shared.extend(key, [{"worker": worker, "i": i}])


def test_concurrent_appends_from_several_processes_all_land(cache: Cache) -> None:
    key = _key(cache)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_extend_many, args=(str(cache.directory), key, w, 8)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0, 0]
    stored = cache.get(key)
    assert sorted((e["worker"], e["i"]) for e in stored) == [(w, i) for w in range(3) for i in range(8)]


# ------------------------------------------------------------------------------ bad input values


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([{"x": float("inf")}], id="infinity"),
        pytest.param([{"x": object()}], id="object"),
        pytest.param(["not a dict"], id="string-entry"),
        pytest.param({"x": 1}, id="not-a-list"),
    ],
)
def test_entries_that_are_not_json_objects_raise_config_error(cache: Cache, entries: Any) -> None:
    with pytest.raises(ConfigError):
        cache.extend(_key(cache), entries)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"mode": "sometimes"}, id="mode"),
        pytest.param({"ttl": 0}, id="zero-ttl"),
        pytest.param({"ttl": float("inf")}, id="infinite-ttl"),
        pytest.param({"ttl": sys.maxsize}, id="ttl-beyond-redis-expiry"),  # Redis refused every write with it
        pytest.param({"max_bucket": 0}, id="empty-bucket"),
        pytest.param({"namespace": ""}, id="empty-namespace"),
        pytest.param({"namespace": "team-\udcff"}, id="namespace-not-unicode"),  # argv's undecodable bytes: Redis raised on every lookup
        pytest.param({"timeout": -1}, id="negative-timeout"),
    ],
)
def test_bad_options_raise_config_error_before_touching_disk(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Cache(tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


def test_a_url_that_is_not_redis_is_refused_not_taken_for_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unix://") as refused:
        Cache("unix://:S3cretPW@/var/run/redis/redis.sock")
    assert "S3cretPW" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no folder named after the URL (and its password)


def test_keys_not_made_by_key_are_refused(cache: Cache) -> None:
    with pytest.raises(ConfigError, match="SHA-256"):
        cache.get("../../etc/passwd")


# ------------------------------------------------------------------- expiry, corrupt and planted rows


def test_expired_entries_are_dropped_and_removed_while_fresh_ones_stay(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with Cache(directory, ttl=60) as cache:
        key = _key(cache)
        now = time.time()
        wrappers = [
            {"bb": CACHE_FORMAT, "created": now - 3600, "entry": _entry("stale")},
            {"bb": CACHE_FORMAT, "created": now - 1, "entry": _entry("fresh")},
        ]
        _plant(directory, key, mode=diskcache.core.MODE_RAW, value=json.dumps(wrappers))
        assert cache.get(key) == [_entry("fresh")]
        stored = json.loads(diskcache.Cache(str(directory)).get(key))
        assert [w["entry"] for w in stored] == [_entry("fresh")]
        assert cache.stats.dropped == 1


def test_entries_expire_in_real_time(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", ttl=0.3) as cache:
        key = _key(cache)
        cache.extend(key, [_entry("short-lived")])
        assert cache.get(key) == [_entry("short-lived")]
        time.sleep(0.4)
        assert cache.get(key) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json at all", id="not-json"),
        pytest.param(json.dumps({"kind": "chat"}), id="json-object-not-bucket"),
        pytest.param(json.dumps([{"kind": "chat", "response": {}}]), id="entries-without-wrapper"),
        pytest.param(json.dumps([{"bb": 99, "created": 1.0, "entry": {}}]), id="future-format"),
        pytest.param("[" * 100_000, id="nested-too-deep"),  # json.loads raised a raw RecursionError on every call
        pytest.param('[{"bb": 1, "created": 1' + "0" * 400 + ', "entry": {}}]', id="created-beyond-a-float"),  # raised OverflowError
        pytest.param('[{"bb": 1, "created": 1.0, "entry": {"completion_tokens": 1e400}}]', id="number-beyond-a-float"),  # read as inf: poisoned every write
        pytest.param('[{"bb": 1, "created": 1.0, "entry": {"logprob": NaN}}]', id="nan-literal"),
        pytest.param('[{"bb": 1, "created": 1.0, "entry": {"logprob": -Infinity}}]', id="infinity-literal"),
    ],
)
def test_corrupt_or_foreign_buckets_are_dropped_and_removed(cache: Cache, text: str) -> None:
    key = _key(cache)
    _plant(cache.directory, key, mode=diskcache.core.MODE_RAW, value=text)
    assert cache.get(key) == []
    assert _row_count(cache.directory, key) == 0
    cache.extend(key, [_entry("after")])
    assert cache.get(key) == [_entry("after")]


def test_a_planted_number_beyond_a_float_does_not_poison_the_next_write(cache: Cache) -> None:
    """JSON reads 1e400 as infinity, which the next extend() could not encode again: a raw ValueError on every store."""
    key = _key(cache)
    _plant(cache.directory, key, mode=diskcache.core.MODE_RAW, value='[{"bb": 1, "created": 1.0, "entry": {"tokens": 1e400}}]')
    cache.extend(key, [_entry("after")])
    assert cache.get(key) == [_entry("after")]


def test_a_bucket_that_is_not_json_is_a_miss_with_a_warning(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    key = _key(cache)
    _plant(cache.directory, key, mode=diskcache.core.MODE_RAW, value="[{not json")
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert cache.get(key) == []
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "corrupt" in caplog.text
    assert _row_count(cache.directory, key) == 0


def test_a_value_file_with_invalid_utf8_is_a_miss_with_a_warning_and_is_dropped(cache: Cache, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16: such a file raised a raw UnicodeDecodeError on every call for the key, and stayed."""
    key = _key(cache)
    cache.extend(key, [_entry("ü✓ " * 40_000)])  # beyond diskcache's inline limit: a .val file diskcache named
    (value_file,) = cache.directory.rglob("*.val")
    value_file.write_bytes(b"\xff\xfe\xc3" + value_file.read_bytes()[3:])
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert cache.get(key) == []
    assert "not UTF-8" in caplog.text and key[:12] in caplog.text
    assert _row_count(cache.directory, key) == 0 and not value_file.exists()
    assert cache.stats.dropped == 1
    caplog.clear()
    assert cache.get(key) == [] and caplog.records == []  # dropped once, not warned about on every call
    cache.extend(key, [_entry("after")])
    assert cache.get(key) == [_entry("after")]


def test_planted_pickle_is_dropped_without_being_executed(cache: Cache, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    key = _key(cache)
    _plant(cache.directory, key, mode=diskcache.core.MODE_PICKLE, value=pickle.dumps(RunsOnUnpickle(marker)))
    assert cache.get(key) == []
    assert not marker.exists()
    assert _row_count(cache.directory, key) == 0


def test_the_planted_pickle_would_run_under_diskcache_json_disk(tmp_path: Path) -> None:
    """The control for the test above: the payload is live, and diskcache's own JSONDisk runs it."""
    marker = tmp_path / "pwned"
    directory = tmp_path / "plain"
    with diskcache.Cache(str(directory), disk=diskcache.JSONDisk) as plain:
        db_key, _ = plain.disk.put("k")
        _plant(directory, db_key, mode=diskcache.core.MODE_PICKLE, value=pickle.dumps(RunsOnUnpickle(marker)))
        with pytest.raises(TypeError):
            plain.get("k")
    assert marker.is_dir()


def test_planted_file_path_outside_the_cache_is_neither_read_nor_deleted(cache: Cache, tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text(json.dumps([{"bb": CACHE_FORMAT, "created": time.time(), "entry": _entry("planted")}]))
    key = _key(cache)
    _plant(cache.directory, key, mode=diskcache.core.MODE_TEXT, value=None, filename=str(outside))
    assert cache.get(key) == []
    assert outside.exists()
    assert _row_count(cache.directory, key) == 0


# ----------------------------------------------------------------------- unusable, read-only, locked


def test_folder_under_a_regular_file_raises_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="a-file"):
        Cache(blocker / "cache")


def _without_permission_override() -> None:
    """In the child: drop root's power to ignore file modes, so a 0o555 folder is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _open_in_child(directory: Path) -> subprocess.CompletedProcess[str]:
    """Open a Cache in a child process that can't override file permissions (even as root)."""
    script = (
        "import sys\nfrom blackbox_sdk.cache import Cache\nfrom blackbox_sdk import CacheError\n"
        "try:\n    Cache(sys.argv[1]).get('0' * 64)\nexcept CacheError as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    preexec = _without_permission_override if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-c", script, str(directory)], capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=120
    )


def test_read_only_empty_folder_raises_cache_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = _open_in_child(folder)
    assert result.returncode == 3, result.stderr
    assert str(folder) in result.stdout and "writable" in result.stdout


def test_read_only_existing_cache_raises_cache_error(tmp_path: Path) -> None:
    folder = tmp_path / "existing"
    with Cache(folder) as cache:
        cache.extend(_key(cache), [_entry("kept")])
    for path in folder.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)
    result = _open_in_child(folder)
    assert result.returncode == 3, result.stderr
    assert str(folder) in result.stdout


def test_locked_database_makes_writes_fail_fast_while_reads_go_on(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", timeout=0.2) as cache:
        key = _key(cache)
        cache.extend(key, [_entry("before")])
        blocker = sqlite3.connect(cache.directory / "cache.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with pytest.raises(CacheError, match="locked"):
                cache.extend(key, [_entry("during")])
            assert time.monotonic() - started < 5
            assert cache.get(key) == [_entry("before")]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        cache.extend(key, [_entry("after")])
        assert cache.get(key) == [_entry("before"), _entry("after")]


@contextlib.contextmanager
def _write_locked(directory: Path) -> Iterator[None]:
    """Another connection holds the cache database's write lock inside the block, as a busy process would."""
    blocker = sqlite3.connect(directory / "cache.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_a_store_that_fails_keeps_the_claim_and_release_claim_then_frees_it(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", timeout=0.2) as leader, Cache(tmp_path / "c") as other:
        key = _key(leader)
        assert leader.claim(key, ttl_s=60)
        with _write_locked(tmp_path / "c"), pytest.raises(CacheError, match="locked"):
            leader.extend(key, [_entry("never stored")])
        assert not other.claim(key, ttl_s=60) and other.get(key) == []
        leader.release_claim(key)
        assert other.claim(key, ttl_s=60)


def test_release_claim_after_the_leaders_store_writes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Cache(tmp_path / "c", timeout=0.2) as leader:
        key = _key(leader)
        assert leader.claim(key, ttl_s=60)
        leader.extend(key, [_entry("answer")])
        with _write_locked(tmp_path / "c"), caplog.at_level(logging.DEBUG, logger="blackbox_sdk"):
            leader.release_claim(key)  # a write now would wait for the lock, then give up and log it
        assert not [r for r in caplog.records if r.name == "blackbox_sdk"]
        assert leader.get(key) == [_entry("answer")]


def test_lapsed_claims_and_expired_buckets_still_leave_the_disk(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", ttl=0.1) as first:
        key, other = _key(first), _key(first, seed=2)
        assert first.claim(key, ttl_s=0.1)  # its holder "dies": never released
        first.extend(other, [_entry("short-lived")])
    time.sleep(0.3)  # past both expiries (a lower bound: a slow machine only waits longer)
    with Cache(tmp_path / "c") as later:  # a later process: its first write culls what expired
        later.extend(_key(later, seed=3), [_entry("new")])
    assert _row_count(tmp_path / "c", key + ":claim", "Claims") == 0 and _row_count(tmp_path / "c", other) == 0


def test_the_stores_own_writes_are_rows_diskcache_reads_and_counts_and_claims_keep_to_their_table(tmp_path: Path) -> None:
    store, key = DiskStore(tmp_path / "c", timeout=5), "ab" * 32
    claim = (key + ":claim", "token")

    def write(text: str, discard: tuple[str, str] | None = None) -> None:
        store.update(key, lambda current: text, expire=None, action="store", discard=discard)

    def files() -> list[Path]:
        return sorted((tmp_path / "c").rglob("*.val"))

    assert store.claim(*claim, expire=60, bucket=key) == (True, None)
    assert store.claim(claim[0], "another", expire=60, bucket=key) == (False, None)  # held: not taken
    write('["small"]', discard=claim)
    big = json.dumps(["x" * 40_000])  # past diskcache's 32 KB: a value file
    plain = diskcache.Cache(str(tmp_path / "c"))
    try:
        assert plain.get(key) == '["small"]' and plain.get(claim[0]) is None and len(plain) == 1
        write(big)
        assert plain.get(key) == big and len(files()) == 1
        write('["small again"]')  # the value file goes with the value it held
        assert plain.get(key) == '["small again"]' and files() == []
        counted = plain._sql("SELECT value FROM Settings WHERE key = 'count'").fetchone()[0]
        assert counted == plain._sql("SELECT COUNT(*) FROM Cache").fetchone()[0] == 1  # diskcache's triggers ran
    finally:
        plain.close()
    assert store.claim(claim[0], "short", expire=0.05, bucket=key) == (True, '["small again"]')
    time.sleep(0.1)  # lapsed: the next claim takes the key over
    assert store.claim(claim[0], "later", expire=60, bucket=key)[0]
    store.discard(claim[0], "short")  # not its token any more: kept
    assert store.get(claim[0]) == "later" and _row_count(tmp_path / "c", claim[0], "Claims") == 1
    store.discard(claim[0], "later")
    assert store.get(claim[0]) is None and _row_count(tmp_path / "c", claim[0], "Claims") == 0
    assert _row_count(tmp_path / "c", claim[0]) == 0  # never in diskcache's table
    store.close()


def test_the_examples_in_docs_cache_md_run() -> None:
    results = doctest.testfile(str(REPO_ROOT / "docs" / "cache.md"), module_relative=False, verbose=False)
    assert results.attempted > 5 and results.failed == 0


def test_cache_module_exports_are_sorted() -> None:
    assert cache_module.__all__ == sorted(cache_module.__all__)


def test_the_disk_store_implements_the_cache_store_protocol_the_cache_is_typed_against(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "c", timeout=1.0)
    try:
        assert isinstance(store, CacheStore)
    finally:
        store.close()
    assert get_type_hints(Cache)["_store"] is CacheStore


def _connections() -> list[sqlite3.Connection]:
    """Every sqlite3 connection this process holds now."""
    return [found for found in gc.get_objects() if type(found) is sqlite3.Connection]  # type(): isinstance asks lazy modules for __class__, and torch warns


def test_closing_a_cache_closes_the_connections_of_threads_still_running_and_each_reopens_on_use(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    key = _key(cache)
    cache.extend(key, [_entry("kept")])
    read, closed, found = threading.Event(), threading.Event(), []

    def worker() -> None:
        """A worker thread of a server: reads, waits while the cache is closed elsewhere, reads again."""
        cache.get(key)
        read.set()
        closed.wait(30)
        found.append(cache.get(key))

    thread = threading.Thread(target=worker)
    thread.start()
    assert read.wait(30)
    cache.close()  # a proxy stopping, from a thread of its own: the worker's connection closes too
    fds = Path("/proc/self/fd")
    assert not [name for name in os.listdir(fds) if os.path.realpath(fds / name).startswith(str(tmp_path))]
    closed.set()
    thread.join(30)
    assert found and found[0] is not None  # a later use reopens, in that thread as in any
    cache.close()


def test_a_cache_dropped_unclosed_closes_every_threads_sqlite_connection(tmp_path: Path) -> None:
    before = {id(held) for held in _connections()}
    cache = Cache(tmp_path / "c")
    key = _key(cache)
    cache.extend(key, [_entry("kept")])
    reader = threading.Thread(target=cache.get, args=(key,))  # diskcache opens a connection per thread
    reader.start()
    reader.join()
    opened = [held for held in _connections() if id(held) not in before]
    assert len(opened) == 2  # one per thread, the ended one's too
    del cache, reader
    gc.collect()
    for connection in opened:  # closed, whichever thread opened it: on Python 3.13 one left open warns when collected
        with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
            connection.execute("SELECT 1")
