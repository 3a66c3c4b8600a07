"""The SQLite call log's background writer: the client's records are queued off the call path and
written in batches, and none is ever lost: close, every read, and interpreter exit write what waits."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blackbox_sdk import (
    Budget,
    CallLog,
    CallLogError,
    ConfigError,
    OpenAI,
    RateLimits,
    StoreUnavailableError,
)
from blackbox_sdk.call_log import CallRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is 26 plus 28?"}]
LATER = {"interval": 600.0, "batch_size": 1_000_000}  # nothing is written until a flush, a read or close


def _record(**changes: Any) -> CallRecord:
    """A plausible logged call with two candidates."""
    fields: dict[str, Any] = {
        "endpoint_host": "127.0.0.1", "model": MODEL, "route": "chat.completions",
        "request": {"model": MODEL, "messages": QUESTION}, "candidates": ["54", "fifty-four"], "chosen": [0],
    }
    return CallRecord(**{**fields, **changes})


def _count(path: Path, table: str = "calls") -> int:
    """Rows in one table, read through a connection of this test's own."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _ids(path: Path) -> list[str]:
    """The logged call ids, sorted."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT call_id FROM calls"))


def _wait_until(done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``done()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextlib.contextmanager
def _failing_inserts(path: Path) -> Iterator[None]:
    """Every insert of a candidate fails (a disk-trouble stand-in SQLite itself raises) until the block ends."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TRIGGER trouble BEFORE INSERT ON candidates BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        conn.commit()
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER trouble")
            conn.commit()


# --------------------------------------------------------------------------- queued, then written


