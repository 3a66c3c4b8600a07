"""The ledger a fleet shares: Redis (against a real redis-server), and the SQLite ledger under the same contract.

Caps hold across processes x threads on either store; settle and release are idempotent by
reservation id (also when Redis ran a script and the reply was lost: a loopback proxy drops it);
lapsed leases free their hold; a killed, paused or restarted Redis fails closed with
StoreUnavailableError (the URL's password never shown) and works again once it is back.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import pytest
import redis
from openai import InternalServerError
from servers import CountingRelay, InstantUpstream, RedisServer

from blackbox_sdk import BudgetExceededError, ConfigError, OpenAI, ReservationNotHeldError, StoreUnavailableError
from blackbox_sdk.budget import Budget, Cap, Hold, LedgerStore, RedisLedger, owed_usd, usd_to_nano
from blackbox_sdk.budget._keeper import KEEPER

PRICES = {"unit": {"input": 1.0, "output": 10.0}}  # USD per million tokens
OUTPUT_TOKENS = 100  # each call: 100 output tokens = $0.001, reserved and settled in full
CALL_USD = 0.001
CAP_USD = 0.06  # exactly 60 calls fit
SPAWN = multiprocessing.get_context("spawn")
SPAWN_TIMEOUT_S = 180.0
PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def ledger(store_at: Callable[[str], str]) -> str:
    """Where the store lives: ledger.sqlite3 in the test's folder, then a real redis-server."""
    return store_at("ledger.sqlite3")


def capped(ledger: str, **options: Any) -> Budget:
    """A budget over the synthetic `unit` model on `ledger`."""
    return Budget(prices=PRICES, ledger=ledger, **options)


def call(budget: Budget, **request: Any) -> Any:
    """Reserve one $0.001 call."""
    return budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=OUTPUT_TOKENS, **request)


# --- caps hold across 4 processes x 8 threads ----------------------------------------------------


