"""The shared ledger: no overspend under threads + processes + asyncio, crash recovery, exact money."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import sqlite3
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import get_type_hints

import pytest

from blackbox_sdk import BudgetExceededError, ConfigError, ReservationNotHeldError
from blackbox_sdk.budget import (
    Budget,
    Cap,
    CapTransaction,
    Ledger,
    LedgerStore,
    nano_to_usd,
    usd_to_nano,
)
from blackbox_sdk.budget import _ledger as ledger_module

PRICES = {"unit": {"input": 1.0, "output": 10.0}}  # USD per million tokens
OUTPUT_TOKENS = 100  # each call: 100 output tokens = $0.001, reserved and settled in full
CALL_USD = 0.001
CAP_USD = 0.06  # exactly 60 calls fit
HOLD_S = 0.001  # time a reservation stays outstanding, so concurrent callers overlap
SPAWN_TIMEOUT_S = 180.0
SPAWN = multiprocessing.get_context("spawn")


def _call_repeatedly(budget: Budget, attempts: int) -> int:
    """Reserve, hold briefly, settle in full; return how many calls were admitted."""
    admitted = 0
    for _ in range(attempts):
        try:
            reservation = budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=OUTPUT_TOKENS)
        except BudgetExceededError:
            continue
        time.sleep(HOLD_S)
        budget.settle(reservation, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
        admitted += 1
    return admitted


def _process_worker(path: str, attempts: int, ready: Queue, go: Event, results: Queue) -> None:
    """A spawned process: open the shared ledger, wait for the start signal, hammer it."""
    budget = Budget(total_usd=CAP_USD, prices=PRICES, ledger=path)
    ready.put(os.getpid())
    go.wait(SPAWN_TIMEOUT_S)
    results.put(_call_repeatedly(budget, attempts))


async def _task_worker(budget: Budget, attempts: int) -> int:
    """An asyncio task doing the same with an awaited hold."""
    admitted = 0
    for _ in range(attempts):
        try:
            reservation = budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=OUTPUT_TOKENS)
        except BudgetExceededError:
            continue
        await asyncio.sleep(HOLD_S)
        budget.settle(reservation, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
        admitted += 1
    return admitted


def _reserve_then_die(path: str, how: str, ids: Connection) -> None:
    """A spawned process that reserves and then crashes: os._exit, or waits for the parent's SIGKILL."""
    budget = Budget(total_usd=0.01, prices=PRICES, ledger=path)
    ids.send(budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=800).id)  # sent before returning
    if how == "exit":
        os._exit(3)
    time.sleep(SPAWN_TIMEOUT_S)


def _start_crashing_process(path: Path, how: str) -> multiprocessing.process.BaseProcess:
    """Start `_reserve_then_die` and return once its reservation is in the ledger."""
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=_reserve_then_die, args=(str(path), how, sender))
    process.start()
    if not receiver.poll(SPAWN_TIMEOUT_S):
        raise TimeoutError("the crashing process never reserved")
    receiver.recv()
    return process


def _raw_reservations(path: Path) -> int:
    """Reservation rows in the ledger file, read without the ledger's own cleanup."""
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]