def test_enqueue_returns_before_the_insert_and_close_writes_every_record(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    log = CallLog(path, **LATER)
    records = [_record(call_id=f"bb-q-{i:02d}") for i in range(20)]
    for rec in records:
        log.enqueue(rec)
    assert log.pending == 20 and _count(path) == 0
    log.close()
    assert _ids(path) == [rec.call_id for rec in records]
    assert _count(path, "candidates") == 40


def test_a_full_batch_is_written_without_a_flush_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with CallLog(path, batch_size=5, interval=600.0) as log:
        for i in range(12):
            log.enqueue(_record(call_id=f"bb-b-{i:02d}"))
        _wait_until(lambda: log.pending == 2)  # two full batches go at once; two records wait for more
        assert _count(path) == 10


def test_a_partial_batch_is_written_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with CallLog(path, batch_size=1000, interval=0.1) as log:
        log.enqueue(_record())
        _wait_until(lambda: _count(path) == 1)
        assert log.pending == 0


def test_every_read_and_feedback_sees_the_records_queued_before_it(tmp_path: Path) -> None:
    with CallLog(tmp_path / "calls.db", **LATER) as log:
        first, second = _record(), _record(candidates=["4"])
        log.enqueue(first)
        assert log.get(first.call_id) == first
        log.enqueue(second)
        log.feedback(second.call_id, label="correct")  # feedback needs its call: it flushes first
        assert [f.label for f in log.feedback_for(second.call_id)] == ["correct"]
        third = _record()
        log.enqueue(third)
        assert [c.call_id for c in log.calls()] == [first.call_id, second.call_id, third.call_id]
        log.enqueue(_record())
        assert log.stats()["calls"] == 4
        log.enqueue(_record())
        out = io.StringIO()
        assert log.export_jsonl(out) == 5
        assert [json.loads(line)["call_id"] for line in out.getvalue().splitlines()][:3] == [first.call_id, second.call_id, third.call_id]


def test_another_log_object_on_the_same_file_sees_this_process_queue(tmp_path: Path) -> None:
    writer = CallLog(tmp_path / "calls.db", **LATER)
    rec = _record()
    writer.enqueue(rec)
    with CallLog(tmp_path / "." / "calls.db") as reader:  # the same file, spelled another way
        assert [c.call_id for c in reader.calls()] == [rec.call_id]
    writer.close()


def test_records_queued_at_interpreter_exit_are_written(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    script = (
        "import sys\n"
        "from blackbox_sdk.call_log import CallLog, CallRecord\n"
        "log = CallLog(sys.argv[1], interval=600.0, batch_size=10**6)\n"
        "for i in range(5):\n"
        "    log.enqueue(CallRecord(call_id=f'bb-exit-{i}', endpoint_host='h', model='m', route='chat', request={}, candidates=['a']))\n"
        "print(log.pending)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"  # nothing written before exit
    assert _ids(path) == [f"bb-exit-{i}" for i in range(5)]
    assert _count(path, "candidates") == 5


def test_eight_threads_of_fifty_records_all_land(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    log = CallLog(path, batch_size=64, interval=30.0)

    def work(worker: int) -> None:
        for i in range(50):
            log.enqueue(_record(call_id=f"bb-w{worker}-{i:02d}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    log.close()
    assert _ids(path) == sorted(f"bb-w{w}-{i:02d}" for w in range(8) for i in range(50))
    assert _count(path, "candidates") == 800


# ------------------------------------------------------------------------------- nothing is lost


def test_records_are_kept_while_the_file_fails_and_refused_past_max_pending(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    log = CallLog(path, max_pending=3)
    try:
        with _failing_inserts(path):
            for i in range(3):
                log.enqueue(_record(call_id=f"bb-kept-{i}"))
            with pytest.raises(StoreUnavailableError, match="could not write 3 records"):
                log.flush(timeout=0.5)
            with pytest.raises(StoreUnavailableError, match="3 records waiting"):
                log.enqueue(_record(call_id="bb-refused"))  # the memory bound: refused, never dropped silently
            assert log.pending == 3 and _count(path) == 0
        log.flush(timeout=30)
        assert log.pending == 0
    finally:
        log.close()
    assert _ids(path) == ["bb-kept-0", "bb-kept-1", "bb-kept-2"]


def test_close_names_the_records_it_could_not_write(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    log = CallLog(path, timeout=0.5)
    with _failing_inserts(path):
        log.enqueue(_record(call_id="bb-stuck"))
        with pytest.raises(StoreUnavailableError, match="1 records it could not write: bb-stuck"):
            log.close()
    with pytest.raises(CallLogError, match="closed"):
        log.enqueue(_record())


def test_a_repeated_call_id_is_skipped_without_holding_up_the_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with CallLog(tmp_path / "calls.db", **LATER) as log:
        rec = _record()
        log.record(rec)  # written at once
        after = _record()
        log.enqueue(rec.model_copy(update={"candidates": ["other"]}))
        log.enqueue(after)
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            log.flush()
        assert log.get(rec.call_id).candidates == rec.candidates  # the first copy is kept
        assert log.get(after.call_id) == after
        assert "1 of 2 queued records were already in" in caplog.text


def test_a_record_spoilt_after_it_was_queued_is_dropped_loudly_and_the_rest_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with CallLog(tmp_path / "calls.db", **LATER) as log:
        spoilt, fine = _record(), _record()
        log.enqueue(spoilt)
        log.enqueue(fine)
        spoilt.request["when"] = object()  # the caller changed it after handing it over: no JSON can hold it
        with caplog.at_level(logging.ERROR, logger="blackbox_sdk"):
            assert [c.call_id for c in log.calls()] == [fine.call_id]
        assert f"call {spoilt.call_id} can't be written" in caplog.text


def test_lone_surrogates_are_replaced_when_a_record_is_built_and_the_queue_goes_on(tmp_path: Path) -> None:
    """Issue: one answer holding half an emoji ("\\ud83d") failed every insert of its batch, so the
    writer retried it forever and nothing queued after it was ever written."""
    with CallLog(tmp_path / "calls.db", timeout=2, **LATER) as log:
        cut = _record(candidates=["smile \ud83d", "4"], request={"messages": [{"role": "user", "content": "\udc00?"}]},
                      error="ValueError: \ud83d", extra={"note\ud800": ["\ud800"]})
        fine = _record()
        log.enqueue(cut)
        log.enqueue(fine)
        stored = {c.call_id: c for c in log.calls()}
        log.feedback(cut.call_id, note="cut \ud83d", reference="\ud83d\ude00")
        feedback = log.feedback_for(cut.call_id)
    assert set(stored) == {cut.call_id, fine.call_id} and log.pending == 0
    assert stored[cut.call_id].candidates == ["smile \ufffd", "4"] and stored[cut.call_id].error == "ValueError: \ufffd"
    assert stored[cut.call_id].request == {"messages": [{"role": "user", "content": "\ufffd?"}]} and stored[cut.call_id].extra == {"note\ufffd": ["\ufffd"]}
    assert (feedback[0].note, feedback[0].reference) == ("cut \ufffd", "\U0001f600")  # a pair is joined into its character


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda rec: rec.candidates.append("\ud83d"), id="surrogate-set-after-it-was-queued"),
        pytest.param(lambda rec: setattr(rec, "retries", 2**64), id="integer-past-64-bits"),
    ],
)
def test_a_record_sqlite_cannot_take_is_dropped_loudly_and_the_rest_of_its_batch_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Callable[[CallRecord], None]
) -> None:
    """Such a record failed its batch with an error that is not an sqlite3.Error, on every retry, forever."""
    with CallLog(tmp_path / "calls.db", timeout=2, **LATER) as log:
        before, spoilt, after = _record(), _record(), _record()
        for rec in (before, spoilt, after):
            log.enqueue(rec)
        spoil(spoilt)
        with caplog.at_level(logging.ERROR, logger="blackbox_sdk"):
            assert [c.call_id for c in log.calls()] == [before.call_id, after.call_id]
        assert f"call {spoilt.call_id} can't be written" in caplog.text and log.pending == 0
    assert _count(tmp_path / "calls.db", "candidates") == 4  # the dropped call left none of its candidates behind


def test_bad_batching_settings_and_records_are_refused(tmp_path: Path) -> None:
    too_big = 10**400  # an int no float holds: a ConfigError, not an OverflowError (later, in the writer's thread)
    for bad in ({"batch_size": 0}, {"max_pending": True}, {"interval": -1.0}, {"interval": float("inf")}, {"interval": too_big}, {"timeout": too_big}):
        with pytest.raises(ConfigError):
            CallLog(tmp_path / "calls.db", **bad)  # type: ignore[arg-type]
    with CallLog(tmp_path / "calls.db") as log, pytest.raises(ConfigError, match="CallRecord"):
        log.enqueue(_record().model_dump())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- the client


def test_a_client_call_never_waits_for_the_log_file(llama_server: str, tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    log = CallLog(path, timeout=60.0)
    client = OpenAI(base_url=llama_server, api_key="sk-test", log=log)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the file's write lock
        answers = [client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0) for _ in range(3)]
        assert _count(path) == 0  # answered while the file is locked: a synchronous insert would have waited its 60 s, then failed
        other.execute("ROLLBACK")
    assert [c.call_id for c in log.calls()] == [a.blackbox.call_id for a in answers]
    client.close()
    log.close()


CLIENT_THAT_EXITS = """
import sys
from blackbox_sdk import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="sk-test", log=sys.argv[2])
for _ in range(3):
    print(client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2).blackbox.call_id)
"""


def test_a_client_process_that_exits_without_close_leaves_every_record(llama_server: str, tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_THAT_EXITS, llama_server, str(path)], capture_output=True, text=True, timeout=300,
        cwd=REPO_ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _ids(path) == sorted(result.stdout.split())


def test_the_prompt_is_counted_once_per_call(llama_server: str, tmp_path: Path) -> None:
    counted: list[str] = []

    def words(text: str) -> int:
        counted.append(text)
        return len(text.split())

    budget = Budget(total_usd=10.0, prices={MODEL: {"input": 1.0, "output": 2.0}}, ledger=str(tmp_path / "ledger.db"))
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, rate_limit=RateLimits(tpm=1_000_000), tokenizer=words)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    assert counted.count(QUESTION[0]["content"]) == 2  # the rate limit's admission and the reservation share one count
    client.close()


def test_a_log_collected_on_a_thread_that_holds_its_file_closes_without_waiting_and_loses_nothing(tmp_path: Path) -> None:
    """A log dropped unclosed is finalized by whichever thread the collection runs on: its own writer thread, or one
    holding the file's write lock. Its records are written in a thread of their own, so neither waits for itself."""
    path = tmp_path / "calls.db"

    def drop_while_holding_the_file() -> float:
        log = CallLog(path, timeout=20.0, interval=0.0)  # a collection that waited for the writes would wait this long
        log.cycle = [log]  # type: ignore[attr-defined]  # freed by a collection, as a client's logs are
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            log.enqueue(_record(call_id="bb-collected"))
            del log
            start = time.monotonic()
            gc.collect()
            waited = time.monotonic() - start
            other.execute("COMMIT")
        return waited

    with ThreadPoolExecutor(1) as pool:
        waited = pool.submit(drop_while_holding_the_file).result()
    assert waited < 10.0  # the collecting thread did not wait for the writes it blocks (a loaded machine took 1.1 s)
    _wait_until(lambda: _ids(path) == ["bb-collected"], timeout=10.0)