def _calls(budget: Budget, attempts: int) -> int:
    """Reserve, hold briefly, settle in full; return how many calls were admitted."""
    admitted = 0
    for _ in range(attempts):
        try:
            reservation = call(budget)
        except BudgetExceededError:
            continue
        time.sleep(0.001)
        budget.settle(reservation, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
        admitted += 1
    return admitted


def _fleet_process(ledger: str, threads: int, attempts: int, ready: Queue, go: Event, results: Queue) -> None:
    """A spawned process: open the shared ledger, wait for the start signal, call from `threads` threads."""
    budget = capped(ledger, total_usd=CAP_USD)
    ready.put(os.getpid())
    go.wait(SPAWN_TIMEOUT_S)
    counts: list[int] = []
    workers = [threading.Thread(target=lambda: counts.append(_calls(budget, attempts))) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(sum(counts))


def test_caps_hold_across_4_processes_x_8_threads(ledger: str) -> None:
    ready, results, go = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
    processes = [SPAWN.Process(target=_fleet_process, args=(ledger, 8, 4, ready, go, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=SPAWN_TIMEOUT_S)
    go.set()
    admitted = sum(results.get(timeout=SPAWN_TIMEOUT_S) for _ in processes)
    for process in processes:
        process.join(timeout=SPAWN_TIMEOUT_S)
        assert process.exitcode == 0
    fits = usd_to_nano(CAP_USD, round_up=False) // usd_to_nano(CALL_USD, round_up=True)
    assert 4 * 8 * 4 > admitted == fits  # some calls were refused, and every call that fits was admitted
    report = capped(ledger).report()
    assert report.spent_usd <= CAP_USD
    assert report.spent_usd == pytest.approx(fits * CALL_USD)
    assert (report.calls, report.outstanding_reservations, report.reserved_usd) == (fits, 0, 0.0)


# --- the contract both stores keep ----------------------------------------------------------------


def test_settling_twice_charges_once(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0)
    reservation = call(budget)
    assert budget.settle(reservation, prompt_tokens=0, completion_tokens=40) == pytest.approx(40 * 10 / 1e6)
    with pytest.raises(ReservationNotHeldError, match="already settled"):
        budget.settle(reservation, prompt_tokens=0, completion_tokens=40)
    budget.release(reservation)  # a release after the settle does not give the spend back
    report = budget.report()
    assert (report.calls, report.spent_usd, report.outstanding_reservations) == (1, pytest.approx(4e-4), 0)


def test_a_paid_settle_of_a_released_reservation_is_charged_once(ledger: str, caplog: pytest.LogCaptureFixture) -> None:
    budget = capped(ledger, total_usd=1.0)
    reservation = call(budget)
    capped(ledger).release(reservation)  # as another process's release would, while the call ran
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert budget.settle(reservation, prompt_tokens=0, completion_tokens=40) == pytest.approx(4e-4)  # the answer was paid
    [warning] = [record.getMessage() for record in caplog.records if "no longer held" in record.getMessage()]
    assert reservation.call_id in warning
    with pytest.raises(ReservationNotHeldError, match="already settled") as raised:
        budget.settle(reservation, prompt_tokens=0, completion_tokens=40)  # a retried settle charges nothing
    assert isinstance(raised.value, ConfigError)  # what it was before: callers catching ConfigError still do
    report = budget.report()
    assert (report.calls, report.spent_usd, report.outstanding_reservations) == (1, pytest.approx(4e-4), 0)
    assert budget.spent(model="unit") == budget.spent(day=reservation.day) == pytest.approx(4e-4)  # under the call's own rows


def test_a_store_refuses_a_settle_it_cannot_charge(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0)
    store: LedgerStore = budget._ledger
    reservation = call(budget)
    store.release(reservation.id)
    charge = {"usd_nano": 123, "prompt_tokens": 0, "completion_tokens": 1, "cached_tokens": 0}
    for unknown in (reservation.id, "never-reserved"):  # released or unknown, and no hold to say what the call was
        with pytest.raises(ReservationNotHeldError, match="no hold was given to charge it from"):
            store.settle(unknown, **charge)
    assert budget.report().calls == 0


def test_the_store_settles_by_reservation_id_once(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0)
    reservation = call(budget)
    store: LedgerStore = budget._ledger
    charge = {"usd_nano": 123, "prompt_tokens": 0, "completion_tokens": 1, "cached_tokens": 0}
    assert store.settle(reservation.id, **charge) is True
    assert store.settle(reservation.id, **charge) is False  # a second settle: nothing charged again
    assert (budget.report().calls, store.outstanding()) == (1, (0, 0))
    assert budget.spent() == pytest.approx(123e-9)


def test_a_retried_reserve_holds_once(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0)
    hold = Hold("r-1", "c-1", "unit", None, "2000-01-01", 5000, 60.0)
    only_once = [Cap("total", 6000)]  # the hold fits once: a retry that counted it again would be refused
    assert budget._ledger.reserve(hold, only_once) is None
    assert budget._ledger.reserve(hold, only_once) is None
    assert budget._ledger.reserve(hold, []) is None
    assert budget._ledger.outstanding() == (5000, 1)
    refused = budget._ledger.reserve(Hold("r-2", "c-2", "unit", None, "2000-01-01", 5000, 60.0), only_once)
    assert refused is not None and refused[0].reserved_nano == 5000


def test_release_is_idempotent_and_gives_the_hold_back(ledger: str) -> None:
    budget = capped(ledger, total_usd=0.0015)
    failed = call(budget)
    with pytest.raises(BudgetExceededError):
        call(budget)
    budget.release(failed)
    budget.release(failed)
    assert budget._ledger.release(failed.id) is False
    assert call(budget).worst_case_usd == pytest.approx(CALL_USD)
    assert (budget.spent(), budget.report().outstanding_reservations) == (0.0, 1)


def test_releasing_a_hold_whose_lease_lapsed_says_it_held_nothing(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0, lease_s=0.2)
    hung = call(budget)
    KEEPER.drop(hung)  # as if its process froze: nothing renews its lease now
    time.sleep(0.3)
    assert budget._ledger.release(hung.id) is False  # lapsed before any reserve or report purged it: it held nothing
    assert budget._ledger.outstanding() == (0, 0) and budget._ledger.release(hung.id) is False


def _audited_reserve(ledger: str, reservation_id: str) -> int:
    """The hold the ledger's audit record of a settled reservation says it replaced (Redis: its spends stream)."""
    if ledger.startswith("redis://"):
        [(_, fields)] = redis.Redis.from_url(ledger).xrange("blackbox:ledger:spends")
        assert fields[b"reservation_id"].decode() == reservation_id
        return int(fields[b"reserved_nano"])
    with sqlite3.connect(ledger) as raw:
        [(reserved,)] = raw.execute("SELECT reserved_nano FROM spends WHERE reservation_id = ?", (reservation_id,))
    return int(reserved)


def test_a_paid_settle_of_a_released_reservation_is_audited_with_its_hold(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0)
    reservation = call(budget)
    capped(ledger).release(reservation)  # as another process's release would, while the call ran
    budget.settle(reservation, prompt_tokens=0, completion_tokens=40)
    assert _audited_reserve(ledger, reservation.id) == usd_to_nano(CALL_USD, round_up=True)  # not 0


def test_a_lapsed_lease_frees_its_hold_and_a_late_settle_still_counts(
    ledger: str, caplog: pytest.LogCaptureFixture
) -> None:
    budget = capped(ledger, total_usd=0.0015, lease_s=0.3)
    hung = call(budget)
    with pytest.raises(BudgetExceededError) as refused:
        call(budget)
    assert refused.value.reserved == pytest.approx(CALL_USD)
    KEEPER.drop(hung)  # as if its process froze: nothing renews its lease now
    time.sleep(0.5)
    assert budget.report().outstanding_reservations == 0  # the lapsed lease holds nothing
    fresh = call(budget)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert budget.settle(hung, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS) == pytest.approx(CALL_USD)
    assert "lease lapsed" in caplog.text
    report = budget.report()
    assert (report.calls, report.spent_usd, report.outstanding_reservations) == (1, pytest.approx(CALL_USD), 1)
    budget.release(fresh)


def test_reports_break_down_by_day_key_and_model(ledger: str) -> None:
    budget = capped(ledger, total_usd=1.0, per_model_usd={"unit": 0.5})
    for model, key, completion in (("unit", "alice", 10), ("unit-2025-01-01", "bob", 20)):
        reservation = budget.reserve(model=model, prompt_tokens=100, max_output_tokens=50, key=key)
        budget.settle(reservation, prompt_tokens=100, completion_tokens=completion)
    held = budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=10)
    costs = {10: (100 + 10 * 10) / 1e6, 20: (100 + 20 * 10) / 1e6}
    assert budget.spent() == pytest.approx(costs[10] + costs[20])
    assert budget.spent(key="bob") == pytest.approx(costs[20])
    assert budget.spent(model="unit") == pytest.approx(costs[10] + costs[20])  # the snapshot counts
    assert budget.spent(model="unit-2025-01-01") == pytest.approx(costs[20])
    report = budget.report()
    assert report.by_key == pytest.approx({"alice": costs[10], "bob": costs[20]})
    assert report.by_model == pytest.approx({"unit": costs[10], "unit-2025-01-01": costs[20]})
    assert budget.spent(day=next(iter(report.by_day))) == pytest.approx(costs[10] + costs[20])
    assert (report.calls, report.outstanding_reservations, report.reserved_usd) == (2, 1, pytest.approx(1e-4))
    remaining = {(cap.scope, cap.value): cap.remaining_usd for cap in report.caps}
    assert remaining == pytest.approx(
        {("total", None): 1.0 - sum(costs.values()) - 1e-4, ("per_model", "unit"): 0.5 - sum(costs.values()) - 1e-4}
    )
    budget.release(held)


def test_shrink_fits_the_call_into_what_is_left(ledger: str) -> None:
    budget = capped(ledger, total_usd=0.01, policy="shrink")
    budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=600)  # holds $0.006
    shrunk = budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=600, n=2)
    assert (shrunk.n, shrunk.max_output_tokens, shrunk.shrunk) == (1, 400, True)
    with pytest.raises(BudgetExceededError, match="shrinking"):
        budget.reserve(model="unit", prompt_tokens=0, max_output_tokens=600)


def test_free_calls_hold_and_settle_nothing(ledger: str) -> None:
    budget = capped(ledger, total_usd=0.001)
    local = budget.reserve(model="smollm2", prompt_tokens=10, max_output_tokens=10, local=True)
    assert budget.settle(local, prompt_tokens=10, completion_tokens=10) == 0.0
    budget.release(budget.reserve(model="smollm2", prompt_tokens=10, max_output_tokens=10, local=True))
    assert (budget.report().calls, budget.report().outstanding_reservations) == (1, 0)


# --- Redis only ---------------------------------------------------------------------------------


def test_the_redis_ledger_is_a_ledger_store_and_budgets_on_one_url_share_caps(redis_server: RedisServer) -> None:
    first, second = capped(redis_server.url, total_usd=0.0015), capped(redis_server.url, total_usd=0.0015)
    assert isinstance(first._ledger, RedisLedger) and isinstance(first._ledger, LedgerStore)
    assert first.ledger_path is None
    call(first)
    with pytest.raises(BudgetExceededError) as refused:
        call(second)
    assert refused.value.reserved == pytest.approx(CALL_USD)


def test_keys_live_under_the_prefix_so_tenants_share_a_redis(redis_server: RedisServer) -> None:
    team_a = capped(redis_server.url, total_usd=0.0015, ledger_prefix="app:a:")
    team_b = capped(redis_server.url, total_usd=0.0015, ledger_prefix="app:b:")
    team_a.settle(call(team_a), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
    team_b.settle(call(team_b), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)  # a's spend is not b's
    call(capped(redis_server.url, total_usd=1.0))  # the default prefix
    keys = [key.decode() for key in redis.Redis.from_url(redis_server.url).keys("*")]
    assert keys and all(key.startswith(("app:a:", "app:b:", "blackbox:ledger:")) for key in keys)
    assert {key for key in keys if key.startswith("app:a:")} >= {"app:a:spent", "app:a:calls"}


def test_holds_forgotten_with_the_held_hash_are_never_counted_below_zero(redis_server: RedisServer) -> None:
    """Issue: a `held` hash lost while a reservation was out (an evicting maxmemory policy, a key deleted by hand) made its
    settle drive every held total negative, for good: each later reservation found that much more room under the cap."""
    ledger, caps = RedisLedger(redis_server.url), [Cap("total", 1000)]
    first = Hold("r-1", "c-1", "unit", None, "2000-01-01", 600, 60.0)
    assert ledger.reserve(first, caps) is None
    redis.Redis.from_url(redis_server.url).delete("blackbox:ledger:held")
    ledger.settle("r-1", usd_nano=100, prompt_tokens=1, completion_tokens=1, cached_tokens=0, hold=first)
    assert ledger.outstanding() == (0, 0)
    assert ledger.reserve(Hold("r-2", "c-2", "unit", None, "2000-01-01", 500, 60.0), caps) is None  # 100 spent + 500 held
    refused = ledger.reserve(Hold("r-3", "c-3", "unit", None, "2000-01-01", 500, 60.0), caps)
    assert refused is not None and (refused[0].spent_nano, refused[0].reserved_nano) == (100, 500)
    ledger.close()


def test_a_lapsed_lease_is_purged_inside_the_reserve_script(redis_server: RedisServer) -> None:
    budget = capped(redis_server.url, total_usd=1.0, lease_s=0.2)
    call(budget)
    raw = redis.Redis.from_url(redis_server.url)
    assert raw.zcard("blackbox:ledger:leases") == 1
    time.sleep(0.3)
    assert raw.zcard("blackbox:ledger:leases") == 1  # nothing expires on its own: the next script purges
    call(budget)
    assert raw.zcard("blackbox:ledger:leases") == 1
    assert int(raw.hget("blackbox:ledger:held", "count|")) == 1


def test_a_killed_redis_fails_closed_and_a_restarted_one_serves_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis.Redis.from_url(redis_server.url).config_set("requirepass", PASSWORD)
    url = redis_server.url.replace("redis://", f"redis://:{PASSWORD}@")
    budget = capped(url, total_usd=1.0)
    in_flight = call(budget)
    redis_server.stop()
    for operation in (
        lambda: call(budget),
        lambda: budget.settle(in_flight, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS),
        budget.report,
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as unavailable:
            operation()
        assert time.monotonic() - started < 5.0
        message = str(unavailable.value)
        assert PASSWORD not in message and ":***@127.0.0.1" in message
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        budget.release(in_flight)  # not raised: owed, given back once the ledger answers
    assert "its hold could not be given back now" in caplog.text and PASSWORD not in caplog.text and ":***@127.0.0.1" in caplog.text
    assert "the call is refused, nothing was sent" in _message(lambda: call(budget))
    redis_server.start()  # empty, and with no password now
    restarted = capped(redis_server.url, total_usd=1.0)
    assert call(restarted).worst_case_usd == pytest.approx(CALL_USD)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):  # the call that was in flight is still charged
        restarted.settle(in_flight, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
    assert "did not know reservation" in caplog.text and "AOF" in caplog.text
    report = restarted.report()
    assert (report.calls, report.outstanding_reservations) == (1, 1)


def test_a_client_call_on_a_stopped_redis_ledger_is_refused_unsent_and_says_so(redis_server: RedisServer) -> None:
    from blackbox_sdk import OpenAI

    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "unit", "usage": {"prompt_tokens": 9, "completion_tokens": 2},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}]}
    sent: list[None] = []
    upstream = InstantUpstream(answer, before=lambda: sent.append(None))
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=capped(redis_server.url, total_usd=1.0), max_retries=0)
    redis_server.stop()
    try:
        message = _message(lambda: client.chat.completions.create(model="unit", messages=[{"role": "user", "content": "Hi"}], max_tokens=4))
    finally:
        upstream.close()
    assert "failed to read the endpoint's calibration" in message and "the call is refused, nothing was sent" in message
    assert sent == []


