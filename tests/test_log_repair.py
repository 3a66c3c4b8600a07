"""A process killed between the ledger's settle and the log's record leaves a charged call with no
record; `repair_log`, run by a later process, writes it from the ledger, so the log's spend is the
ledger's again: only into the log the call was meant for, when one ledger serves several logs.
Real processes against an instant loopback upstream, the SQLite and Redis ledgers (a real
redis-server), the SQLite and PostgreSQL logs; the ledgers' `settled_since` on both."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_databases import fresh_database
from servers import InstantUpstream, PostgresServer

from blackbox_sdk import ConfigError, OpenAI
from blackbox_sdk.budget import NO_LOG, Budget, Ledger, RedisLedger, usd_to_nano
from blackbox_sdk.budget import _redis_ledger as redis_ledger_module
from blackbox_sdk.budget import _store as store_module
from blackbox_sdk.budget._store import SettledSpend
from blackbox_sdk.call_log import (
    CallLog,
    CallRecord,
    PostgresCallLog,
    RepairableLog,
    new_call_id,
    repair_log,
)
from blackbox_sdk.call_log import _repair as repair_module
from blackbox_sdk.call_log._repair import GRACE_S, RECOVERED_ERROR
from blackbox_sdk.call_log._urls import address_id

MODEL = "unit"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # USD per million tokens
PROMPT, COMPLETION = 12, 3  # what the upstream reports for every call
CALL_USD = (PROMPT + COMPLETION) * 1000.0 / 1e6  # $0.015
CALLS, KILLED_AT = 6, 4  # the child dies while recording its 4th call
KILLED_EXIT = 17
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION},
}

# The child: calls through OpenAI(budget=..., log=...), and dies (os._exit) inside the log's record of
# call number KILLED_AT: after the ledger settled it, before its record was written.
CHILD = """
import json, os, sys
from blackbox_sdk import Budget, OpenAI
from blackbox_sdk.call_log import CallLog, PostgresCallLog
url, ledger, log, calls, killed_at, exit_code, prices = json.loads(sys.argv[1])
recorded = []

def dying(original):
    def record(self, rec):
        recorded.append(rec.call_id)
        if len(recorded) == killed_at:
            print(rec.call_id, flush=True)
            os._exit(exit_code)
        return original(self, rec)
    return record

CallLog.record = dying(CallLog.record)
CallLog.enqueue = dying(CallLog.enqueue)  # the client queues its records for the log's writer
PostgresCallLog.record = dying(PostgresCallLog.record)
client = OpenAI(base_url=url, api_key="sk-test", budget=Budget(total_usd=10.0, prices=prices, ledger=ledger), log=log, max_retries=0)
for _ in range(calls):
    client.chat.completions.create(model="unit", messages=[{"role": "user", "content": "Say ok."}], max_tokens=8)
"""

# A new process: opens the same budget and log, repairs, and says how many records it wrote.
REPAIR = """
import json, sys
from blackbox_sdk import Budget
from blackbox_sdk.call_log import open_call_log, repair_log
ledger, log, prices = json.loads(sys.argv[1])
store = open_call_log(log)
print(json.dumps(repair_log(store, Budget(prices=prices, ledger=ledger))))
store.close()
"""

# A new process that only builds a client with the same budget and log: the client repairs on construction.
CLIENT = """
import json, sys
from blackbox_sdk import Budget, OpenAI
ledger, log, prices = json.loads(sys.argv[1])
OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", budget=Budget(prices=prices, ledger=ledger), log=log).close()
"""


@pytest.fixture
def upstream() -> Iterator[str]:
    """An instant upstream answering every chat with "ok" and fixed usage; yields its /v1 base URL."""
    server = InstantUpstream(ANSWER)
    yield server.url
    server.close()


@pytest.fixture
def ledger(store_at: Callable[[str], str]) -> str:
    """The ledger: a file in the test's folder, then a real redis-server."""
    return store_at("ledger.sqlite3")


@pytest.fixture(params=["sqlite", "postgres"])
def log_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The call log: an SQLite file in the test's folder, then a fresh database on a real PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path / "calls.sqlite3")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with fresh_database(server) as url:
        yield url


