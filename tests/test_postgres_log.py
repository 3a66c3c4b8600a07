"""The call log on a real PostgreSQL server: the SQLite log's records, feedback, export and stats, batched
writes off the call path, nothing lost when the database stops, and the factory that picks a store."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from pg_databases import fresh_database
from servers import PostgresServer
from test_calllog import CommitsMidExport, _fields, exported_ids

from blackbox_sdk import CallLogError, ConfigError, OpenAI, StoreUnavailableError
from blackbox_sdk.call_log import (
    SCHEMA_VERSION,
    CallLog,
    CallLogStore,
    CallRecord,
    PostgresCallLog,
    is_postgres_url,
    open_call_log,
    url_without_password,
)
from blackbox_sdk.call_log import _paging as paging_module
from blackbox_sdk.call_log import _records as records_module
from blackbox_sdk.local import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-proj-" + "Qw7Er6Ty" * 6
PLAIN_SECRET = "hunter2-plain-password"
FEEDBACK_TIME = 1_700_000_999.25  # one clock for feedback in both stores, so their exports can match byte for byte


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of an empty database of this test's own."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def pg_log(pg_url: str) -> Iterator[PostgresCallLog]:
    """A PostgreSQL call log in this test's database."""
    with PostgresCallLog(pg_url) as log:
        yield log


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start."""
    server = PostgresServer().start()
    yield server
    server.close()


def _record(**changes: Any) -> CallRecord:
    """test_calllog.py's call (three candidates, the second chosen by a reranker) with a secret in the request."""
    request = {**_fields()["request"], "api_key": PLAIN_SECRET}
    return CallRecord(**_fields(**{"request": request, **changes}))


def _varied_records() -> list[CallRecord]:
    """Calls over two UTC days and three models: hits, errors, no scores, unicode, and ties on `created`
    whose ids sort differently by bytes than by a locale (the export's order must be the SQLite log's)."""
    day_one = dt.datetime(2024, 3, 1, 23, 59, tzinfo=dt.timezone.utc).timestamp()
    day_two = dt.datetime(2024, 3, 2, 0, 1, tzinfo=dt.timezone.utc).timestamp()
    return [
        _record(call_id="bb-tie-b", created=day_one, cost_usd=0.25),
        _record(call_id="bb-tie-B", created=day_one, model="b", cost_usd=0.5, cache_hit=True, usage_counted=False),
        _record(call_id="bb-tie-a", created=day_one, model="ä-model", candidates=["日本", "x"], chosen=[0, 1], scores=None),
        _record(call_id="bb-tie_a", created=day_one, request={"z": 1, "a": [1.5, None, True], "messages": []}),
        _record(created=day_two, cost_usd=1.0, candidates=[], chosen=[], scores=None, usage=None,
                error=f"AuthenticationError: bad key {OPENAI_KEY}"),
        _record(created=day_two + 0.001, cost_usd=0.0, cache_hit=True, extra={"token": PLAIN_SECRET, "n": 2}),
        _record(created=day_two + 7, key=None, route="completions", request={"prompt": "Hi"}, candidates=["there"], chosen=[0], scores=None),
    ]


def _fill(log: CallLogStore, records: list[CallRecord]) -> None:
    """Record the calls and the same feedback on the first three, at a fixed feedback time."""
    for rec in records:
        log.record(rec)
    log.feedback(records[0].call_id, label="correct", note="checked")
    log.feedback(records[0].call_id, preferred=2, reference="4")
    log.feedback(records[1].call_id, reward=-0.5)
    log.feedback(records[4].call_id, reference="4")


def _export(log: CallLogStore) -> str:
    """The log's JSONL export as text."""
    sink = io.StringIO()
    log.export_jsonl(sink)
    return sink.getvalue()


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``condition`` holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the writer never got there"
        time.sleep(0.02)


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows read on a connection of the test's own (what another host would see)."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


# --------------------------------------------------------------------------- the same log as SQLite


def test_record_and_feedback_round_trip(pg_log: PostgresCallLog) -> None:
    rec = _record()
    pg_log.record(rec)
    pg_log.feedback(rec.call_id, label="correct", note="by hand")  # right after record: feedback flushes first
    pg_log.feedback(rec.call_id, preferred=2, reference="4")
    stored = pg_log.get(rec.call_id)
    assert stored == rec.model_copy(update={"request": {**rec.request, "api_key": "[REDACTED]"}})
    items = pg_log.feedback_for(rec.call_id)
    assert [(f.label, f.note, f.preferred, f.reference, f.candidate) for f in items] == [
        ("correct", "by hand", None, None, 1), (None, None, 2, "4", None)
    ]


