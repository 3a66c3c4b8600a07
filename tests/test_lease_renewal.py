"""A reservation keeps its hold for as long as its process runs and holds it: a stream read for longer
than `lease_s`, on the real llama.cpp server, is still held for every other process until it is
settled; a reservation dropped unsettled, or one whose ledger can't be reached, lapses at its lease as
before; a ledger never revives a lapsed hold (its headroom may be spent elsewhere)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servers import RedisServer

from blackbox_sdk import Budget, BudgetExceededError, OpenAI
from blackbox_sdk.budget._keeper import KEEPER

LEASE_S = 0.3  # renewed every 0.2 s while held
PRICES = {"unit": {"input": 1.0, "output": 10.0}, "smollm2": {"input": 1000.0, "output": 1000.0}}
OUTPUT_TOKENS = 100  # $0.001 a call on `unit`


@pytest.fixture
def ledger(store_at: Callable[[str], str]) -> str:
    """ledger.sqlite3 in the test's folder, then a real redis-server."""
    return store_at("ledger.sqlite3")


def budget_on(ledger: str, **options: Any) -> Budget:
    """A budget on `ledger` with a short lease; another Budget on the same ledger stands for another process."""
    return Budget(prices=PRICES, ledger=ledger, lease_s=LEASE_S, **options)


def reserve(budget: Budget) -> Any:
    """Reserve one $0.001 call."""
    return budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=OUTPUT_TOKENS)


def test_a_held_reservation_outlives_many_leases_and_settles_without_a_lapse(ledger: str, caplog: pytest.LogCaptureFixture) -> None:
    budget, other = budget_on(ledger, total_usd=0.0015), budget_on(ledger, total_usd=0.0015)
    held = reserve(budget)
    time.sleep(4 * LEASE_S)
    assert other.report().outstanding_reservations == 1  # renewed: still counted by everyone
    with pytest.raises(BudgetExceededError):
        reserve(other)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert budget.settle(held, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS) == pytest.approx(0.001)
    assert "lapsed" not in caplog.text
    assert other.report().outstanding_reservations == 0


def test_a_reservation_dropped_unsettled_lapses_at_its_lease(ledger: str) -> None:
    budget = budget_on(ledger, total_usd=0.0015)
    reserve(budget)  # dropped at once: nothing holds it, so nothing renews it
    gc.collect()
    time.sleep(2 * LEASE_S)
    assert budget.report().outstanding_reservations == 0
    budget.release(reserve(budget))  # its headroom is free again


def test_the_ledger_renews_only_a_hold_whose_lease_has_not_lapsed(ledger: str) -> None:
    budget = budget_on(ledger, total_usd=1.0)
    store = budget._ledger
    settled, released, lapsing = reserve(budget), reserve(budget), reserve(budget)
    budget.settle(settled, prompt_tokens=0, completion_tokens=1)
    budget.release(released)
    assert store.renew(lapsing.id, LEASE_S) is True
    assert store.renew(settled.id, LEASE_S) is False
    assert store.renew(released.id, LEASE_S) is False
    assert store.renew("no-such-reservation", LEASE_S) is False
    KEEPER.drop(lapsing)  # as if its process froze: nothing renews it now
    time.sleep(2 * LEASE_S)
    assert store.renew(lapsing.id, 60.0) is False  # lapsed: never revived
    assert budget.report().outstanding_reservations == 0


def test_an_unreachable_redis_lets_the_lease_lapse_with_a_warning(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    budget = budget_on(redis_server.url, total_usd=1.0)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        held = reserve(budget)
        redis_server.stop()
        time.sleep(3 * LEASE_S)
    assert "could not be renewed before it lapsed" in caplog.text
    assert held.id in caplog.text


def test_a_hold_a_restarted_redis_lost_ends_its_renewal_with_a_warning_that_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    budget = Budget(prices=PRICES, ledger=redis_server.url, lease_s=3.0, total_usd=1.0)  # renewed 2 s on, tried every 0.25 s
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        held = reserve(budget)
        redis_server.stop()
        redis_server.start()  # empty: the hold is gone, not lapsed
        deadline = time.monotonic() + 10
        while held.id not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "refused to renew its lease: it had lapsed, or the ledger no longer holds it" in caplog.text
    assert held.id in caplog.text


def test_a_stream_read_past_its_lease_stays_held_until_it_is_settled(
    llama_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = str(tmp_path / "ledger.sqlite3")
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget_on(ledger, total_usd=10.0), max_retries=0)
    other = budget_on(ledger, total_usd=10.0)  # another process sharing the ledger
    question = [{"role": "user", "content": "Count from one to twenty."}]
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        stream = client.chat.completions.create(model="smollm2", messages=question, max_tokens=32, stream=True)
        chunks = iter(stream)
        next(chunks)
        time.sleep(4 * LEASE_S)  # a slow reader: the call runs for several leases
        assert other.report().outstanding_reservations == 1
        assert other.report().reserved_usd > 0
        rest = list(chunks)
    assert rest
    report = other.report()
    assert (report.outstanding_reservations, report.calls) == (0, 1)
    assert report.spent_usd > 0
    assert "lapsed" not in caplog.text
