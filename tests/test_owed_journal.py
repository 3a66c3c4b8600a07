"""The owed-charge journal: a paid call's charge that its process could not settle before it exited
lands on the ledger all the same, settled by the next Budget that opens that ledger on this host.

Each test runs the paying call in a child process that exits with the charge still owed: on a real
Redis killed while the call is out (and started again empty), and on an SQLite ledger whose
settles fail in that child (a test double for a ledger locked past its busy timeout, which takes a
minute to show for real).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servers import InstantUpstream

from blackbox_sdk import OpenAI, StoreUnavailableError
from blackbox_sdk.budget import Budget, owed_usd, settle_owed
from blackbox_sdk.budget import _journal
from blackbox_sdk.budget._owners import this_process

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}
QUESTION = [{"role": "user", "content": "Name a fruit."}]
ANSWER = {
    "id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}],
}
SPAWN = multiprocessing.get_context("spawn")


def _pay_and_exit(url: str, ledger: str, settles_fail: bool, killed: bool, out: Any) -> None:
    """A child process: one paid call whose settle can't reach the ledger; it exits (or is killed) with the charge owed."""
    if settles_fail:
        from blackbox_sdk.budget import _ledger

        def locked(*args: object, **kwargs: object) -> bool:
            raise StoreUnavailableError("the ledger file stayed locked past its busy timeout")

        _ledger.Ledger.settle = locked  # type: ignore[method-assign]
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    client = OpenAI(base_url=url, api_key="sk-test-journal", budget=budget, max_retries=0)
    budget.calibration.learn(f"{client._core.endpoint}#chat.completions", MODEL, 0, 0)  # calibrated: no gate here
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    out.put((answer.blackbox.cost_usd, owed_usd()))
    if killed:
        out.close()
        out.join_thread()
        os.kill(os.getpid(), signal.SIGKILL)  # no exit handler runs


def _owed_by_a_child(url: str, ledger: str, *, settles_fail: bool = False, killed: bool = False) -> float:
    """Run `_pay_and_exit` in a child; the cost of its call, which it still owed when it ended."""
    out = SPAWN.Queue()
    child = SPAWN.Process(target=_pay_and_exit, args=(url, ledger, settles_fail, killed, out))
    child.start()
    cost, owed = out.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == (-signal.SIGKILL if killed else 0) and cost > 0 and owed == pytest.approx(cost)
    return cost


def _journal_files() -> list[Path]:
    return sorted(_journal.journal_dir().glob("*.json"))


def test_a_charge_owed_to_redis_when_its_process_exited_lands_once_redis_is_back(redis_server: Any) -> None:
    upstream = InstantUpstream(ANSWER, before=redis_server.stop)  # the ledger dies while the child's call is out
    try:
        cost = _owed_by_a_child(upstream.url, redis_server.url)
    finally:
        upstream.close()
    [kept] = _journal_files()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    redis_server.start()  # empty, as a Redis without persistence comes back
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=redis_server.url)  # takes over the dead child's charge
    assert settle_owed() == 0 and owed_usd() == 0
    assert budget.spent() == pytest.approx(cost) and budget.report().calls == 1
    assert _journal_files() == []
    Budget(total_usd=1.0, prices=PRICES, ledger=redis_server.url)
    assert settle_owed() == 0 and budget.spent() == pytest.approx(cost)  # charged once


@pytest.mark.parametrize("killed", [False, True], ids=["exited", "killed"])
def test_a_charge_owed_to_an_sqlite_ledger_when_its_process_ended_lands_on_the_next_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, killed: bool
) -> None:
    ledger = tmp_path / "ledger.db"
    upstream = InstantUpstream(ANSWER)
    try:
        cost = _owed_by_a_child(upstream.url, str(ledger), settles_fail=True, killed=killed)
    finally:
        upstream.close()
    assert len(_journal_files()) == 1
    with caplog.at_level(logging.INFO, logger="blackbox_sdk"):
        budget = Budget(total_usd=1.0, prices=PRICES, ledger=ledger)  # the dead child's hold lapsed; its record stays
        assert settle_owed() == 0
    assert "its process (no longer running) owed this ledger" in caplog.text
    assert budget.spent() == pytest.approx(cost) and budget.report().outstanding_reservations == 0
    assert _journal_files() == []