def test_export_is_the_sqlite_logs_line_for_line(pg_log: PostgresCallLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "time", SimpleNamespace(time=lambda: FEEDBACK_TIME))
    records = _varied_records()
    with CallLog(tmp_path / "calls.db") as sqlite_log:
        _fill(sqlite_log, records)
        _fill(pg_log, records)
        expected = _export(sqlite_log)
    assert expected.count("\n") == len(records)
    assert _export(pg_log) == expected
    pg_log.export_jsonl(tmp_path / "pg.jsonl")
    assert (tmp_path / "pg.jsonl").read_text(encoding="utf-8") == expected


def test_a_negative_zero_exports_as_the_sqlite_log_writes_it(pg_log: PostgresCallLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "time", SimpleNamespace(time=lambda: -0.0 + FEEDBACK_TIME))
    rec = _record(created=-0.0, cost_usd=-0.0, latency_s=-0.0)  # a sum of refunds, a clock's 0 negated: SQLite keeps no sign
    with CallLog(tmp_path / "calls.db") as sqlite_log:
        for log in (sqlite_log, pg_log):
            log.record(rec)
            log.feedback(rec.call_id, reward=-0.0)
        expected = _export(sqlite_log)
    assert _export(pg_log) == expected
    line = json.loads(expected)
    assert [str(v) for v in (line["created"], line["cost_usd"], line["latency_s"], line["feedback"][0]["reward"])] == ["0.0"] * 4


def test_stats_and_filtered_reads_equal_the_sqlite_logs(pg_log: PostgresCallLog, tmp_path: Path) -> None:
    records = _varied_records()
    with CallLog(tmp_path / "calls.db") as sqlite_log:
        _fill(sqlite_log, records)
        _fill(pg_log, records)
        stats = sqlite_log.stats()
        assert pg_log.stats() == stats
        since = records[4].created
        for query in ({}, {"model": "gpt-4o-mini", "route": "chat"}, {"since": since}, {"until": since, "limit": 2}):
            assert list(pg_log.calls(**query)) == list(sqlite_log.calls(**query))
    assert (stats["calls"], stats["errors"], stats["cache_hits"], stats["feedback"]) == (7, 1, 2, 4)
    assert list(stats["by_day"]) == ["2024-03-01", "2024-03-02"]


def test_reads_page_through_ties_on_created_in_the_sqlite_logs_order(
    pg_log: PostgresCallLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging_module, "PAGE_SIZE", 2)  # the (created, call_id) cursor falls inside the ties
    records = _varied_records()
    with CallLog(tmp_path / "calls.db") as sqlite_log:
        for rec in reversed(records):
            sqlite_log.record(rec)
            pg_log.record(rec)
        expected = [c.call_id for c in sqlite_log.calls()]
    assert expected[:4] == ["bb-tie-B", "bb-tie-a", "bb-tie-b", "bb-tie_a"]  # byte order, not the database's en-US order
    assert [c.call_id for c in pg_log.calls()] == expected
    assert [c.call_id for c in pg_log.calls(limit=3)] == expected[:3]


