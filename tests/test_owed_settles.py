"""Owed settles: a paid call's charge its ledger could not take is retried until it lands, once.

The client's path (a real Redis ledger stopped while the call is out, then started again) is in
test_budget_holds.py; here the retry's rules, on a real SQLite ledger: a settle whose first try
landed though its caller saw a failure (a lost reply) is not charged again, one whose reservation was
released meanwhile is charged all the same (the answer was paid), and what is still owed at exit is named.
"""

from __future__ import annotations

import functools
import logging
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


def test_an_owed_settle_whose_reservation_was_released_meanwhile_still_lands(tmp_path: Path) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    reservation = budget.reserve(model="m", prompt_tokens=10, max_output_tokens=10)
    settle = functools.partial(budget.settle, reservation, prompt_tokens=10, completion_tokens=5)
    owed = OwedSettles()
    owed.owe(_Debt(reservation.id, reservation.call_id, 15e-6, settle), StoreUnavailableError("down"))
    Budget(prices=PRICES, ledger=tmp_path / "ledger.db").release(reservation)  # released by another process while it was owed
    assert owed.settle_now() == 0 and budget.spent() == pytest.approx(15e-6)  # the paid answer is charged
    assert owed.owed_usd == 0 and budget.report().calls == 1