def test_the_same_budget_reconnects_after_a_restart_that_kept_the_data() -> None:
    server = RedisServer(options=("--appendonly", "yes", "--appendfsync", "always")).start()  # the deployment docs/fleet.md asks for
    try:
        budget = capped(server.url, total_usd=1.0)
        budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
        server.stop()  # SIGKILL
        with pytest.raises(StoreUnavailableError):
            call(budget)
        server.start()
        budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)  # scripts reloaded on the new server
        assert budget.report().calls == 2 and budget.spent() == pytest.approx(2 * CALL_USD)
    finally:
        server.close()


def test_a_ledger_that_lost_its_data_refuses_every_budget_until_it_is_reset(redis_server: RedisServer) -> None:
    """Issue: Redis restarted without persistence (or flushed) forgot the spend, and every budget went on under caps
    started again from zero, silently: a day's cap already spent could be spent again."""
    first = capped(redis_server.url, total_usd=2 * CALL_USD)
    for _ in range(2):
        first.settle(call(first), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
    with pytest.raises(BudgetExceededError):
        call(first)
    redis_server.stop()
    redis_server.start()  # empty: no persistence
    later = capped(redis_server.url, total_usd=2 * CALL_USD)  # a process started after the restart sees an empty ledger
    held = call(later)  # it can't know what was lost; the first process that saw the old ledger can
    for budget in (first, later, capped(redis_server.url, total_usd=2 * CALL_USD)):
        message = _message(lambda: call(budget))
        assert "lost its data" in message and "the call is refused, nothing was sent" in message
        assert "redis-cli SET 'blackbox:ledger:epoch' reset:1" in message and "appendonly yes" in message
    raw = redis.Redis.from_url(redis_server.url)
    raw.set("blackbox:ledger:epoch", "reset:after-the-restart")  # the operator accepts caps started again from zero
    later.release(held)
    for budget in (first, later):
        budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
    with pytest.raises(BudgetExceededError):
        call(first)
    raw.flushall()  # lost again, another way: noticed by a process that saw the reset ledger
    assert "lost its data" in _message(lambda: call(later))
    raw.close()


def test_a_ledger_restored_from_an_older_snapshot_refuses_until_reset(redis_server: RedisServer) -> None:
    """Issue: Redis restarted from its last RDB snapshot (appendonly no: Redis's default) came back with the spend made
    before the snapshot and with its epoch, so the spend made since was forgotten without a sign and a cap could be
    passed. A process that saw the ledger further along notices, and every budget refuses until an operator resets it;
    a second reset in the same words, after a second loss, takes as the first did."""
    raw = redis.Redis.from_url(redis_server.url)
    budget = capped(redis_server.url, total_usd=6 * CALL_USD)
    for reset in ("reset:1", "reset:1"):
        budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
        raw.save()  # the snapshot a restart goes back to
        spent = budget.spent()
        for _ in range(2):
            budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)  # spend the snapshot never saw
        redis_server.stop()
        redis_server.start()
        later = capped(redis_server.url, total_usd=6 * CALL_USD)
        assert later.spent() == pytest.approx(spent)  # the restart went back in time: the spend since is gone
        for refused in (budget, later):
            message = _message(lambda: call(refused))  # noqa: B023 - called at once
            assert "lost its data" in message and "the call is refused, nothing was sent" in message
        raw.set("blackbox:ledger:epoch", reset)  # the operator accepts the caps as the snapshot left them
        for budget_ in (budget, later):
            budget_.settle(call(budget_), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)
    raw.close()