def test_a_live_process_charge_is_left_to_it_and_a_file_that_is_no_charge_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    reservation = budget.reserve(model=MODEL, prompt_tokens=9, max_output_tokens=4)
    host, _, _ = this_process()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            started = int(Path(f"/proc/{alive.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
            name = _journal.ledger_id(ledger, ledger, "bb")
            assert name is not None
            charge = _journal.OwedCharge(
                name, reservation.id, reservation.call_id, MODEL, None, reservation.day, 13_000_000, 300.0,
                11_000_000, 9, 2, 0, None, host, alive.pid, started,
            )
            kept = _journal.write(charge)
            assert kept is not None
            broken = kept.with_name(kept.name.replace(reservation.id, "broken"))
            broken.write_text("{not json")
            with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
                Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
            assert settle_owed() == 0 and budget.spent() == 0  # its owner still runs: not taken over
            assert "skipped" in caplog.text and "broken" in caplog.text
        finally:
            alive.kill()
    alive.wait()
    Budget(total_usd=1.0, prices=PRICES, ledger=ledger)  # now its owner is gone
    assert settle_owed() == 0 and budget.spent() == pytest.approx(0.011)


def test_a_charge_owed_by_a_dead_process_whose_reservation_was_released_lands_once(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    reservation = budget.reserve(model=MODEL, prompt_tokens=9, max_output_tokens=4)
    budget.release(reservation)  # released while its charge was owed (the record is gone: nothing says what the call was)
    host, pid, started = this_process()
    name = _journal.ledger_id(ledger, ledger, "bb")
    assert name is not None and started is not None
    dead = _journal.OwedCharge(  # this pid with another start time: a process that no longer runs
        name, reservation.id, reservation.call_id, MODEL, None, reservation.day, 13_000_000, 300.0, 11_000_000, 9, 2, 0, None,
        host, pid, started - 1,
    )
    assert _journal.write(dead) is not None
    Budget(total_usd=1.0, prices=PRICES, ledger=ledger)  # takes the charge over
    assert settle_owed() == 0 and budget.spent() == pytest.approx(0.011) and budget.report().calls == 1
    assert _journal_files() == []
    assert _journal.write(dead) is not None  # the same charge again (a copy left behind): settled already, charged once
    Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    assert settle_owed() == 0 and budget.spent() == pytest.approx(0.011) and _journal_files() == []


def test_a_redis_ledger_is_named_in_the_journal_without_its_password() -> None:
    name = _journal.ledger_id("redis://user:s3cret-pass@127.0.0.1:6379/0", None, "bb")
    assert name == "redis://user:***@127.0.0.1:6379/0#bb"
    assert _journal.ledger_id(None, Path("/tmp/x"), "bb") is None  # a private ledger: no other process opens it


def test_the_journal_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BLACKBOX_OWED_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert _journal.journal_dir() == tmp_path / "state" / "blackbox-sdk" / "owed"
    monkeypatch.setenv("BLACKBOX_OWED_DIR", "~/owed-here")
    assert _journal.journal_dir() == Path(os.path.expanduser("~/owed-here"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("usd_nano", -5_000_000), ("usd_nano", 2**70), ("prompt_tokens", "9"), ("completion_tokens", -2), ("model", 7), ("lease_s", -1.0)],
)
def test_a_journal_file_with_an_impossible_charge_is_skipped_and_kept_never_settled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: object
) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    settled = budget.reserve(model=MODEL, prompt_tokens=9, max_output_tokens=4)
    budget.settle(settled, prompt_tokens=9, completion_tokens=2)
    host, pid, started = this_process()
    name = _journal.ledger_id(ledger, ledger, "bb")
    assert name is not None and started is not None
    dead = _journal.OwedCharge(  # this pid with another start time: a process that no longer runs
        name, "res-edited", "call-edited", MODEL, None, settled.day, 13_000_000, 300.0, 11_000_000, 9, 2, 0, None, host, pid, started - 1,
    )
    kept = _journal.write(dataclasses.replace(dead, **{field: value}))  # a file edited by hand, or by a broken writer
    assert kept is not None
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        Budget(total_usd=1.0, prices=PRICES, ledger=ledger)
    assert settle_owed() == 0 and budget.spent() == pytest.approx(0.011) and budget.report().calls == 1  # nothing taken off or lost
    assert f"skipped {kept}" in caplog.text and field in caplog.text
    assert _journal_files() == [kept]  # left for a person to read