def _start_ticks(pid: int) -> int:
    """A process's start time in clock ticks since boot, from /proc (field 22 of proc(5))."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[19])


async def test_threads_processes_and_tasks_together_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ready, results, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    processes = [SPAWN.Process(target=_process_worker, args=(str(path), 6, ready, go, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=SPAWN_TIMEOUT_S)
    shared = Budget(total_usd=CAP_USD, prices=PRICES, ledger=path)
    thread_counts: list[int] = []
    threads = [threading.Thread(target=lambda: thread_counts.append(_call_repeatedly(shared, 6))) for _ in range(8)]
    go.set()
    for thread in threads:
        thread.start()
    task_counts = await asyncio.gather(*(_task_worker(shared, 3) for _ in range(8)))
    for thread in threads:
        thread.join()
    process_counts = [results.get(timeout=SPAWN_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(timeout=SPAWN_TIMEOUT_S)
        assert process.exitcode == 0
    admitted = sum(thread_counts) + sum(task_counts) + sum(process_counts)
    attempts = 8 * 6 + 8 * 3 + 4 * 6
    fits = usd_to_nano(CAP_USD, round_up=False) // usd_to_nano(CALL_USD, round_up=True)
    assert attempts > fits
    assert admitted == fits
    report = shared.report()
    assert report.spent_usd <= CAP_USD
    assert report.spent_usd == pytest.approx(fits * CALL_USD)
    assert (report.calls, report.outstanding_reservations) == (fits, 0)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_reservation_of_a_crashed_process_is_released_on_reopen(tmp_path: Path, how: str) -> None:
    path = tmp_path / "ledger.sqlite3"
    process = _start_crashing_process(path, how)
    if how == "sigkill":
        os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=SPAWN_TIMEOUT_S)
    assert process.exitcode == (3 if how == "exit" else -signal.SIGKILL)
    assert _raw_reservations(path) == 1  # the crash left it behind
    assert Ledger(path).outstanding() == (0, 0)  # it holds nothing now
    assert _raw_reservations(path) == 1  # its record stays, lapsed, for a late settle of what its process owed


def test_a_dead_process_lapsed_hold_is_deleted_after_it_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite3"
    process = _start_crashing_process(path, "exit")
    process.join(timeout=SPAWN_TIMEOUT_S)
    Ledger(path).close()  # lapses it
    assert _raw_reservations(path) == 1
    later = time.time() + ledger_module.LAPSED_KEPT_S + 60
    monkeypatch.setattr(ledger_module.time, "time", lambda: later)
    Ledger(path).close()
    assert _raw_reservations(path) == 0


def test_a_late_settle_after_its_lapsed_record_was_deleted_is_still_charged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.sqlite3"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=path)
    reservation = budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=OUTPUT_TOKENS)
    later = time.time() + budget.lease_s + ledger_module.LAPSED_KEPT_S + 60  # its lease lapsed, and its record was kept long enough
    monkeypatch.setattr(ledger_module.time, "time", lambda: later)
    Ledger(path).close()
    monkeypatch.undo()
    assert _raw_reservations(path) == 0
    assert budget.settle(reservation, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS) == pytest.approx(CALL_USD)  # paid: charged
    assert (budget.report().calls, budget.spent()) == (1, pytest.approx(CALL_USD))


def test_open_ledger_releases_a_dead_process_reservation_on_the_next_reserve(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    survivor = Budget(total_usd=0.01, prices=PRICES, ledger=path)
    process = _start_crashing_process(path, "sigkill")
    with pytest.raises(BudgetExceededError) as refused:  # a live process's reservation counts
        survivor.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    assert refused.value.reserved == pytest.approx(0.008)
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=SPAWN_TIMEOUT_S)
    assert survivor.reserve(model="unit", prompt_tokens=0, max_output_tokens=800).worst_case_usd == pytest.approx(0.008)


def test_a_dead_process_s_reservation_never_causes_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "DEAD_CHECK_S", 3600.0)  # the periodic look for dead processes never comes again
    path = tmp_path / "ledger.sqlite3"
    survivor = Budget(total_usd=0.01, prices=PRICES, ledger=path)
    process = _start_crashing_process(path, "sigkill")  # holds $0.008 of the $0.01
    beside = survivor.reserve(model="unit", prompt_tokens=0, max_output_tokens=100)  # $0.001 fits beside it
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=SPAWN_TIMEOUT_S)
    assert _raw_reservations(path) == 2  # the killed process's hold is still in the file
    held = survivor.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)  # fits only without the dead hold
    assert held.worst_case_usd == pytest.approx(0.008) and not held.shrunk
    assert _raw_reservations(path) == 3 and Ledger(path).outstanding()[1] == 2  # the survivor's two hold; the dead one lapsed
    survivor.settle(beside, prompt_tokens=0, completion_tokens=100)
    assert survivor.report().spent_usd == pytest.approx(0.001)


def test_own_reservations_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=path)
    budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=800)
    assert Ledger(path).outstanding() == (usd_to_nano(0.008, round_up=True), 1)


@pytest.mark.parametrize("same_start", [True, False], ids=["same-process", "reused-pid"])
@pytest.mark.parametrize("owner", ["parent", "self"])
def test_reused_pid_is_told_apart_by_start_time(tmp_path: Path, owner: str, same_start: bool) -> None:
    path = tmp_path / "ledger.sqlite3"
    Budget(total_usd=1.0, prices=PRICES, ledger=path).reserve(model="unit", prompt_tokens=0, max_output_tokens=8)
    pid = os.getppid() if owner == "parent" else os.getpid()  # both alive
    started = _start_ticks(pid) + (0 if same_start else 1)
    with sqlite3.connect(path) as connection:  # the fault: a reservation left by an earlier holder of a live pid
        connection.execute("UPDATE reservations SET pid = ?, pid_start = ?", (pid, started))
    opened = Ledger(path)  # opening lapses the holds of dead processes
    assert opened.outstanding()[1] == (1 if same_start else 0)


def test_per_day_cap_counts_only_that_day(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    with ledger.transaction() as transaction:
        old = transaction.add_reservation(call_id="c1", model="unit", key=None, day="2000-01-01", usd_nano=700)
        transaction.add_reservation(call_id="c2", model="unit", key=None, day="2000-01-02", usd_nano=50)
    ledger.settle(old, usd_nano=500, prompt_tokens=1, completion_tokens=1, cached_tokens=0)
    with ledger.transaction() as transaction:
        first = transaction.usage(Cap("per_day", 1000, "2000-01-01"))
        second = transaction.usage(Cap("per_day", 1000, "2000-01-02"))
        total = transaction.usage(Cap("total", 1000))
    assert (first.spent_nano, first.reserved_nano, first.headroom_nano) == (500, 0, 500)
    assert (second.spent_nano, second.reserved_nano) == (0, 50)
    assert (total.spent_nano, total.reserved_nano) == (500, 50)


def test_money_is_exact_in_nano_dollars() -> None:
    assert usd_to_nano(0.1 + 0.2, round_up=True) == 300_000_000
    assert usd_to_nano(1e-10, round_up=True) == 1
    assert usd_to_nano(1e-10, round_up=False) == 0
    assert sum(usd_to_nano(0.001, round_up=True) for _ in range(10)) == usd_to_nano(0.01, round_up=False)
    assert nano_to_usd(1_500_000_000) == 1.5


def test_unknown_reservations_are_not_settled_or_released(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    with pytest.raises(ReservationNotHeldError, match="not outstanding: it was released, or is unknown, and no hold"):
        ledger.settle("missing", usd_nano=1, prompt_tokens=0, completion_tokens=0, cached_tokens=0)
    assert ledger.release("missing") is False


def test_unopenable_ledger_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="can't open the budget ledger"):
        Ledger(blocker / "ledger.sqlite3")


def test_ledger_uses_wal_so_readers_are_not_blocked(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_sqlite_ledger_implements_the_ledger_store_protocol_the_budget_is_typed_against(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert isinstance(ledger, LedgerStore)
    with ledger.transaction() as transaction:
        assert isinstance(transaction, CapTransaction)
    ledger.close()
    assert get_type_hints(Budget)["_ledger"] is LedgerStore


def test_a_ledger_file_from_before_leases_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as connection:  # the schema ledgers were created with before leases
        connection.execute(
            "CREATE TABLE reservations (id TEXT PRIMARY KEY, call_id TEXT NOT NULL, model TEXT NOT NULL, family TEXT"
            " NOT NULL, key TEXT, day TEXT NOT NULL, usd_nano INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER NOT"
            " NULL, pid_start INTEGER, created REAL NOT NULL)"
        )
        connection.execute(
            "INSERT INTO reservations VALUES ('old', 'c', 'unit', 'unit', NULL, '2000-01-01', 7000, ?, ?, ?, 0)",
            (socket.gethostname(), os.getpid(), _start_ticks(os.getpid())),
        )
    ledger = Ledger(path)
    assert ledger.outstanding() == (7000, 1)  # an old reservation has no lease: it holds until settled
    assert ledger.settle("old", usd_nano=5000, prompt_tokens=1, completion_tokens=1, cached_tokens=0) is True
    assert ledger.settle("old", usd_nano=5000, prompt_tokens=1, completion_tokens=1, cached_tokens=0) is False
    assert (ledger.outstanding(), ledger.spent_nano(Cap("total", 0))) == ((0, 0), 5000)
    with sqlite3.connect(path) as connection:
        assert "expires" in {row[1] for row in connection.execute("PRAGMA table_info(reservations)")}


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:6379/0", "postgresql://app:s3cret@127.0.0.1/ledger"])
def test_a_url_is_refused_not_made_into_a_file_named_after_it(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not a URL") as raised:
        Ledger(url)
    assert "s3cret" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # Path(url) would have made ./redis:/... or ./postgresql:/...