def test_a_budget_shows_its_redis_url_without_the_password(redis_with_password: RedisServer) -> None:
    password = str(redis_with_password.password)
    budget = capped(redis_with_password.url.replace("redis://:", "redis://default:"), total_usd=1.0)
    assert password not in repr(budget) and password not in str(budget)
    assert "redis://default:***@127.0.0.1" in repr(budget)


def test_a_wrong_password_is_a_config_error_at_open_without_echoing_it(redis_with_password: RedisServer) -> None:
    wrong = "not-" + PASSWORD
    url = redis_with_password.url.replace(f":{redis_with_password.password}@", f"user:{wrong}@")
    with pytest.raises(ConfigError) as refused:  # no budget at all, so no call runs unbudgeted
        capped(url, total_usd=1.0)
    message = str(refused.value)
    assert message.startswith("the ledger URL redis://user:***@127.0.0.1:") and "its user name or password is wrong" in message
    assert wrong not in message


def test_a_password_the_server_stops_taking_after_open_fails_closed_without_echoing_it(redis_server: RedisServer) -> None:
    budget = capped(redis_server.url.replace("redis://", f"redis://:{PASSWORD}@"), total_usd=1.0)  # no password needed yet
    redis.Redis.from_url(redis_server.url).config_set("requirepass", "another-" + PASSWORD)
    message = _message(lambda: call(budget))  # an outage for the calls: refused, never run unbudgeted
    assert PASSWORD not in message and "redis://:***@" in message


