"""The call log: whole records, several writers, redaction on disk, feedback checks (on the SQLite and the PostgreSQL
store alike), export, stats."""

from __future__ import annotations

import contextlib
import datetime as dt
import doctest
import io
import json
import math
import multiprocessing
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pg_databases import fresh_database

from blackbox_sdk import CallLogError, ConfigError, OpenAI
from blackbox_sdk import call_log as calllog_module
from blackbox_sdk.call_log import (
    EXPORT_FORMAT,
    SCHEMA_VERSION,
    CallLog,
    CallLogStore,
    CallRecord,
    Feedback,
    PostgresCallLog,
    new_call_id,
    open_call_log,
)
from blackbox_sdk.call_log import _paging as paging_module
from blackbox_sdk.call_log._export import export_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAI_KEY = "sk-proj-" + "Zx9Yw8Vu" * 6
BEARER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
PLAIN_SECRET = "hunter2-plain-password"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[CallLog]:
    """A fresh call log in a temporary folder."""
    with CallLog(tmp_path / "calls.db") as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgresql"])
def any_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CallLog | PostgresCallLog]:
    """A fresh call log of each store: an SQLite file in a temporary folder, then a PostgreSQL database of its own."""
    if request.param == "sqlite":
        with CallLog(tmp_path / "calls.db") as opened:
            yield opened
        return
    with fresh_database(request.getfixturevalue("postgres_server")) as url, PostgresCallLog(url) as pg_log:
        yield pg_log


def _record(**changes: Any) -> CallRecord:
    """A plausible chat call with three candidates, the second chosen by a reranker."""
    return CallRecord(**_fields(**changes))


def _fields(**changes: Any) -> dict[str, Any]:
    """The fields of `_record`'s call, with ``changes``."""
    fields: dict[str, Any] = {
        "endpoint_host": "api.openai.com",
        "model": "gpt-4o-mini",
        "route": "chat",
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "2 + 2?"}], "max_tokens": 16},
        "candidates": ["5", "4", "four"],
        "chosen": [1],
        "scores": [-1.5, 2.0, 0.5],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "usage_counted": True,
        "cost_usd": 0.000123,
        "latency_s": 0.42,
        "retries": 1,
        "key": "team-a",
        "extra": {"requests": 1},
    }
    return {**fields, **changes}