def test_an_export_is_one_snapshot_of_the_log(pg_log: PostgresCallLog, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue: each page was read in a transaction of its own, so a call committed mid-export was in it or not by its time."""
    monkeypatch.setattr(paging_module, "PAGE_SIZE", 2)
    records = [_record(created=1_700_000_000.0 + i) for i in range(5)]
    for rec in records:
        pg_log.record(rec)
    with PostgresCallLog(pg_url) as other:
        late = [_record(created=1_600_000_000.0), _record(created=1_800_000_000.0)]
        sink = CommitsMidExport(lambda: ([other.record(rec) for rec in late], other.flush()))
        assert pg_log.export_jsonl(sink) == 5
    assert exported_ids(sink.getvalue()) == [rec.call_id for rec in records]  # the log as the export found it
    assert len(list(pg_log.calls())) == 7  # the calls it did not see were committed


def test_secrets_never_reach_the_database(pg_log: PostgresCallLog, pg_url: str) -> None:
    rec = _record(error=f"AuthenticationError: bad key {OPENAI_KEY}", extra={"token": PLAIN_SECRET})
    pg_log.record(rec)
    pg_log.flush()
    dump = "".join(str(row) for table in ("blackbox_calls", "blackbox_candidates") for row in _rows(pg_url, f"SELECT t::text FROM {table} t"))
    assert "[REDACTED]" in dump and "2 + 2?" in dump
    assert PLAIN_SECRET not in dump and OPENAI_KEY not in dump


def test_nul_in_text_becomes_a_replacement_character(pg_log: PostgresCallLog) -> None:
    rec = _record(candidates=["a\x00b", "4"], chosen=[1], scores=None, request={"prompt": "x\x00y"})
    pg_log.record(rec)
    stored = pg_log.get(rec.call_id)
    assert stored.candidates == ["a\ufffdb", "4"]
    assert stored.request == {"prompt": "x\x00y"}  # JSON keeps it, escaped


def test_nul_in_feedback_and_in_what_is_looked_up_reads_as_the_replacement_character(pg_log: PostgresCallLog) -> None:
    """Issue: a NUL in feedback's note or reference, or in a call id or a model looked up, made PostgreSQL refuse the
    statement (CallLogError) where the SQLite log stores and finds it; the stored form is U+FFFD, so it is looked up as such."""
    rec = _record(call_id="bb-nul\x00id", model="m\x00x")
    pg_log.record(rec)
    pg_log.feedback(rec.call_id, label="correct", note="a\x00b", reference="r\x00")
    assert [(f.note, f.reference) for f in pg_log.feedback_for(rec.call_id)] == [("a\ufffdb", "r\ufffd")]
    assert pg_log.get(rec.call_id).model == "m\ufffdx"
    assert [c.call_id for c in pg_log.calls(model="m\x00x", route=rec.route)] == ["bb-nul\ufffdid"]
    with pytest.raises(ConfigError, match="no call"):
        pg_log.get("bb-\x00missing")
    with pytest.raises(ConfigError, match="no call"):
        pg_log.feedback("bb-\x00missing", note="x")


def test_lone_surrogates_become_replacement_characters_and_the_call_is_logged(pg_log: PostgresCallLog) -> None:
    """Issue: half an emoji ("\\ud83d") in an answer made record() raise CallLogError on the caller's
    thread, after the call was paid for; the record was never written."""
    rec = _record(candidates=["smile \ud83d", "4"], chosen=[1], scores=None, request={"prompt": "x\udc00y"}, error="ValueError: \ud83d")
    pg_log.record(rec)
    pg_log.feedback(rec.call_id, note="cut \ud83d")
    stored = pg_log.get(rec.call_id)
    assert stored.candidates == ["smile \ufffd", "4"] and stored.request == {"prompt": "x\ufffdy"} and stored.error == "ValueError: \ufffd"
    assert [f.note for f in pg_log.feedback_for(rec.call_id)] == ["cut \ufffd"]


def test_a_repeated_call_id_keeps_the_first_record(pg_log: PostgresCallLog) -> None:
    rec = _record()
    pg_log.record(rec)
    pg_log.record(rec.model_copy(update={"candidates": ["other"], "chosen": [0], "scores": None}))
    assert pg_log.get(rec.call_id).candidates == rec.candidates
    assert [c.call_id for c in pg_log.calls()] == [rec.call_id]


def test_the_same_feedback_sent_at_once_by_several_replicas_is_stored_once(pg_url: str) -> None:
    """Issue: feedback locked the call's row FOR SHARE, so replicas given one retried request at once each read no
    repeat and each stored it. (A repeat sent later, and a changed rating: test_calllog.py, on both stores.)"""
    logs = [PostgresCallLog(pg_url) for _ in range(6)]
    try:
        for _ in range(5):
            rec = _record()
            logs[0].record(rec)
            logs[0].flush()
            start = threading.Barrier(len(logs))

            def send(log: PostgresCallLog, call_id: str = rec.call_id) -> None:
                start.wait()
                log.feedback(call_id, label="correct", reference="4")

            threads = [threading.Thread(target=send, args=(log,)) for log in logs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(logs[0].feedback_for(rec.call_id)) == 1
    finally:
        for log in logs:
            log.close()


# feedback checks (bad feedback, a call id no store can hold, a failed call): test_calllog.py, on both stores


def test_a_record_postgresql_refuses_is_dropped_and_the_rest_of_its_batch_written(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue: a record the server refuses for its data (here a call id too long for the primary key's index) failed its
    batch on every retry, so it and every record queued behind it stayed in memory, unwritten, until the log closed."""
    too_long = "bb-" + "".join(f"{i:08x}" for i in range(2000))  # 16 kB, past a btree index row's limit
    with PostgresCallLog(pg_url, timeout=10.0, interval=0.5) as log, caplog.at_level(logging.ERROR, logger="blackbox_sdk"):
        for rec in (_record(call_id="bb-first"), _record(call_id=too_long), _record(call_id="bb-after")):
            log.record(rec)  # one batch: the interval outlasts the three puts
        log.flush()
        assert log.pending == 0
        assert sorted(c.call_id for c in log.calls()) == ["bb-after", "bb-first"]
    assert any("can't be written" in record.getMessage() and "dropped" in record.getMessage() for record in caplog.records)


def test_get_of_an_unknown_call_and_a_bad_limit_raise_config_error(pg_log: PostgresCallLog) -> None:
    with pytest.raises(ConfigError, match="no call"):
        pg_log.get("bb-missing")
    with pytest.raises(ConfigError, match="limit"):
        pg_log.calls(limit=-1)


def _with_password(url: str) -> str:
    """``url`` with PLAIN_SECRET as its password (the test server trusts loopback, so it is never checked)."""
    return url.replace("@", f":{PLAIN_SECRET}@", 1)


def test_a_log_from_a_newer_schema_is_refused_naming_the_log(pg_url: str) -> None:
    """Issue: the refusal did not say which log (a fleet operator has many); it names the URL, never its password."""
    PostgresCallLog(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE blackbox_meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    for create in (True, False):
        with pytest.raises(CallLogError, match="upgrade") as caught:
            PostgresCallLog(_with_password(pg_url), create=create)
        assert url_without_password(_with_password(pg_url)) in str(caught.value) and PLAIN_SECRET not in str(caught.value)


def test_a_schema_version_that_is_not_a_number_is_a_call_log_error(pg_url: str) -> None:
    """Issue: a meta table holding another app's value (or a hand edit) raised int()'s raw ValueError at open."""
    PostgresCallLog(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE blackbox_meta SET value = 'v2-beta' WHERE key = 'schema_version'")
    for create in (True, False):
        with pytest.raises(CallLogError, match="not a number") as caught:
            PostgresCallLog(pg_url, create=create)
        assert url_without_password(pg_url) in str(caught.value)


def test_several_logs_opening_one_empty_database_at_once_all_work(pg_url: str) -> None:
    logs: list[PostgresCallLog] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            logs.append(PostgresCallLog(pg_url))
        except Exception as exc:  # noqa: BLE001 - collected: the assertion names it
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(logs) == 6
    for i, log in enumerate(logs):
        log.record(_record(call_id=f"bb-open-{i}"))
        log.close()
    assert _rows(pg_url, "SELECT COUNT(*) FROM blackbox_calls") == [(6,)]


# ------------------------------------------------------------------------- batched, off the call path


def test_record_returns_before_the_insert_and_a_batch_is_one_transaction(pg_url: str) -> None:
    with PostgresCallLog(pg_url, batch_size=4, interval=60.0) as log:
        for i in range(10):
            log.record(_record(call_id=f"bb-batch-{i:02d}"))
        _wait_until(lambda: log.pending == 2)  # two full batches go at once; two records wait for more
        time.sleep(0.3)
        assert log.pending == 2 and _rows(pg_url, "SELECT COUNT(*) FROM blackbox_calls") == [(8,)]
        log.flush()
        assert log.pending == 0
    per_transaction = _rows(pg_url, "SELECT xmin::text, COUNT(*) FROM blackbox_calls GROUP BY 1 ORDER BY 2 DESC")
    assert [count for _, count in per_transaction] == [4, 4, 2]
    assert _rows(pg_url, "SELECT COUNT(DISTINCT xmin::text) FROM blackbox_candidates") == [(3,)]


def test_a_partial_batch_is_written_after_the_interval_without_a_flush(pg_url: str) -> None:
    with PostgresCallLog(pg_url, batch_size=1000, interval=0.2) as log:
        log.record(_record())
        _wait_until(lambda: _rows(pg_url, "SELECT COUNT(*) FROM blackbox_calls") == [(1,)])
        assert log.pending == 0


def test_eight_threads_of_fifty_records_all_land(pg_url: str) -> None:
    log = PostgresCallLog(pg_url, batch_size=64, interval=30.0)  # the last partial batch is written by close()

    def work(worker: int) -> None:
        for i in range(50):
            log.record(_record(call_id=f"bb-w{worker}-{i:02d}", candidates=[f"w{worker}-{i}", "b"], chosen=[0], scores=None))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    ids = {row[0] for row in _rows(pg_url, "SELECT call_id FROM blackbox_calls")}
    assert ids == {f"bb-w{w}-{i:02d}" for w in range(8) for i in range(50)}
    assert _rows(pg_url, "SELECT COUNT(*) FROM blackbox_candidates") == [(800,)]
    assert _rows(pg_url, "SELECT COUNT(DISTINCT xmin::text) FROM blackbox_calls") <= [(8,)]  # 400 / 64, rounded up


def test_records_left_at_interpreter_exit_are_written(pg_url: str) -> None:
    script = (
        "import sys\n"
        "from blackbox_sdk.call_log import CallRecord, PostgresCallLog\n"
        "log = PostgresCallLog(sys.argv[1], interval=600.0)\n"
        "for i in range(5):\n"
        "    log.record(CallRecord(call_id=f'bb-exit-{i}', endpoint_host='h', model='m', route='chat', request={}))\n"
        "print(log.pending)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, pg_url], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"  # nothing written before exit
    assert _rows(pg_url, "SELECT call_id FROM blackbox_calls ORDER BY call_id") == [(f"bb-exit-{i}",) for i in range(5)]


# ------------------------------------------------------------------------------ a database that stops


def test_records_made_while_the_database_is_down_are_kept_and_written_after(own_server: PostgresServer) -> None:
    log = PostgresCallLog(own_server.url, timeout=20.0, max_pending=3)
    try:
        log.record(_record(call_id="bb-before"))
        log.flush()
        own_server.stop()
        started = time.monotonic()
        for i in range(3):
            log.record(_record(call_id=f"bb-down-{i}"))
        assert time.monotonic() - started < 1.0  # the call path never waits for the database
        with pytest.raises(StoreUnavailableError, match="could not write 3 records"):
            log.flush(timeout=0.5)
        with pytest.raises(StoreUnavailableError, match="3 records waiting"):
            log.record(_record(call_id="bb-refused"))  # the memory bound: refused, never dropped silently
        assert log.pending == 3
        own_server.start()
        log.flush(timeout=120)
        assert log.pending == 0
    finally:
        log.close()
    ids = [row[0] for row in _rows(own_server.url, "SELECT call_id FROM blackbox_calls ORDER BY call_id")]
    assert ids == ["bb-before", "bb-down-0", "bb-down-1", "bb-down-2"]


def test_feedback_and_reads_while_the_database_is_down_raise_store_unavailable(own_server: PostgresServer) -> None:
    log = PostgresCallLog(own_server.url, timeout=3.0)
    try:
        rec = _record()
        log.record(rec)
        log.flush()
        own_server.stop()
        with pytest.raises(StoreUnavailableError):
            log.feedback(rec.call_id, label="correct")
        with pytest.raises(StoreUnavailableError):
            log.stats()
    finally:
        own_server.start()
        log.close()


def test_reads_and_feedback_on_a_stalled_database_fail_within_the_timeout_and_it_recovers(own_server: PostgresServer) -> None:
    """Issue: libpq has no read timeout, so a read or feedback on a server that stopped answering (a paused host) waited
    forever on the pooled connection's check before it."""
    log = PostgresCallLog(own_server.url, timeout=2.0)
    outcomes: list[Exception | None] = []

    def read_and_rate(rec: CallRecord) -> None:
        for use in (lambda: log.get(rec.call_id), lambda: log.feedback(rec.call_id, label="correct"), log.stats):
            try:
                use()
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - kept for the assertion
                outcomes.append(exc)

    try:
        rec = _record()
        log.record(rec)
        log.flush()
        with own_server.paused():
            reader = threading.Thread(target=read_and_rate, args=(rec,), daemon=True)
            reader.start()
            reader.join(120)  # far past the three 2 s timeouts: alive here means a hang
            assert not reader.is_alive(), "a read on the stalled database never returned"
        assert [type(outcome) for outcome in outcomes] == [StoreUnavailableError] * 3, outcomes
        log.feedback(rec.call_id, label="correct")  # the server answers again: so does the log
        assert log.get(rec.call_id).call_id == rec.call_id and len(log.feedback_for(rec.call_id)) == 1
    finally:
        log.close()


def test_an_unreachable_database_fails_a_reader_at_open_without_its_password() -> None:
    url = f"postgresql://someone:{PLAIN_SECRET}@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreUnavailableError) as caught:
        PostgresCallLog(url, timeout=5.0, create=False)
    assert PLAIN_SECRET not in str(caught.value) and "127.0.0.1" in str(caught.value)


def test_a_log_opened_while_the_database_is_down_keeps_its_records_and_writes_them_once_it_is_up(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue: a log (and so ``OpenAI(log=URL)``) opened while PostgreSQL was down or restarting raised, so an app
    restarted during a short outage crash-looped, though the same outage a moment later loses no record."""
    own_server.stop()
    url = own_server.url.replace("@", f":{PLAIN_SECRET}@", 1)  # trust authentication ignores it
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        log = PostgresCallLog(url, timeout=5.0)
        client = OpenAI(api_key=OPENAI_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", log=url)
    try:
        assert "kept in memory" in caplog.text and PLAIN_SECRET not in caplog.text
        assert log.log_id == log.address_id != ""  # its own not known until the database answers (test_log_repair.py)
        for i in range(3):
            log.record(_record(call_id=f"bb-early-{i}"))
        with pytest.raises(StoreUnavailableError):
            log.stats()
        own_server.start()
        log.flush(timeout=120)
        assert log.stats()["calls"] == 3
        assert [(log.log_id,)] == _rows(own_server.url, "SELECT value FROM blackbox_meta WHERE key = 'log_id'")
    finally:
        client.close()
        log.close()
    assert _rows(own_server.url, "SELECT call_id FROM blackbox_calls ORDER BY call_id") == [(f"bb-early-{i}",) for i in range(3)]


@pytest.mark.parametrize("part", ["database", "role"])
def test_a_database_or_role_the_server_lacks_is_a_config_error_at_open(postgres_server: PostgresServer, part: str) -> None:
    url = postgres_server.url.replace("@", f":{PLAIN_SECRET}@", 1)
    url = url.rsplit("/", 1)[0] + "/bb_no_such_db" if part == "database" else url.replace(f"//{postgres_server.user}:", "//bb_no_such_role:", 1)
    with pytest.raises(ConfigError, match="no such database or role") as caught:
        PostgresCallLog(url, timeout=5.0)
    assert PLAIN_SECRET not in str(caught.value)


@pytest.mark.parametrize("setting", [":99999/db", ":0/db", ":{port}/db?sslmode=bogus", ":{port}/db?connect_timeout=soon",
                                     ":{port}/db?target_session_attrs=any-kind", ":{port}/db?hostaddr=not-an-address",
                                     ":{port}/db?service=bb-no-such-service", ":{port}/db?sslmode=require&sslrootcert=system"])
def test_a_setting_libpq_refuses_when_it_connects_is_a_config_error_at_open(setting: str) -> None:
    """Issue: libpq checks a port and some options only when it connects, so such a URL, taken for an outage, would keep a
    writer's records in memory for good; before, it was a StoreUnavailableError or CallLogError, as for a server down."""
    url = f"postgresql://someone:{PLAIN_SECRET}@127.0.0.1" + setting.format(port=free_port())
    for create in (True, False):
        with pytest.raises(ConfigError, match="libpq can't use one of its settings") as caught:
            PostgresCallLog(url, timeout=5.0, create=create)
        assert PLAIN_SECRET not in str(caught.value)


def test_a_role_without_connect_on_the_database_is_a_config_error_at_open(pg_url: str) -> None:
    role = f"bb_nobody_{uuid.uuid4().hex[:8]}"
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
    owner = pg_url.split("//", 1)[1].split("@", 1)[0]
    try:
        with pytest.raises(ConfigError, match="does not let the URL's user connect"):
            PostgresCallLog(pg_url.replace(f"//{owner}@", f"//{role}@", 1), timeout=5.0)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize(("query", "bound_s"), [("", 8), ("?connect_timeout=2", 4)], ids=["default", "url"])
def test_a_server_that_never_answers_fails_a_reader_at_open_within_the_connect_timeout(query: str, bound_s: float) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel's backlog), never speaks
        url = f"postgresql://someone:{PLAIN_SECRET}@127.0.0.1:{silent.getsockname()[1]}/nowhere{query}"
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="127.0.0.1.*connect_timeout") as caught:
            PostgresCallLog(url, create=False)
    assert time.monotonic() - started < bound_s and PLAIN_SECRET not in str(caught.value)


def test_repr_and_url_never_show_the_password(postgres_server: PostgresServer) -> None:
    url = postgres_server.url.replace("@", f":{PLAIN_SECRET}@", 1)  # trust authentication ignores it
    with PostgresCallLog(url) as log:
        assert PLAIN_SECRET not in repr(log) and PLAIN_SECRET not in log.url
        assert log.url == postgres_server.url


def test_closed_log_refuses_records_and_reads(pg_log: PostgresCallLog, tmp_path: Path) -> None:
    """Issue: calls() and export_jsonl() on a closed log raised StoreUnavailableError (its pool is closed), an outage a
    caller would retry, where every other use says the log is closed."""
    rec = _record()
    pg_log.record(rec)
    pg_log.close()
    pg_log.close()  # twice is fine
    uses: list[Callable[[], object]] = [
        lambda: pg_log.record(_record()), pg_log.stats, lambda: pg_log.get(rec.call_id), lambda: pg_log.feedback(rec.call_id, label="correct"),
        lambda: list(pg_log.calls()), lambda: pg_log.export_jsonl(io.StringIO()), lambda: pg_log.export_jsonl(tmp_path / "calls.jsonl"),
    ]
    for use in uses:
        with pytest.raises(CallLogError, match=r"^the call log postgresql://\S+ is closed$"):
            use()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- opening by target


def test_open_call_log_picks_the_store_by_target(pg_url: str, tmp_path: Path) -> None:
    with contextlib.closing(open_call_log(pg_url)) as pg, contextlib.closing(open_call_log(tmp_path / "calls.db")) as lite:
        assert isinstance(pg, PostgresCallLog) and isinstance(lite, CallLog)
        assert isinstance(pg, CallLogStore) and isinstance(lite, CallLogStore)
    with contextlib.closing(open_call_log(pg_url.replace("postgresql://", "postgres://", 1))) as short:
        assert isinstance(short, PostgresCallLog)
    with contextlib.closing(open_call_log(str(tmp_path / "other.db"))) as by_string:
        assert isinstance(by_string, CallLog)


@pytest.mark.parametrize(
    ("target", "expected"),
    [("postgresql://u@h/db", True), ("postgres://h/db", True), ("POSTGRESQL://h", True), ("calls.db", False),
     ("/data/postgresql://x", False), ("./postgresql:/h/db", False)],
)
def test_is_postgres_url(target: str, expected: bool) -> None:
    assert is_postgres_url(target) is expected


def test_url_without_password_drops_password_and_query() -> None:
    assert url_without_password("postgresql://u:p%40ss@db.example:5433/calls?password=x&sslmode=require") == "postgresql://u@db.example:5433/calls"
    assert url_without_password("postgresql://u:pw@[::1/db") == "postgresql://u@[::1/db"  # urllib can't split it; this never raises


@pytest.mark.parametrize("password", [f"{PLAIN_SECRET}#x", f"{PLAIN_SECRET}?x=1", f"{PLAIN_SECRET}/x", f"{PLAIN_SECRET}@x/y"])
def test_a_password_not_percent_encoded_is_never_shown(password: str) -> None:
    url = f"postgresql://app:{password}@db.example:5433/calls?application_name=me@corp"
    assert url_without_password(url) == "postgresql://app@db.example:5433/calls"


@pytest.mark.parametrize("password", [f"{PLAIN_SECRET}@corp@x", f"{PLAIN_SECRET}/corp@x"], ids=["at", "slash"])
def test_a_password_libpq_would_misread_is_a_config_error_that_never_shows_it(
    postgres_server: PostgresServer, password: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue: libpq ends a pasted password at its first "@" (or reads a "/" as the path) and tries the rest as a host; a log
    opened so while writes wait for the database would have its pool retry that "host", naming it in psycopg's warnings."""
    at = postgres_server.url.rpartition("@")[2]
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError, match="percent-encode") as caught:
        PostgresCallLog(f"postgresql://app:{password}@{at}", timeout=5.0)
    assert "hunter2" not in str(caught.value) + caplog.text and "corp@x" not in str(caught.value) + caplog.text, str(caught.value)


@pytest.mark.parametrize("scheme", ["POSTGRESQL", "Postgres"])
def test_a_mixed_case_scheme_opens_the_log(pg_url: str, scheme: str) -> None:
    with contextlib.closing(open_call_log(pg_url.replace("postgresql", scheme, 1))) as log:
        assert isinstance(log, PostgresCallLog) and log.stats()["calls"] == 0


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgresql://app:{PLAIN_SECRET}%zz@127.0.0.1:9/calls", id="bad-percent-escape"),  # libpq quotes the password
        pytest.param(f"postgresql://app:{PLAIN_SECRET}@[::1/calls", id="unclosed-ipv6-bracket"),  # libpq quotes the URL; urllib raises
        pytest.param(f"postgresql://app@127.0.0.1:9/calls?password={PLAIN_SECRET}%zz", id="bad-escape-in-query"),
        pytest.param(f"postgresql://app:{PLAIN_SECRET}%A8@127.0.0.1:9/calls", id="escape-not-utf8"),  # was a raw UnicodeDecodeError
        pytest.param(f"postgresql://app:{PLAIN_SECRET}@127.0.0.1:9/calls%FF", id="escape-not-utf8-in-path"),
        pytest.param(f"postgresql://app:{PLAIN_SECRET}@db..internal:9/calls", id="empty-host-label"),  # was a raw UnicodeError
        pytest.param(f"postgresql://app:{PLAIN_SECRET}@{'d' * 64}.internal:9/calls", id="host-label-too-long"),
    ],
)
def test_a_url_libpq_cannot_parse_is_a_config_error_without_its_password(url: str) -> None:
    openers: list[Callable[[str], object]] = [
        PostgresCallLog, open_call_log, lambda target: OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=target),
    ]
    for opener in openers:
        with pytest.raises(ConfigError) as caught:
            opener(url)
        shown = "".join(traceback.format_exception(caught.value))  # the message and anything chained to it
        assert "bad PostgreSQL URL 'postgresql://app@" in shown and PLAIN_SECRET not in shown


def test_opening_without_create_refuses_an_empty_database_and_creates_nothing(pg_url: str) -> None:
    with pytest.raises(CallLogError, match="no table blackbox_meta, blackbox_calls, blackbox_candidates, blackbox_feedback") as caught:
        open_call_log(_with_password(pg_url), create=False)
    assert url_without_password(_with_password(pg_url)) in str(caught.value) and PLAIN_SECRET not in str(caught.value)  # which database
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'blackbox%'").fetchone() == (0,)


def test_a_role_that_may_not_create_writes_to_tables_made_before(pg_url: str) -> None:
    """Issue: opening the log ran CREATE TABLE IF NOT EXISTS even when every table was there, which PostgreSQL refuses to a
    role without CREATE on the schema (PostgreSQL 15's default for public): an application's least-privilege role could
    not log to the tables its DBA made."""
    PostgresCallLog(pg_url).close()  # the owner makes the tables
    role = f"bb_writer_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT UPDATE ON blackbox_calls TO {role}")  # feedback locks the call's row (FOR NO KEY UPDATE)
    owner = pg_url.split("//", 1)[1].split("@", 1)[0]
    try:
        with PostgresCallLog(pg_url.replace(f"//{owner}@", f"//{role}@", 1)) as log, PostgresCallLog(pg_url, create=False) as made:
            rec = _record()
            log.record(rec)
            log.feedback(rec.call_id, label="correct")
            assert log.stats()["calls"] == 1 and log.log_id == made.log_id
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the import system's own "cannot import"
    with pytest.raises(ConfigError, match=r"pip install 'blackbox-sdk\[postgres\]'"):
        PostgresCallLog("postgresql://u@127.0.0.1/db")


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"max_pending": True}, {"interval": -1.0}, {"timeout": 0}, {"timeout": math.inf}, {"pool_size": 1.5},
     {"timeout": 10**400}, {"interval": 10**400}],  # ints no float holds
)
def test_bad_settings_raise_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PostgresCallLog("postgresql://u@127.0.0.1/db", **kwargs)