def _open_log(target: str) -> CallLog | PostgresCallLog:
    return PostgresCallLog(target) if target.startswith("postgresql://") else CallLog(target)


def _python(code: str, *args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], check=False, capture_output=True, text=True, timeout=120)


def _log_view(target: str) -> dict[str, CallRecord]:
    log = _open_log(target)
    try:
        return {record.call_id: record for record in log.calls()}
    finally:
        log.close()


# --- the kill between settle and record, repaired by a new process ------------------------------


def test_a_call_charged_by_a_killed_process_is_logged_by_the_repair(upstream: str, ledger: str, log_target: str) -> None:
    child = _python(CHILD, upstream, ledger, log_target, CALLS, KILLED_AT, KILLED_EXIT, PRICES)
    assert child.returncode == KILLED_EXIT, child.stderr
    killed = child.stdout.strip()
    budget = Budget(prices=PRICES, ledger=ledger)
    charged = {spend.call_id for spend in budget.settled_since(0)}
    assert killed in charged and len(charged) == KILLED_AT  # the ledger charged the call the log never saw
    before = _log_view(log_target)
    assert killed not in before
    assert sum(record.cost_usd for record in before.values()) < budget.spent()

    repair = _python(REPAIR, ledger, log_target, PRICES)
    assert repair.returncode == 0, repair.stderr
    after = _log_view(log_target)
    assert json.loads(repair.stdout) == len(after) - len(before) >= 1  # the killed call, and on PostgreSQL whatever the queue lost
    assert set(after) == charged
    assert sum(record.cost_usd for record in after.values()) == pytest.approx(budget.spent(), abs=1e-12)
    recovered = after[killed]
    assert recovered.error == RECOVERED_ERROR and recovered.endpoint_host == "unknown" and recovered.request == {}
    assert recovered.model == MODEL and not recovered.usage_counted and recovered.cost_usd == pytest.approx(CALL_USD)  # the ledger's usage, not a count
    assert recovered.usage == {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION}

    log = _open_log(log_target)
    try:
        assert repair_log(log, budget) == 0  # idempotent: nothing more to write
    finally:
        log.close()
    assert _log_view(log_target) == after


def test_a_client_with_the_same_budget_and_log_repairs_it_on_construction(upstream: str, ledger: str, log_target: str) -> None:
    child = _python(CHILD, upstream, ledger, log_target, CALLS, KILLED_AT, KILLED_EXIT, PRICES)
    assert child.returncode == KILLED_EXIT, child.stderr
    budget = Budget(prices=PRICES, ledger=ledger)
    assert set(_log_view(log_target)) != {spend.call_id for spend in budget.settled_since(0)}
    built = _python(CLIENT, ledger, log_target, PRICES)
    assert built.returncode == 0, built.stderr
    after = _log_view(log_target)
    assert set(after) == {spend.call_id for spend in budget.settled_since(0)}
    assert sum(record.cost_usd for record in after.values()) == pytest.approx(budget.spent(), abs=1e-12)
    assert built.stderr.count("recovered from the budget ledger") == 1  # said once


# --- what the repair leaves alone ---------------------------------------------------------------


def _settle(budget: Budget, *, call_id: str | None = None, key: str | None = None, cached: int = 0, log_id: str | None = None) -> str:
    """Reserve and settle one call in this process, as the client does before it records the call."""
    reservation = budget.reserve(model=MODEL, prompt_tokens=PROMPT, max_output_tokens=8, key=key, call_id=call_id or new_call_id())
    budget.settle(reservation, prompt_tokens=PROMPT, completion_tokens=COMPLETION, cached_tokens=cached, log_id=log_id)
    return reservation.call_id


def _settle_in_a_process_that_ends(ledger: str, count: int, log_id: str | None = None) -> list[str]:
    """Settle `count` calls (for the log `log_id`; None: not said) in a process that then ends; their call ids."""
    code = (
        "import json, sys\nfrom blackbox_sdk import Budget\nledger, prices, count, log_id = json.loads(sys.argv[1])\n"
        "budget = Budget(prices=prices, ledger=ledger)\nfor _ in range(count):\n"
        "    held = budget.reserve(model='unit', prompt_tokens=12, max_output_tokens=8)\n"
        "    budget.settle(held, prompt_tokens=12, completion_tokens=3, log_id=log_id)\n    print(held.call_id)\n"
    )
    finished = _python(code, ledger, PRICES, count, log_id)
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.split()