def test_a_paused_redis_times_out_and_fails_closed(redis_server: RedisServer) -> None:
    budget = capped(redis_server.url + "?socket_timeout=0.2", total_usd=1.0)
    call(budget)  # connected
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # scripts wait; UNPAUSE still runs
    try:
        started = time.monotonic()
        assert "Timeout" in _message(lambda: call(budget))
        assert time.monotonic() - started < 2.5
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


class ReplyDropper(CountingRelay):
    """A loopback relay in front of a real Redis; armed, it drops the next reply and cuts the connection,
    as a network failure after the server ran a script would. `connections` counts those a client opened."""

    def __init__(self, port: int) -> None:
        self.armed = threading.Event()
        self.outage = threading.Event()  # set: every chunk is cut, as with the server down; a dropped reply may set it
        self.then_down = False
        self.dropped = 0
        super().__init__(port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def passes(self, data: bytes, replies: bool) -> bool:
        """Every chunk but the first reply after arming (and, during an outage, every one)."""
        if replies and self.armed.is_set():
            self.armed.clear()
            self.dropped += 1
            if self.then_down:
                self.outage.set()
            return False
        return not self.outage.is_set()


@pytest.fixture
def dropper(redis_server: RedisServer) -> Iterator[ReplyDropper]:
    """A reply-dropping proxy in front of this test's redis-server."""
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


def test_a_lost_reply_is_retried_without_charging_or_holding_twice(dropper: ReplyDropper) -> None:
    budget = capped(dropper.url, total_usd=1.0)
    budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)  # every script loaded
    dropper.armed.set()
    held = call(budget)  # the reserve script ran, its reply was lost, redis-py sent it again
    assert dropper.dropped == 1
    assert budget.report().outstanding_reservations == 1
    dropper.armed.set()
    assert budget.settle(held, prompt_tokens=0, completion_tokens=OUTPUT_TOKENS) == pytest.approx(CALL_USD)
    assert dropper.dropped == 2
    report = budget.report()
    assert (report.calls, report.spent_usd, report.outstanding_reservations) == (2, pytest.approx(2 * CALL_USD), 0)