def _db_bytes(path: Path) -> bytes:
    """Every byte of an SQLite database on disk, including its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


# ----------------------------------------------------------------------------------- records


def test_record_then_get_returns_the_same_call(log: CallLog) -> None:
    rec = _record()
    log.record(rec)
    assert log.get(rec.call_id) == rec


def test_log_file_is_in_wal_mode(log: CallLog) -> None:
    with contextlib.closing(sqlite3.connect(log.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_secrets_never_reach_the_database_file(log: CallLog) -> None:
    rec = _record(
        request={
            "model": "gpt-4o-mini",
            "api_key": PLAIN_SECRET,
            "extra_headers": {"Authorization": f"Bearer {BEARER_TOKEN}", "OpenAI-Organization": "org-1"},
            "messages": [{"role": "user", "content": f"my key is {OPENAI_KEY}"}],
            "max_tokens": 16,
        },
        error=f"AuthenticationError: bad key {OPENAI_KEY}",
        extra={"token": PLAIN_SECRET},
    )
    log.record(rec)
    raw = _db_bytes(log.path)
    assert raw, "the database files should not be empty"
    for secret in (OPENAI_KEY, BEARER_TOKEN, PLAIN_SECRET):
        assert secret.encode() not in raw
    stored = log.get(rec.call_id)
    assert stored.request["api_key"] == "[REDACTED]"
    assert stored.request["extra_headers"] == {"Authorization": "[REDACTED]", "OpenAI-Organization": "org-1"}
    assert stored.request["max_tokens"] == 16
    assert stored.error == "AuthenticationError: bad key [REDACTED]"


def test_a_key_pasted_into_a_feedback_note_never_reaches_the_store(any_log: CallLog | PostgresCallLog) -> None:
    """Issue: a feedback note (free text, as a call's error is) was stored as written, so a key or an auth header a rater
    pasted into it reached the log and every export, though the same text in a request or an error is redacted."""
    rec = _record()
    any_log.record(rec)
    note = f"user said: Authorization: Bearer {BEARER_TOKEN} and key {OPENAI_KEY}"
    any_log.feedback(rec.call_id, label="correct", note=note)
    any_log.feedback(rec.call_id, label="correct", note=note)  # a repeat, compared as stored
    [stored] = any_log.feedback_for(rec.call_id)
    assert stored.note == "user said: Authorization: [REDACTED] and key [REDACTED]"
    sink = io.StringIO()
    any_log.export_jsonl(sink)
    assert OPENAI_KEY not in sink.getvalue() and BEARER_TOKEN not in sink.getvalue()
    if isinstance(any_log, CallLog):
        raw = _db_bytes(any_log.path)
        assert OPENAI_KEY.encode() not in raw and BEARER_TOKEN.encode() not in raw


def test_a_failure_inside_the_transaction_leaves_no_trace(log: CallLog) -> None:
    with contextlib.closing(sqlite3.connect(log.path)) as conn:
        conn.execute(
            "CREATE TRIGGER fail_second_candidate BEFORE INSERT ON candidates WHEN NEW.idx = 1"
            " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
        )
        conn.commit()
    rec = _record()
    with pytest.raises(CallLogError, match="disk trouble"):
        log.record(rec)
    with contextlib.closing(sqlite3.connect(log.path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 0
    single = _record(candidates=["4"], chosen=[0], scores=None)
    log.record(single)
    assert [c.call_id for c in log.calls()] == [single.call_id]


def test_recording_the_same_call_twice_is_refused_and_keeps_the_first(log: CallLog) -> None:
    rec = _record()
    log.record(rec)
    with pytest.raises(ConfigError, match="already"):
        log.record(rec.model_copy(update={"candidates": ["other"], "chosen": [0], "scores": None}))
    assert log.get(rec.call_id).candidates == rec.candidates


def _record_many(path: str, worker: int, count: int) -> None:
    """Child process: record calls one by one into a shared log."""
    with CallLog(path) as shared:
        for i in range(count):
            shared.record(_record(model=f"model-{worker}", candidates=[f"w{worker}-{i}-a", f"w{worker}-{i}-b"], chosen=[0], scores=None))


def test_concurrent_writers_from_several_processes_all_land(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_many, args=(str(path), w, 15)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0, 0]
    with CallLog(path) as log:
        calls = list(log.calls())
        assert len(calls) == 45 and len({c.call_id for c in calls}) == 45
        assert {tuple(c.candidates) for c in calls} == {(f"w{w}-{i}-a", f"w{w}-{i}-b") for w in range(3) for i in range(15)}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"chosen": [3]}, id="chosen-out-of-range"),
        pytest.param({"scores": [1.0]}, id="scores-length"),
        pytest.param({"cost_usd": math.nan}, id="nan-cost"),
        pytest.param({"latency_s": -1.0}, id="negative-latency"),
        pytest.param({"request": {"when": dt.datetime(2024, 1, 1)}}, id="request-not-json"),
        pytest.param({"unknown_field": 1}, id="unknown-field"),
        pytest.param({"retries": 2**63}, id="retries-beyond-sqlite-integer"),
    ],
)
def test_invalid_records_are_a_config_error_naming_the_field_when_built(changes: dict[str, Any]) -> None:
    fields = _fields(**changes)
    builders: list[Callable[[], CallRecord]] = [lambda: CallRecord(**fields), lambda: CallRecord.model_validate(fields)]
    with contextlib.suppress(TypeError):  # a request that is not JSON can't be sent as JSON either
        text = json.dumps(fields)
        builders.append(lambda: CallRecord.model_validate_json(text))
    for build in builders:  # pydantic's model_validate skips nothing: the same error as the constructor's
        with pytest.raises(ConfigError, match="^bad CallRecord: ") as refused:
            build()
        assert not isinstance(refused.value, pydantic.ValidationError)
        field = next(iter(changes))
        assert field in str(refused.value) or field in {"chosen", "scores"}  # a check across fields names the record
        assert "Value error, bad CallRecord" not in str(refused.value)  # not the constructor's error wrapped again
    good = _record()
    assert CallRecord.model_validate(good.model_dump()) == good == CallRecord.model_validate_json(good.model_dump_json())


def test_record_takes_only_call_records(log: CallLog) -> None:
    with pytest.raises(ConfigError, match="CallRecord"):
        log.record(_record().model_dump())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, {1, 2}], ids=["nan", "a set"])
def test_a_record_changed_into_what_json_cant_hold_is_a_config_error_and_writes_nothing(log: CallLog, value: Any) -> None:
    rec = _record()
    rec.extra["score"] = value  # after it was built and checked
    with pytest.raises(ConfigError, match="its extra is not plain JSON"):
        log.record(rec)
    assert log.stats()["calls"] == 0


def test_new_call_ids_are_unique_and_time_sortable() -> None:
    first = new_call_id()
    time.sleep(0.002)
    later = [new_call_id() for _ in range(200)]
    assert len(set(later)) == 200
    assert all(i.startswith("bb-") for i in later)
    assert all(int(first.split("-")[1], 16) < int(i.split("-")[1], 16) for i in later)


# ---------------------------------------------------------------------------------- feedback


def test_feedback_is_stored_in_order_and_rates_the_chosen_answer(log: CallLog) -> None:
    rec = _record()
    log.record(rec)
    log.feedback(rec.call_id, label="correct", note="checked by hand")
    log.feedback(rec.call_id, preferred=2, reference="4")
    log.feedback(rec.call_id, reward=0.25)
    items = log.feedback_for(rec.call_id)
    assert [(f.label, f.preferred, f.reference, f.reward) for f in items] == [
        ("correct", None, None, None), (None, 2, "4", None), (None, None, None, 0.25)
    ]
    assert [f.candidate for f in items] == [rec.chosen[0], None, rec.chosen[0]]
    assert items[0].created <= items[1].created <= items[2].created


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"label": "correct"}, "no call", id="unknown-call"),
        pytest.param({"preferred": 3}, "must index", id="preferred-past-the-end"),
        pytest.param({"preferred": -1}, "must index", id="preferred-negative"),
        pytest.param({"preferred": True}, "preferred", id="preferred-bool"),
        pytest.param({"label": "maybe"}, "label", id="label-not-allowed"),
        pytest.param({"label": 1}, "^label must be one of 'correct', 'incorrect', got 1$", id="label-a-number"),
        pytest.param({"reference": 4}, "^reference must be a string, got 4$", id="reference-a-number"),
        pytest.param({"reference": " \n"}, r"^reference must be the right answer's text, got ' \\n'$", id="reference-blank"),
        pytest.param({"reference": "", "label": "incorrect"}, "^reference must be the right answer's text, got ''$", id="reference-empty"),
        pytest.param({"note": ["x"]}, r"^note must be a string, got \['x'\]$", id="note-a-list"),
        pytest.param({"preferred": 1.0}, r"^preferred must be an integer \(the index of a candidate\), got 1.0$", id="preferred-a-float"),
        pytest.param({"reward": math.inf}, "reward", id="reward-infinite"),
        pytest.param({"reward": True}, "reward must be a finite number", id="reward-bool"),
        pytest.param({"reward": "1"}, "reward must be a finite number", id="reward-a-string"),
        pytest.param({"reward": 10**400}, "^reward must be a finite number, got an integer too large for a float$", id="reward-an-int-past-float"),
        pytest.param({"reward": 10**5000}, "too large for a float", id="reward-an-int-past-repr"),
        pytest.param({}, "at least one", id="no-feedback"),
    ],
)
def test_bad_feedback_raises_config_error_and_stores_nothing(any_log: CallLog | PostgresCallLog, kwargs: dict[str, Any], message: str) -> None:
    rec = _record()
    any_log.record(rec)
    call_id = "bb-unknown" if message == "no call" else rec.call_id
    with pytest.raises(ConfigError, match=message):
        any_log.feedback(call_id, **kwargs)
    assert any_log.feedback_for(rec.call_id) == []
    assert any_log.stats()["feedback"] == 0


@pytest.mark.parametrize("call_id", ["bb-\ud800", 5, ""], ids=["lone-surrogate", "not-a-string", "empty"])
def test_a_call_id_no_store_can_hold_is_a_config_error_before_the_log_is_read(any_log: CallLog | PostgresCallLog, call_id: Any) -> None:
    with pytest.raises(ConfigError, match="call_id must be"):
        any_log.get(call_id)
    with pytest.raises(ConfigError, match="call_id must be"):
        any_log.feedback_for(call_id)
    with pytest.raises(ConfigError, match="call_id must be"):
        any_log.feedback(call_id, reward=1.0)


@pytest.mark.parametrize("created", [time.time() * 1000, 253402300800.0, -62135596801.0], ids=["milliseconds", "year-10000", "year-0"])
def test_a_time_no_day_holds_is_refused_and_the_stats_still_read(any_log: CallLog | PostgresCallLog, created: float) -> None:
    """Issue: a record whose time was in milliseconds (or past the year 9999) was written, and the SQLite log's stats then
    failed on it for good ("its created time is not a Unix time"); PostgreSQL's, past its own range, too."""
    with pytest.raises(ConfigError, match="created time is not seconds since the epoch"):
        any_log.record(_record(call_id="bb-bad-time", created=created))
    any_log.record(_record(call_id="bb-last-second", created=253402300799.0))
    assert any_log.stats()["by_day_model"][0]["day"] == "9999-12-31"
    assert [rec.call_id for rec in any_log.calls()] == ["bb-last-second"]


@pytest.mark.parametrize(
    ("created", "day"),
    [(1714521599.9996, "2024-04-30"), (-0.0004, "1969-12-31"), (1714521600.0, "2024-05-01")],
    ids=["last-half-millisecond", "before-the-epoch", "midnight"],
)
def test_stats_put_a_call_at_a_days_end_on_its_own_day(any_log: CallLog | PostgresCallLog, created: float, day: str) -> None:
    """Issue: SQLite's date() rounds a time to the millisecond, so a call in a day's last half millisecond went on the next
    day, where PostgreSQL's stats (and Python's datetime) keep it: the two stores gave the same calls different days."""
    assert dt.datetime.fromtimestamp(created, dt.timezone.utc).strftime("%Y-%m-%d") == day
    any_log.record(_record(created=created))
    assert [row["day"] for row in any_log.stats()["by_day_model"]] == [day]


def test_a_failed_call_takes_a_reference_but_not_a_rating(any_log: CallLog | PostgresCallLog) -> None:
    failed = _record(candidates=[], chosen=[], scores=None, error="APIConnectionError: down")
    any_log.record(failed)
    with pytest.raises(ConfigError, match="nothing to rate"):
        any_log.feedback(failed.call_id, reward=1.0)
    any_log.feedback(failed.call_id, reference="4")
    assert [f.reference for f in any_log.feedback_for(failed.call_id)] == ["4"]


def test_the_same_feedback_sent_again_is_stored_once_and_a_changed_rating_is_kept(any_log: CallLog | PostgresCallLog) -> None:
    """Issue: a client that retried feedback whose answer it lost (or a retried POST /v1/feedback) stored it twice:
    counted twice in stats, and a reference twice in training. A repeat of the latest is stored once; a change is kept."""
    rec, other = _record(), _record()
    any_log.record(rec)
    any_log.record(other)
    for _ in range(3):
        any_log.feedback(rec.call_id, label="correct", reference="4", note="n\x00")  # a NUL: PostgreSQL stores U+FFFD
    any_log.feedback(other.call_id, label="correct", reference="4", note="n\x00")  # another call's is its own
    assert len(any_log.feedback_for(rec.call_id)) == 1 and any_log.stats()["feedback"] == 2
    any_log.feedback(rec.call_id, label="incorrect")
    any_log.feedback(rec.call_id, label="correct", reference="4", note="n\x00")  # a correction back: the latest again
    any_log.feedback(rec.call_id, reward=1)
    any_log.feedback(rec.call_id, reward=1.0)  # the same reward
    labels = [(f.label, f.reward) for f in any_log.feedback_for(rec.call_id)]
    assert labels == [("correct", None), ("incorrect", None), ("correct", None), (None, 1.0)]
    assert any_log.stats()["feedback"] == 5


@pytest.mark.parametrize("chosen", ["null", '"1"', "[1.5]", "[7]", "{}", "[true]"])
def test_feedback_on_a_call_whose_stored_choice_is_damaged_is_a_call_log_error_naming_it(any_log: CallLog | PostgresCallLog, chosen: str) -> None:
    """Issue: feedback read a stored ``chosen`` as it found it: a row edited by hand raised TypeError (JSON null) or
    json's error, or rated a candidate the call does not have (PostgreSQL: "1" and 1.5 read as 1), where a read of the
    same row is a CallLogError naming the call."""
    rec = _record()
    any_log.record(rec)
    any_log.flush()
    _damage(any_log, f"UPDATE {{calls}} SET chosen = '{chosen}'")
    with pytest.raises(CallLogError, match=rf"^call '{rec.call_id}' in the call log {_log_name(any_log)} can't be read: its chosen is not a list of indices into its 3 candidates$"):
        any_log.feedback(rec.call_id, label="correct")
    assert any_log.stats()["feedback"] == 0


def test_feedback_on_a_call_whose_stored_choice_is_not_json_is_a_call_log_error_naming_it(log: CallLog) -> None:
    rec = _record()
    log.record(rec)
    _damage(log, "UPDATE {calls} SET chosen = 'not json['")
    with pytest.raises(CallLogError, match=rf"^call '{rec.call_id}' in the call log {_log_name(log)} can't be read: its chosen is not JSON$"):
        log.feedback(rec.call_id, label="correct")


@pytest.mark.parametrize("cost", ["-2", "'Infinity'", "'NaN'"])
def test_stats_name_a_call_whose_stored_cost_a_read_refuses(any_log: CallLog | PostgresCallLog, cost: str) -> None:
    """Issue: stats summed a cost edited by hand into the spend (a negative one taken off it, an infinite one making it
    infinite; SQLite: text as 0), where a read of the same row is a CallLogError naming the call."""
    kept, damaged = _record(call_id="bb-kept", cost_usd=0.5), _record(call_id="bb-damaged", cost_usd=0.25)
    any_log.record(kept)
    any_log.record(damaged)
    any_log.flush()
    _damage(any_log, f"UPDATE {{calls}} SET cost_usd = {cost} WHERE call_id = 'bb-damaged'")
    message = f"^call 'bb-damaged' in the call log {_log_name(any_log)} can't be read: its cost_usd is not a finite number of dollars, 0 or more$"
    with pytest.raises(CallLogError, match=message):
        any_log.stats()
    with pytest.raises(CallLogError, match=f"^call 'bb-damaged' in the call log {_log_name(any_log)} can't be read: bad CallRecord: cost_usd"):
        any_log.get("bb-damaged")


@pytest.mark.parametrize("created", ["'Infinity'", "'NaN'", "1e300", "-1e20", "253402300800.5"])
def test_stats_name_a_call_whose_stored_time_no_day_holds(any_log: CallLog | PostgresCallLog, created: str) -> None:
    """Issue: PostgreSQL's stats put a time edited in by hand on no day (a None among the days, which failed to sort beside
    another's), on the year 10000, or failed with "timestamp out of range" naming no call, where SQLite's named the call."""
    any_log.record(_record(call_id="bb-kept"))
    any_log.record(_record(call_id="bb-damaged"))
    any_log.flush()
    _damage(any_log, f"UPDATE {{calls}} SET created = {created} WHERE call_id = 'bb-damaged'")
    message = f"^call 'bb-damaged' in the call log {_log_name(any_log)} can't be read: its created time is not a Unix time in seconds in the years 1 to 9999$"
    with pytest.raises(CallLogError, match=message):
        any_log.stats()


@pytest.mark.parametrize(
    ("statement", "damage"),
    [
        ("cost_usd = '$1.00'", "its cost_usd is not a finite number of dollars, 0 or more"),
        ("cost_usd = '1,5'", "its cost_usd is not a finite number of dollars, 0 or more"),  # SUM read it as 1
        ("cost_usd = x'00'", "its cost_usd is not a finite number of dollars, 0 or more"),
        ("cache_hit = 'yes'", "its cache_hit is not 0 or 1"),
        ("cache_hit = 2", "its cache_hit is not 0 or 1"),
    ],
    ids=["dollar-text", "comma-text", "blob", "hit-text", "hit-two"],
)
def test_sqlite_stats_name_a_call_whose_stored_cost_or_hit_is_not_a_number_it_counts(log: CallLog, statement: str, damage: str) -> None:
    """Issue: SQLite's SUM read a text cost as 0 (or "1,5" as 1) and a text cache hit as none, silently; PostgreSQL's
    typed columns can't hold either, and a read of the row refuses it."""
    log.record(_record(call_id="bb-kept", cost_usd=0.5))
    log.record(_record(call_id="bb-damaged", cost_usd=0.25))
    _damage(log, f"UPDATE {{calls}} SET {statement} WHERE call_id = 'bb-damaged'")
    with pytest.raises(CallLogError, match=rf"^call 'bb-damaged' in the call log {_log_name(log)} can't be read: {damage}$"):
        log.stats()
    with pytest.raises(CallLogError, match=f"^call 'bb-damaged' in the call log {_log_name(log)} can't be read: "):
        log.get("bb-damaged")


def _log_name(log: CallLog | PostgresCallLog) -> str:
    """How the log's errors name it, as a pattern: its file, or its URL without the password."""
    return re.escape(str(log.path) if isinstance(log, CallLog) else log.url)


def _damage(log: CallLog | PostgresCallLog, statement: str) -> None:
    """Run ``statement`` on the log's calls table ({calls}) behind its back: a row edited by hand."""
    if isinstance(log, CallLog):
        with contextlib.closing(sqlite3.connect(log.path, isolation_level=None)) as conn:
            conn.execute(statement.replace("{calls}", "calls"))
        return
    import psycopg

    with psycopg.connect(log.url, autocommit=True) as pg:
        pg.execute(statement.replace("{calls}", "blackbox_calls").encode())


# ------------------------------------------------------------------------------ reading back


def test_calls_filter_by_model_route_and_time_in_created_order(log: CallLog) -> None:
    base = 1_700_000_000.0
    records = [
        _record(created=base + 30, model="a"),
        _record(created=base + 10, model="b"),
        _record(created=base + 20, model="a", route="completions"),
        _record(created=base + 40, model="a"),
    ]
    for rec in records:
        log.record(rec)
    ids = {rec.created: rec.call_id for rec in records}
    assert [c.created for c in log.calls()] == [base + 10, base + 20, base + 30, base + 40]
    assert [c.call_id for c in log.calls(model="a", route="chat")] == [ids[base + 30], ids[base + 40]]
    assert [c.created for c in log.calls(since=base + 20, until=base + 40)] == [base + 20, base + 30]
    assert [c.created for c in log.calls(limit=2)] == [base + 10, base + 20]


def test_calls_pages_through_more_calls_than_one_read(log: CallLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paging_module, "PAGE_SIZE", 2)
    records = [_record(created=1_700_000_000.0 + i) for i in range(7)]
    for rec in reversed(records):
        log.record(rec)
    assert [c.call_id for c in log.calls()] == [r.call_id for r in records]
    assert [c.call_id for c in log.calls(limit=5)] == [r.call_id for r in records[:5]]


class CommitsMidExport(io.StringIO):
    """An export's sink that, once its first line is written (the first page read, the rest not), runs ``commit``: another
    writer's calls landing mid-export, driven by the export itself, so the test needs no thread and no sleep."""

    def __init__(self, commit: Callable[[], None]) -> None:
        super().__init__()
        self._commit: Callable[[], None] | None = commit

    def write(self, text: str) -> int:
        """Keep the text; run ``commit`` at the first write."""
        commit, self._commit = self._commit, None
        if commit is not None:
            commit()
        return super().write(text)


def exported_ids(text: str) -> list[str]:
    """The call ids of an export's lines, in order."""
    return [json.loads(line)["call_id"] for line in text.splitlines()]


def test_an_export_is_one_snapshot_of_the_log(log: CallLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue: each page was read in a transaction of its own, so a call committed mid-export was in it or not by its time
    (one later than the cursor in it, one earlier skipped): the export was of no moment of the log."""
    monkeypatch.setattr(paging_module, "PAGE_SIZE", 2)
    records = [_record(created=1_700_000_000.0 + i) for i in range(5)]
    for rec in records:
        log.record(rec)
    with CallLog(log.path) as other:
        late = [_record(created=1_600_000_000.0), _record(created=1_800_000_000.0)]
        sink = CommitsMidExport(lambda: [other.record(rec) for rec in late])
        assert log.export_jsonl(sink) == 5
    assert exported_ids(sink.getvalue()) == [rec.call_id for rec in records]  # the log as the export found it
    assert len(list(log.calls())) == 7  # the calls it did not see were committed


def test_get_unknown_call_raises_config_error(log: CallLog) -> None:
    with pytest.raises(ConfigError, match="no call"):
        log.get("bb-missing")


@pytest.mark.parametrize("limit", [pytest.param(-1, id="negative"), pytest.param(True, id="bool"), pytest.param(1.5, id="float")])
def test_bad_limit_raises_config_error_at_the_call(log: CallLog, limit: Any) -> None:
    with pytest.raises(ConfigError, match="limit"):
        log.calls(limit=limit)


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        pytest.param({"since": dt.datetime(2024, 1, 1)}, "since", id="datetime"),
        pytest.param({"until": "yesterday"}, "until", id="string"),
        pytest.param({"since": True}, "since", id="bool"),
        pytest.param({"since": math.nan}, "since", id="nan"),
        pytest.param({"model": 3}, "model", id="model-not-text"),
        pytest.param({"route": "chat\ud83d"}, "route", id="lone-surrogate"),
    ],
)
def test_a_bad_filter_raises_config_error_on_either_store(any_log: CallLog | PostgresCallLog, filters: dict[str, Any], named: str) -> None:
    """Issue: SQLite matched nothing for a datetime or a string time (and raised a raw UnicodeEncodeError for a lone
    surrogate), PostgreSQL refused them with the driver's words in a CallLogError."""
    any_log.record(_record(created=1_700_000_000.0))
    with pytest.raises(ConfigError, match=named):
        list(any_log.calls(**filters))


def test_a_time_past_a_floats_range_is_either_end_of_the_line(any_log: CallLog | PostgresCallLog) -> None:
    """Issue: since=10**400 raised a raw OverflowError from sqlite3."""
    any_log.record(_record(created=1_700_000_000.0))
    assert list(any_log.calls(since=10**400)) == [] and len(list(any_log.calls(since=-(10**400), until=10**400))) == 1


# ------------------------------------------------------------------------------------- export


def test_export_round_trips_every_call_with_candidates_and_feedback(log: CallLog, tmp_path: Path) -> None:
    rated, plain = _record(created=1_700_000_000.0), _record(created=1_700_000_001.0, cache_hit=True)
    log.record(rated)
    log.record(plain)
    log.feedback(rated.call_id, label="incorrect", preferred=2, reference="4")
    out = tmp_path / "export" / "calls.jsonl"
    out.parent.mkdir()
    assert log.export_jsonl(out) == 2
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["format"] for line in lines] == [EXPORT_FORMAT, EXPORT_FORMAT]
    for line, rec in zip(lines, (rated, plain), strict=True):
        feedback = line.pop("feedback")
        line.pop("format")
        assert CallRecord(**line) == log.get(rec.call_id)
        assert [Feedback(call_id=rec.call_id, **item) for item in feedback] == log.feedback_for(rec.call_id)
    assert lines[0]["candidates"] == ["5", "4", "four"]
    assert list(out.parent.iterdir()) == [out]


def test_export_to_an_open_stream_matches_export_to_a_file(log: CallLog, tmp_path: Path) -> None:
    log.record(_record())
    stream = io.StringIO()
    assert log.export_jsonl(stream) == 1
    log.export_jsonl(tmp_path / "calls.jsonl")
    assert stream.getvalue() == (tmp_path / "calls.jsonl").read_text(encoding="utf-8")


def test_export_refuses_an_existing_file_before_reading_unless_told_to_replace(log: CallLog, tmp_path: Path) -> None:
    log.record(_record())
    out = tmp_path / "calls.jsonl"
    out.write_text("last week's export\n")
    calls = iter([(_record(), [])])
    with pytest.raises(ConfigError, match=f"^the export file {out} exists; pass --force \\(replace=True\\)"):
        export_jsonl(calls, out)
    assert next(calls, None) is not None  # refused before a call was read
    with pytest.raises(ConfigError, match="exists"):
        log.export_jsonl(out)  # the library's default is the command line's: never replace unasked
    assert out.read_text() == "last week's export\n" and not list(tmp_path.glob("*.partial"))
    assert log.export_jsonl(out, replace=True) == 1 and json.loads(out.read_text())["format"] == EXPORT_FORMAT


def test_export_into_a_missing_folder_raises_call_log_error(log: CallLog, tmp_path: Path) -> None:
    with pytest.raises(CallLogError, match="export"):
        log.export_jsonl(tmp_path / "no-such-folder" / "calls.jsonl")


@pytest.mark.parametrize(("out", "said"), [("", "a blank one"), ("  ", "a blank one"), ("calls\x00.jsonl", "no path holds a NUL byte")])
def test_export_to_a_path_no_file_can_have_is_a_config_error(log: CallLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, said: str) -> None:
    """Issue: "" was refused as "it is a folder" (Path("") is the working folder), a NUL byte raised a bare ValueError."""
    monkeypatch.chdir(tmp_path)
    log.record(_record())
    with pytest.raises(ConfigError, match=f"^the export must be a file system path.*{said}"):
        log.export_jsonl(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calls.db", "calls.db-shm", "calls.db-wal"]


# -------------------------------------------------------------------------------------- stats


def test_stats_add_up_spend_by_model_and_utc_day(log: CallLog) -> None:
    day_one = dt.datetime(2024, 3, 1, 23, 59, tzinfo=dt.timezone.utc).timestamp()
    day_two = dt.datetime(2024, 3, 2, 0, 1, tzinfo=dt.timezone.utc).timestamp()
    records = [
        _record(created=day_one, model="a", cost_usd=0.25),
        _record(created=day_one, model="b", cost_usd=0.5, cache_hit=True),
        _record(created=day_two, model="a", cost_usd=1.0, error="RateLimitError: slow down"),
        _record(created=day_two, model="a", cost_usd=0.0, cache_hit=True),
    ]
    for rec in records:
        log.record(rec)
    log.feedback(records[0].call_id, reward=1.0)
    stats = log.stats()
    assert (stats["calls"], stats["errors"], stats["cache_hits"], stats["feedback"]) == (4, 1, 2, 1)
    assert stats["cache_hit_rate"] == pytest.approx(0.5)
    assert stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in records))
    assert stats["by_model"]["a"] == {"calls": 3, "errors": 1, "cache_hits": 1, "cost_usd": pytest.approx(1.25)}
    assert stats["by_model"]["b"] == {"calls": 1, "errors": 0, "cache_hits": 1, "cost_usd": pytest.approx(0.5)}
    assert {day: row["cost_usd"] for day, row in stats["by_day"].items()} == {"2024-03-01": 0.75, "2024-03-02": 1.0}
    assert [(r["day"], r["model"], r["calls"]) for r in stats["by_day_model"]] == [
        ("2024-03-01", "a", 1), ("2024-03-01", "b", 1), ("2024-03-02", "a", 2)
    ]


