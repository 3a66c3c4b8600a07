"""Owed settles: a paid call's charge its ledger could not take is retried until it lands, once.

The client's path (a real Redis ledger stopped while the call is out, then started again) is in
test_budget_holds.py; here the retry's rules, on a real SQLite ledger: a settle whose first try
landed though its caller saw a failure (a lost reply) is not charged again, one whose reservation was
released meanwhile is charged all the same (the answer was paid), and what is still owed at exit is named.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from blackbox_sdk import StoreUnavailableError
from blackbox_sdk.budget import Budget
from blackbox_sdk.budget._owed import OwedSettles, _Debt

PRICES = {"m": {"input": 1.0, "output": 1.0}}


def test_a_settle_that_landed_before_its_reply_was_lost_is_charged_once(tmp_path: Path) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    reservation = budget.reserve(model="m", prompt_tokens=10, max_output_tokens=10)
    settle = functools.partial(budget.settle, reservation, prompt_tokens=10, completion_tokens=5)
    cost = settle()  # it landed; the caller saw StoreUnavailableError (a reply lost) and owed it
    owed = OwedSettles()
    owed.owe(_Debt(reservation.id, reservation.call_id, cost, settle), StoreUnavailableError("reply lost"))
    assert owed.owed_usd == pytest.approx(cost)
    assert owed.settle_now() == 0  # the ledger says it is settled already: nothing is owed
    assert budget.spent() == pytest.approx(cost) and budget.report().calls == 1


def test_a_settle_the_ledger_takes_later_lands_and_what_stays_owed_is_named_at_exit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    reservation = budget.reserve(model="m", prompt_tokens=10, max_output_tokens=10)
    down = [True]

    def settle() -> float:
        """The ledger out of reach while `down`, then the real settle."""
        if down[0]:
            raise StoreUnavailableError("the ledger can't be reached")
        return budget.settle(reservation, prompt_tokens=10, completion_tokens=5)

    owed = OwedSettles()
    owed.owe(_Debt(reservation.id, reservation.call_id, 15e-6, settle), StoreUnavailableError("down"))
    assert owed.settle_now() == 1 and budget.spent() == 0
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        owed.at_exit()
    assert "paid calls whose charge is still owed at exit: 1 ($0.000015 in all)" in caplog.text
    down[0] = False
    assert owed.settle_now() == 0 and budget.spent() == pytest.approx(15e-6)
    assert owed.owed_usd == 0


def test_a_landed_charge_whose_journal_file_cant_be_removed_is_no_longer_owed_and_raises_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    reservation = budget.reserve(model="m", prompt_tokens=10, max_output_tokens=10)
    journal = tmp_path / "owed.json"
    journal.write_text("{}")

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(30, "Read-only file system", str(self))  # what root meets on a read-only mount

    monkeypatch.setattr(Path, "unlink", read_only)
    owed = OwedSettles()
    settle = functools.partial(budget.settle, reservation, prompt_tokens=10, completion_tokens=5)
    owed.owe(_Debt(reservation.id, reservation.call_id, 15e-6, settle, journal), StoreUnavailableError("down"))
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert owed.settle_now() == 0  # the retry thread runs this too: an error here would have ended it
    assert budget.spent() == pytest.approx(15e-6) and journal.exists() and "could not be removed" in caplog.text


def test_an_owed_settle_whose_reservation_was_released_meanwhile_still_lands(tmp_path: Path) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    reservation = budget.reserve(model="m", prompt_tokens=10, max_output_tokens=10)
    settle = functools.partial(budget.settle, reservation, prompt_tokens=10, completion_tokens=5)
    owed = OwedSettles()
    owed.owe(_Debt(reservation.id, reservation.call_id, 15e-6, settle), StoreUnavailableError("down"))
    Budget(prices=PRICES, ledger=tmp_path / "ledger.db").release(reservation)  # released by another process while it was owed
    assert owed.settle_now() == 0 and budget.spent() == pytest.approx(15e-6)  # the paid answer is charged
    assert owed.owed_usd == 0 and budget.report().calls == 1


def test_a_paid_call_whose_sqlite_ledger_stayed_locked_past_its_busy_timeout_is_owed_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servers import InstantUpstream

    from blackbox_sdk import OpenAI
    from blackbox_sdk.budget import Ledger, owed_usd, settle_owed

    monkeypatch.setitem(Ledger.__init__.__kwdefaults__, "busy_timeout_s", 0.2)  # the real 60 s, shortened
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=1.0, prices={"m": {"input": 1000.0, "output": 1000.0}}, ledger=ledger)
    locker = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
    answer = {
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}],
    }
    upstream = InstantUpstream(answer, before=lambda: locker.execute("BEGIN EXCLUSIVE"))  # locked while the call is out
    try:
        client = OpenAI(base_url=upstream.url, api_key="sk-test-locked", budget=budget, max_retries=0)
        budget.calibration.learn(f"{client._core.endpoint}#chat.completions", "m", 0, 0)  # calibrated: no gate here
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=4)
    finally:
        upstream.close()
    assert reply.blackbox.cost_usd == pytest.approx(11e-3) and owed_usd() == pytest.approx(11e-3)
    locker.execute("ROLLBACK")
    locker.close()
    assert settle_owed() == 0 and budget.spent() == pytest.approx(11e-3) and budget.report().outstanding_reservations == 0


def test_an_owed_release_is_tried_once_a_round_while_its_ledger_is_out_of_reach_and_dropped_once_its_lease_lapsed() -> None:
    tried: list[str] = []
    ledger = object()

    def release(name: str) -> None:
        tried.append(name)
        raise StoreUnavailableError("the ledger can't be reached")

    owed = OwedSettles()
    for name in ("a", "b", "c"):
        owed.keep(_Debt(f"hold:{name}", name, 0.0, functools.partial(release, name), None, ledger, "hold", time.monotonic() + 60))
    assert owed.settle_now() == 0  # no charge is owed: holds are given back, not charged
    assert tried == ["a"]  # the first found the ledger out of reach; the others waited for the next round
    owed.keep(_Debt("hold:late", "late", 0.0, functools.partial(release, "late"), None, object(), "hold", time.monotonic() - 1))
    owed.settle_now()
    assert tried == ["a", "a"] and "hold:late" not in owed._debts  # its lease lapsed: nothing left to give back, never tried
    owed.keep(_Debt("hold:d", "d", 0.0, functools.partial(release, "d"), None, ledger, "hold", time.monotonic() - 1))
    owed.settle_now()
    assert tried == ["a", "a", "a"] and "hold:d" not in owed._debts  # dropped too behind a ledger still out of reach