def _outstanding(url: str, *, after_s: float = 0.0) -> int:
    """The reservations the ledger at `url` holds, read directly; waits up to `after_s` for them to reach none."""
    deadline = time.monotonic() + after_s
    while (held := capped(url).report().outstanding_reservations) and time.monotonic() < deadline:
        time.sleep(0.1)
    return held


def test_a_hold_whose_reply_was_lost_with_the_ledger_is_given_back_once_it_answers(redis_server: RedisServer, dropper: ReplyDropper) -> None:
    """Redis ran the reserve, then went out of reach before its reply (and redis-py's retries) came back: the call is
    refused, and the hold it may have left is given back once the ledger answers, not at its lease five minutes on."""
    budget = capped(dropper.url, total_usd=1.0)
    budget.settle(call(budget), prompt_tokens=0, completion_tokens=OUTPUT_TOKENS)  # every script loaded
    dropper.then_down = True
    dropper.armed.set()
    with pytest.raises(StoreUnavailableError):
        call(budget)
    assert _outstanding(redis_server.url) == 1  # the script ran: its hold is on the server, its caller gone
    dropper.outage.clear()
    assert _outstanding(redis_server.url, after_s=10) == 0
    assert owed_usd() == 0 and capped(redis_server.url).report().spent_usd == pytest.approx(CALL_USD)  # nothing charged for it