def test_stats_of_an_empty_log_are_zero(log: CallLog) -> None:
    stats = log.stats()
    assert (stats["calls"], stats["cache_hit_rate"], stats["cost_usd"], stats["by_model"]) == (0, 0.0, 0.0, {})


# ------------------------------------------------------------------------------- opening


def test_a_file_that_is_not_sqlite_raises_call_log_error(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    path.write_bytes(b"this is not a database, just some text that is long enough " * 20)
    with pytest.raises(CallLogError, match=r"calls\.db"):
        CallLog(path)


def test_a_path_under_a_regular_file_raises_call_log_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CallLogError, match="a-file"):
        CallLog(blocker / "calls.db")


def test_a_log_from_a_newer_schema_is_refused_naming_the_log(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    CallLog(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    for create in (True, False):  # which log: a host may keep several
        with pytest.raises(CallLogError, match="upgrade") as caught:
            CallLog(path, create=create)
        assert str(path) in str(caught.value)


def test_a_schema_version_that_is_not_a_number_is_a_call_log_error(tmp_path: Path) -> None:
    """Issue: a meta table holding a value that is no number raised int()'s raw ValueError at open."""
    path = tmp_path / "calls.db"
    CallLog(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 'v2-beta' WHERE key = 'schema_version'")
    for create in (True, False):
        with pytest.raises(CallLogError, match="not a number") as caught:
            CallLog(path, create=create)
        assert str(path) in str(caught.value)


def test_reopening_a_log_keeps_its_calls(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    rec = _record()
    with CallLog(path) as first:
        first.record(rec)
    with CallLog(path) as second:
        assert second.get(rec.call_id) == rec


def test_the_examples_in_docs_call_log_md_run() -> None:
    results = doctest.testfile(str(REPO_ROOT / "docs" / "call-log.md"), module_relative=False, verbose=False)
    assert results.attempted > 5 and results.failed == 0


def test_calllog_module_exports_are_sorted() -> None:
    assert calllog_module.__all__ == sorted(calllog_module.__all__)


def test_the_sqlite_call_log_implements_the_call_log_store_protocol(log: CallLog) -> None:
    assert isinstance(log, CallLogStore)


def test_a_url_is_refused_not_made_into_a_file_named_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="open_call_log") as raised:
        CallLog("postgresql://app:s3cret@127.0.0.1:5432/postgres")
    assert "s3cret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # Path(url) would have made ./postgresql:/app:s3cret@127.0.0.1:5432/postgres


def test_a_folder_given_as_the_log_is_refused_saying_so(tmp_path: Path) -> None:
    """Issue: SQLite's "unable to open database file" (and, for a reader, "no call log at") for a folder named as the log."""
    for create in (True, False):
        with pytest.raises(CallLogError, match=rf"^can't open the call log {tmp_path}: it is a folder; name a file in it, such as "):
            CallLog(tmp_path, create=create)
    with pytest.raises(CallLogError, match="it is a folder"):
        OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blank", ["", "   ", "\t", " \n"])
def test_a_blank_path_is_refused_not_made_into_a_file_named_spaces(blank: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for opens in (open_call_log, CallLog, lambda target: OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", log=target)):
        with pytest.raises(ConfigError, match="a file (system )?path"):
            opens(blank)
    assert list(tmp_path.iterdir()) == []  # a log file named "   " (and its -wal, -shm) was made in the working folder


def test_stats_read_one_snapshot_of_an_sqlite_log_that_another_writer_adds_to_meanwhile(tmp_path: Path) -> None:
    """Issue: stats read the calls and the feedback count in two statements, each its own snapshot, so a call and its
    feedback another process wrote between them counted in the feedback and not in the calls. One read transaction now:
    the writer (another log on the file, its own connection) writes just before the feedback is counted, and is unseen."""
    with CallLog(tmp_path / "calls.db") as log, CallLog(tmp_path / "calls.db") as writer:
        log.record(_record())
        log.flush()
        written: list[str] = []

        def write_between(statement: str) -> None:
            """Log a call and its feedback from the other connection as the count of feedback begins."""
            if "FROM feedback" in statement and not written:
                late = _record()
                writer.record(late)
                writer.flush()
                writer.feedback(late.call_id, label="correct")
                written.append(late.call_id)

        with log._db.lock:
            log._db.get().set_trace_callback(write_between)
        counted = log.stats()
        assert written and (writer.stats()["calls"], writer.stats()["feedback"]) == (2, 1)
        assert (counted["calls"], counted["feedback"]) == (1, 0)


def test_a_log_copied_without_its_wal_file_is_refused_saying_so(tmp_path: Path) -> None:
    """A log copied while its writer had it open holds its tables in its `-wal` file: the copy alone has none, and the
    refusal says what to copy (an SQLite file of another app's tables gets no such hint)."""
    with CallLog(tmp_path / "calls.db") as log:
        log.record(_record())
        shutil.copyfile(tmp_path / "calls.db", tmp_path / "copy.db")
    with pytest.raises(CallLogError, match=r"copy\.db is not a call log .*copy copy\.db-wal beside it too"):
        CallLog(tmp_path / "copy.db", create=False)
    with sqlite3.connect(tmp_path / "other.db") as other:
        other.execute("CREATE TABLE things (x)")
    other.close()
    with pytest.raises(CallLogError, match="other.db is not a call log") as caught:
        CallLog(tmp_path / "other.db", create=False)
    assert "-wal" not in str(caught.value)