def test_a_live_process_s_unlogged_spend_is_left_to_it(ledger: str, tmp_path: Path) -> None:
    budget = Budget(prices=PRICES, ledger=ledger)
    _settle(budget)  # settled by this process, which runs and may still record it
    with CallLog(tmp_path / "calls.sqlite3") as log:
        assert repair_log(log, budget) == 0
        assert list(log.calls()) == []


def test_a_repair_looks_up_each_settling_process_once(ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client made per request repairs on construction: the spends of a busy process (this one) are many, and
    whether it still runs is asked once, not once per spend (a /proc read each, on the event loop of an async client)."""
    budget = Budget(prices=PRICES, ledger=ledger)
    for _ in range(30):
        _settle(budget)
    looked_up: list[int] = []
    real = store_module.process_alive
    monkeypatch.setattr(store_module, "process_alive", lambda pid, started: looked_up.append(pid) or real(pid, started))
    with CallLog(tmp_path / "calls.sqlite3") as log:
        assert repair_log(log, budget) == 0  # this process runs: its spends are its own to log
    assert looked_up == [os.getpid()]


def test_the_repair_is_bounded_by_since_and_by_the_log_s_latest_call(
    ledger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repair_module, "MARGIN_S", 0.5)
    _settle_in_a_process_that_ends(ledger, 3)
    budget = Budget(prices=PRICES, ledger=ledger)
    with CallLog(tmp_path / "calls.sqlite3") as log:
        assert repair_log(log, budget, since=time.time() + 5) == 0  # nothing settled since then
        time.sleep(1.0)
        log.record(CallRecord(endpoint_host="h", model=MODEL, route="CHAT", request={}))
        assert repair_log(log, budget) == 0  # settled more than the margin before the log's latest call
        assert repair_log(log, budget, since=0) == 3
        assert repair_log(log, budget, since=0) == 0
        assert sum(record.cost_usd for record in log.calls()) == pytest.approx(budget.spent())


def test_a_log_that_can_t_be_asked_is_left_as_it_is(ledger: str, caplog: pytest.LogCaptureFixture) -> None:
    class WriteOnly:
        def record(self, rec: CallRecord) -> None:
            raise AssertionError("nothing is written")

    _settle_in_a_process_that_ends(ledger, 1)
    assert not isinstance(WriteOnly(), RepairableLog)
    assert repair_log(WriteOnly(), Budget(prices=PRICES, ledger=ledger), since=0) == 0  # type: ignore[arg-type]
    assert "not repaired" in caplog.text


def test_another_host_s_spend_waits_out_the_grace() -> None:
    now = time.time()
    spend = SettledSpend("bb-1", MODEL, None, "2025-01-01", 1, 1, 1, 0, settled=now - 1, host="elsewhere", pid=os.getpid())
    assert spend.may_still_be_logged(now, GRACE_S)
    assert not spend.may_still_be_logged(now + GRACE_S + 1, GRACE_S)
    mine = SettledSpend("bb-2", MODEL, None, "2025-01-01", 1, 1, 1, 0, settled=now - 3600, host=socket.gethostname(), pid=os.getpid())
    assert mine.may_still_be_logged(now, GRACE_S)  # this process runs: however old, its spend is its own to log


# --- the ledgers' settled spends ----------------------------------------------------------------


def test_settled_since_returns_each_spend_with_its_process(ledger: str) -> None:
    budget = Budget(prices=PRICES, ledger=ledger)
    started = time.time() - 1
    first = _settle(budget, key="alice", cached=4)
    middle = time.time() + 0.002
    time.sleep(0.01)
    second = _settle(budget)
    spends = budget.settled_since(started)
    assert [spend.call_id for spend in spends] == [first, second]
    spend = spends[0]
    assert (spend.model, spend.key, spend.prompt_tokens, spend.completion_tokens, spend.cached_tokens) == (MODEL, "alice", PROMPT, COMPLETION, 4)
    assert spend.usd_nano == usd_to_nano(budget.cost(MODEL, prompt_tokens=PROMPT, completion_tokens=COMPLETION, cached_tokens=4) or 0, round_up=True)
    assert spend.day == time.strftime("%Y-%m-%d", time.gmtime()) and started <= spend.settled <= time.time() + 1
    assert (spend.host, spend.pid) == (socket.gethostname(), os.getpid()) and spend.pid_start is not None
    assert spends[1].key is None
    assert [spend.call_id for spend in budget.settled_since(middle)] == [second]
    assert budget.settled_since(time.time() + 60) == []
    for bad in (float("nan"), 10**400, -(10**400)):  # an int past a float's range: math.isfinite's OverflowError before
        with pytest.raises(ConfigError, match="settled_since"):
            budget.settled_since(bad)


def test_the_redis_ledger_reads_the_spends_stream_in_pages(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_ledger_module, "SPENDS_PAGE", 2)
    budget = Budget(prices=PRICES, ledger=redis_server.url)
    ids = [_settle(budget) for _ in range(5)]
    assert isinstance(budget._ledger, RedisLedger)
    assert [spend.call_id for spend in budget.settled_since(0)] == ids


def test_an_older_ledger_file_gains_the_settling_process(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # the spends table as it was before it kept the settling process
        old.execute(
            "CREATE TABLE spends (id INTEGER PRIMARY KEY AUTOINCREMENT, reservation_id TEXT NOT NULL, call_id TEXT NOT NULL,"
            " model TEXT NOT NULL, key TEXT, day TEXT NOT NULL, usd_nano INTEGER NOT NULL, reserved_nano INTEGER NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, created REAL NOT NULL)"
        )
        old.execute("INSERT INTO spends VALUES (1, 'r', 'bb-old', 'unit', NULL, '2025-01-01', 7, 9, 1, 2, 0, 100.0)")
    old.close()
    budget = Budget(prices=PRICES, ledger=str(path))
    assert isinstance(budget._ledger, Ledger)
    new = _settle(budget, log_id="a-log")
    old_spend, new_spend = budget.settled_since(0)
    assert (old_spend.call_id, old_spend.usd_nano, old_spend.host, old_spend.pid, old_spend.pid_start) == ("bb-old", 7, "", 0, None)
    assert old_spend.log_id is None and old_spend.meant_for("any-log") and old_spend.meant_for(None)  # not said: any log's
    assert new_spend.log_id == "a-log" and new_spend.meant_for("a-log") and not new_spend.meant_for("any-log")
    assert new_spend.call_id == new and new_spend.host == socket.gethostname()
    assert not old_spend.may_still_be_logged(time.time(), GRACE_S)  # no process recorded: only the grace applies


# --- one ledger, several logs -------------------------------------------------------------------


def test_each_log_on_a_shared_ledger_gets_back_only_its_own_lost_calls(upstream: str, ledger: str, tmp_path: Path) -> None:
    # two hosts' (or apps') SQLite logs on one ledger, each writer killed between settle and record
    targets = [str(tmp_path / "first.sqlite3"), str(tmp_path / "second.sqlite3")]
    budget = Budget(prices=PRICES, ledger=ledger)
    charged: list[set[str]] = []
    killed: list[str] = []
    for target in targets:
        before = {spend.call_id for spend in budget.settled_since(0)}
        child = _python(CHILD, upstream, ledger, target, CALLS, KILLED_AT, KILLED_EXIT, PRICES)
        assert child.returncode == KILLED_EXIT, child.stderr
        killed.append(child.stdout.strip())
        charged.append({spend.call_id for spend in budget.settled_since(0)} - before)  # this child's calls
    assert [len(calls) for calls in charged] == [KILLED_AT, KILLED_AT] and killed[0] in charged[0] and killed[1] in charged[1]
    for target, own in zip(targets, charged, strict=True):
        assert not own <= set(_log_view(target))  # its killed call at least is missing
        repair = _python(REPAIR, ledger, target, PRICES)
        assert repair.returncode == 0, repair.stderr
        assert set(_log_view(target)) == own  # its own lost calls back, none of the other log's
    first, second = (_log_view(target) for target in targets)
    assert first[killed[0]].error == second[killed[1]].error == RECOVERED_ERROR
    spent = sum(record.cost_usd for log in (first, second) for record in log.values())
    assert spent == pytest.approx(budget.spent(), abs=1e-12)
    ids = {_open_log_id(target) for target in targets}
    assert {spend.log_id for spend in budget.settled_since(0)} == ids and len(ids) == 2


def test_spends_that_do_not_say_their_log_are_repaired_into_any_log(ledger: str, tmp_path: Path) -> None:
    first, second = CallLog(tmp_path / "first.sqlite3"), CallLog(tmp_path / "second.sqlite3")
    try:
        unsaid = set(_settle_in_a_process_that_ends(ledger, 2))  # as an older ledger (or a bare Budget.settle) keeps them
        mine = set(_settle_in_a_process_that_ends(ledger, 1, first.log_id))
        theirs = set(_settle_in_a_process_that_ends(ledger, 1, second.log_id))
        _settle_in_a_process_that_ends(ledger, 1, NO_LOG)  # a client without a log: no log's call
        budget = Budget(prices=PRICES, ledger=ledger)
        assert repair_log(first, budget, since=0) == 3 and repair_log(second, budget, since=0) == 3
        assert {record.call_id for record in first.calls()} == unsaid | mine
        assert {record.call_id for record in second.calls()} == unsaid | theirs
        assert repair_log(first, budget, since=0) == repair_log(second, budget, since=0) == 0
    finally:
        first.close()
        second.close()


def test_a_call_charged_while_the_postgres_log_was_out_of_reach_goes_back_to_that_log_only(
    upstream: str, ledger: str, tmp_path: Path
) -> None:
    """Issue: a PostgreSQL log opened while its database was down has no id until it reaches it, so its calls were settled
    saying no log; one whose process then died was repaired into whichever log on the ledger asked first (here another
    app's SQLite log). They are settled under an id made from the log's address, which its own repair knows."""
    server = PostgresServer().start()
    try:
        server.stop()  # down while the child starts, calls and dies between charging its call and logging it
        child = _python(CHILD, upstream, ledger, server.url, 1, 1, KILLED_EXIT, PRICES)
        assert child.returncode == KILLED_EXIT, child.stderr
        killed = child.stdout.strip()
        budget = Budget(prices=PRICES, ledger=ledger)
        assert [spend.call_id for spend in budget.settled_since(0)] == [killed]
        with CallLog(tmp_path / "other-app.sqlite3") as other:
            assert repair_log(other, budget, since=0) == 0  # not this log's call
            assert list(other.calls()) == []
        server.start()
        with PostgresCallLog(server.url) as log:
            assert repair_log(log, budget, since=0) == 1
            assert [(record.call_id, record.error) for record in log.calls()] == [(killed, RECOVERED_ERROR)]
    finally:
        server.close()


def test_a_postgres_log_s_address_id_names_its_database_and_schema_never_its_password() -> None:
    def made(url: str) -> str:
        return address_id(psycopg.conninfo.conninfo_to_dict(url))

    first = made("postgresql://app:s3cret@db.internal:5432/calls")
    assert first == made("postgres://app:other@db.internal/calls?connect_timeout=3")  # another spelling, password, wait
    assert first.startswith("pg-") and "s3cret" not in first and "db.internal" not in first
    others = ("postgresql://app@db.internal/other", "postgresql://app@db2.internal/calls", "postgresql://app@db.internal/calls?options=-csearch_path%3Ds2")
    assert len({first, *map(made, others)}) == 4


def test_a_client_without_a_log_settles_its_calls_for_no_log(upstream: str, ledger: str, tmp_path: Path) -> None:
    budget = Budget(prices=PRICES, ledger=ledger)
    with OpenAI(base_url=upstream, api_key="sk-test", budget=budget, max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say ok."}], max_tokens=8)
    (spend,) = budget.settled_since(0)
    assert spend.log_id == NO_LOG
    with CallLog(tmp_path / "calls.sqlite3") as log:
        assert not spend.meant_for(log.log_id)


def test_a_log_keeps_its_id(log_target: str, tmp_path: Path) -> None:
    first = _open_log_id(log_target)
    assert first and _open_log_id(log_target) == first  # every process opening the log names it alike
    assert _open_log_id(str(tmp_path / "other.sqlite3")) != first


def _open_log_id(target: str) -> str:
    log = _open_log(target)
    try:
        return log.log_id
    finally:
        log.close()