def test_a_failed_call_s_hold_is_given_back_once_the_ledger_answers(redis_server: RedisServer, dropper: ReplyDropper, caplog: pytest.LogCaptureFixture) -> None:
    """The server failed the call while the ledger was out of reach: the call's error is raised as it is, and its hold
    is given back once the ledger answers."""

    def fail_with_the_ledger_down() -> None:
        dropper.outage.set()

    upstream = InstantUpstream({"error": {"message": "boom", "type": "server_error"}}, before=fail_with_the_ledger_down, status=500)
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=capped(dropper.url, total_usd=1.0), max_retries=0)
    try:
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"), pytest.raises(InternalServerError):
            client.chat.completions.create(model="unit", messages=[{"role": "user", "content": "hi"}], max_tokens=OUTPUT_TOKENS)
        assert _outstanding(redis_server.url) == 1
        assert "its hold could not be given back now" in caplog.text and "its calibration gate could not be given back now" in caplog.text
        gate, other = f"{client._core.endpoint}#chat.completions", capped(redis_server.url).calibration
        assert not other.open_gate(gate, "unit", "another call")  # the failed call's gate still shuts the endpoint's others out
        dropper.outage.clear()
        assert _outstanding(redis_server.url, after_s=10) == 0
        deadline = time.monotonic() + 10
        while not (opened := other.open_gate(gate, "unit", "another call")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened  # given back too, not left to its five-minute lease
    finally:
        client.close()
        upstream.close()


def test_a_stalled_redis_is_asked_once_not_again_on_fresh_connections(redis_server: RedisServer, dropper: ReplyDropper) -> None:
    """A timeout is not a dropped connection: the call fails at the socket timeout, as documented, instead of
    sending the script again on new connections that wait as long each."""
    budget = capped(dropper.url.replace("/0", "/0?socket_timeout=0.2"), total_usd=1.0)
    call(budget)  # connected
    opened = dropper.connections
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # scripts wait; UNPAUSE still runs
    try:
        assert "Timeout" in _message(lambda: call(budget))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    assert dropper.connections == opened


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
        f"redis://:{PASSWORD}@127.0.0.1:6379/zero",
        f"redis://:{PASSWORD}@:6379/0",
        f"redis://:{PASSWORD}@127.0.0.1:6379/0?no_such_option=1",
        f"postgresql://user:{PASSWORD}@127.0.0.1/ledger",
    ],
    ids=["port", "database", "host", "option", "scheme"],
)
def test_a_bad_url_is_a_config_error_that_hides_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Budget(total_usd=1.0, ledger=url)
    assert PASSWORD not in str(refused.value) and "***" in str(refused.value)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [("redis", "the ledger URL redis://[::1/0 is not valid: Invalid IPv6 URL"),
     ("mysql", "ledger must be a file path or a redis:// / rediss:// URL, got mysql://[::1/0")],
)
def test_a_url_urllib_cannot_split_is_a_config_error_that_hides_the_password(scheme: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Budget(total_usd=1.0, ledger=f"{scheme}://:{PASSWORD}@[::1/0")  # an unclosed IPv6 bracket
    assert str(refused.value) == message


def test_without_the_redis_package_a_redis_ledger_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # the fault: redis-py not installed
    with pytest.raises(ConfigError, match=r"pip install 'blackbox-sdk\[redis\]'"):
        Budget(total_usd=1.0, ledger="redis://127.0.0.1:6379/0")


def test_the_core_imports_without_redis() -> None:
    code = "import sys, blackbox_sdk, blackbox_sdk.budget; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _message(operation: Callable[[], object]) -> str:
    """The message of the StoreUnavailableError `operation` raises."""
    with pytest.raises(StoreUnavailableError) as unavailable:
        operation()
    return str(unavailable.value)


def test_stored_context_is_shared_through_the_ledger_and_the_larger_count_wins(ledger: str) -> None:
    first, other = capped(ledger), capped(ledger)  # two processes on one ledger
    key = "http://api.test/v1#response:resp_1"
    assert first.calibration.context(key) is None
    first.calibration.keep_context(key, 700)
    other.calibration.keep_context(key, 300)  # a smaller count never shrinks what a continuation reserves
    assert other.calibration.context(key) == first.calibration.context(key) == 700
    first.calibration.keep_context(key, -5)  # not a count: ignored
    assert other.calibration.context("http://api.test/v1#response:resp_2") is None and first.calibration.context(key) == 700


def test_a_server_that_may_evict_the_ledger_s_keys_is_warned_of_at_open(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    from blackbox_sdk.limits import RateLimits

    admin = redis.Redis.from_url(redis_server.url)
    warned = []
    for limit, policy in (("0", "allkeys-lru"), ("64mb", "noeviction"), ("64mb", "allkeys-lru"), ("64mb", "volatile-ttl")):
        admin.config_set("maxmemory", limit)
        admin.config_set("maxmemory-policy", policy)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            capped(redis_server.url, total_usd=1.0)
            RateLimits(rpm=10, store=redis_server.url)
        warned.append([record.getMessage() for record in caplog.records if "may evict keys" in record.getMessage()])
    assert warned[:2] == [[], []]  # no memory limit (nothing is evicted), or noeviction
    for policy, messages in zip(("allkeys-lru", "volatile-ttl"), warned[2:]):
        assert len(messages) == 2 and all(f"maxmemory-policy {policy}" in text and "noeviction" in text for text in messages)
        assert "ledger" in messages[0] and "spend" in messages[0] and "rate-limit store" in messages[1]
    admin.close()


def test_a_server_without_an_append_only_file_is_warned_of_at_open(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Snapshots alone (or none) mean a restart goes back in time: the spend written since is gone, and the epoch, made
    before the snapshot, does not show it. The ledger says so at open; with appendonly yes it says nothing."""
    admin = redis.Redis.from_url(redis_server.url)
    warned = []
    for appendonly in ("no", "yes", "no"):
        admin.config_set("appendonly", appendonly)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            capped(redis_server.url, total_usd=1.0)
        warned.append([record.getMessage() for record in caplog.records if "append-only file" in record.getMessage()])
    assert warned[1] == []
    for messages in (warned[0], warned[2]):
        assert len(messages) == 1 and "appendonly no" in messages[0] and "appendonly yes" in messages[0], messages
        assert "ledger" in messages[0] and "spend" in messages[0] and redis_server.url.split("@")[-1].split("/")[0] in messages[0]
    admin.close()