def test_a_path_is_not_a_postgres_url() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        PostgresCallLog("calls.db")


def test_stats_read_one_snapshot_of_a_postgres_log_that_another_writer_adds_to_meanwhile(pg_log: PostgresCallLog, pg_url: str) -> None:
    """Issue: stats read the calls and the feedback count in two statements under READ COMMITTED, each its own snapshot,
    so feedback another host committed between them was counted beside calls read before it. Another host holds the
    feedback table (locked, a feedback row written) until the stats wait on it, having counted the calls, then commits:
    the stats, one snapshot now, count the log as it stood when they began."""
    rated = _record()
    pg_log.record(rated)
    assert pg_log.stats()["feedback"] == 0  # the tables set up and the call written
    waiting = ("SELECT COUNT(*) FROM pg_locks JOIN pg_class ON pg_class.oid = pg_locks.relation WHERE relname = 'blackbox_feedback'"
               " AND NOT granted AND pg_locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    counted: list[dict[str, Any]] = []
    with psycopg.connect(pg_url) as writer:
        writer.execute("LOCK TABLE blackbox_feedback IN ACCESS EXCLUSIVE MODE")
        writer.execute("INSERT INTO blackbox_feedback (call_id, created, label) VALUES (%s, 0, 'correct')", (rated.call_id,))
        reader = threading.Thread(target=lambda: counted.append(pg_log.stats()))
        reader.start()
        _wait_until(lambda: _rows(pg_url, waiting) == [(1,)])
    reader.join(timeout=30)
    assert counted and (counted[0]["calls"], counted[0]["feedback"]) == (1, 0)
    assert pg_log.stats()["feedback"] == 1


@pytest.mark.parametrize("target", ["postgresql:/app:s3cret@127.0.0.1:5432/calls", "Postgres:app:s3cret@host/calls"])
@pytest.mark.parametrize("opens", [
    pytest.param(lambda target: OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", log=target), id="client"),
    pytest.param(lambda target: open_call_log(target), id="open_call_log"),
])
def test_a_postgres_url_missing_its_slashes_is_refused_not_opened_as_a_file(
    target: str, opens: Callable[[str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """postgresql:/host (one slash) made an SQLite log under a folder named "postgresql:" in the working folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="needs // after it") as refused:
        opens(target)
    assert "s3cret" not in str(refused.value) and list(tmp_path.iterdir()) == []
