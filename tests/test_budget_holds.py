"""A cap that is never exceeded, against the real llama.cpp server, whose chat template adds a
hidden system prompt the SDK's count can't see: the first answer calibrates the endpoint (one call
at a time until then), every later reservation covers what was learnt. 4 processes x 8 threads
share one cap on the SQLite ledger and on Redis, with half the streams closed early, and with
Redis killed mid-run: settled spend <= cap, calls refused, nothing left reserved, and the log's
spend equal to the ledger's."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from servers import InstantUpstream, RedisServer

from blackbox_sdk import Budget, BudgetExceededError, CallLog, OpenAI, RateLimitExceededError, StoreUnavailableError
from blackbox_sdk._pipeline import _flows
from blackbox_sdk.budget import Ledger, RedisLedger, owed_usd, settle_owed

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # $1000 per million tokens: a call costs a few cents
QUESTION = [{"role": "user", "content": "Name a fruit."}]
SPAWN = multiprocessing.get_context("spawn")


def _answer(completion_tokens: int = 2) -> dict[str, Any]:
    """A chat answer "Apple." whose usage reports `completion_tokens`."""
    usage = {"prompt_tokens": 9, "completion_tokens": completion_tokens, "total_tokens": 9 + completion_tokens}
    return {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}]}


def _budget(ledger: str, cap: float) -> Budget:
    return Budget(total_usd=cap, prices=PRICES, ledger=ledger, estimate_margin=0.25)


def _spend_until_refused(client: OpenAI, stream_every: int, index: int, errors: list[str]) -> None:
    """Calls until the budget refuses; every `stream_every`-th call streams and stops reading early."""
    for attempt in range(40):
        try:
            if stream_every and (attempt + index) % stream_every == 0:
                stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, stream=True)
                next(iter(stream), None)
                stream.close()  # closed early: settled at what arrived
            else:
                client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16)
        except BudgetExceededError:
            return
        except StoreUnavailableError as error:
            errors.append(f"unavailable: {error}")
            time.sleep(0.2)
        except Exception as error:  # noqa: BLE001 - any other failure fails the test
            errors.append(repr(error))
            return


def _process(url: str, ledger: str, cap: float, log: str, stream_every: int, threads: int, out: Any) -> None:
    """One process of the fleet: its own client on the shared ledger and log, `threads` threads."""
    client = OpenAI(base_url=url, api_key="sk-test", budget=_budget(ledger, cap), log=log, max_retries=0)
    errors: list[str] = []
    workers = [threading.Thread(target=_spend_until_refused, args=(client, stream_every, i, errors)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    out.put(errors)


def _run_fleet(url: str, ledger: str, cap: float, log: Path, *, stream_every: int = 0, during: Any = None) -> list[str]:
    """4 processes x 8 threads spending one cap; their errors."""
    out = SPAWN.Queue()
    processes = [SPAWN.Process(target=_process, args=(url, ledger, cap, str(log), stream_every, 8, out)) for _ in range(4)]
    for process in processes:
        process.start()
    if during is not None:
        during()
    errors = [error for _ in processes for error in out.get(timeout=600)]
    for process in processes:
        process.join(timeout=60)
    return errors


def _check(ledger: str, cap: float, log: Path) -> None:
    """Spend within the cap, refusals happened, nothing held, the log's spend is the ledger's."""
    report = _budget(ledger, cap).report()
    records = list(CallLog(log).calls())
    assert report.spent_usd <= cap
    assert report.outstanding_reservations == 0 and report.reserved_usd == 0
    assert any("BudgetExceededError" in (r.error or "") for r in records)
    assert sum(r.cost_usd for r in records) == pytest.approx(report.spent_usd, abs=1e-9)


@pytest.fixture
def ledger(store_at: Callable[[str], str]) -> str:
    """Where the store lives: ledger.db in the test's folder, then a real redis-server."""
    return store_at("ledger.db")


def test_threads_sharing_a_cap_never_exceed_it_and_the_first_answer_calibrates(llama_server: str, tmp_path: Path) -> None:
    budget = _budget(str(tmp_path / "ledger.db"), 0.25)
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, log=tmp_path / "calls.db")
    refused = []
    real_gate = budget.calibration.open_gate
    budget.calibration.open_gate = lambda *a: refused.append(a) or real_gate(*a)  # type: ignore[method-assign]
    workers = [threading.Thread(target=_spend_until_refused, args=(client, 0, i, [])) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report = budget.report()
    assert report.spent_usd <= 0.25 and report.outstanding_reservations == 0
    first = next(r for r in CallLog(tmp_path / "calls.db").calls() if r.usage)
    overhead = budget.calibration.overhead(f"{client._core.endpoint}#chat.completions", MODEL)
    assert overhead is not None and overhead >= 15  # the hidden system prompt and template, learnt
    assert first.usage["prompt_tokens"] >= overhead
    assert len(refused) > 1  # the others waited at the gate while the first call calibrated


def test_a_fleet_sharing_one_cap_never_exceeds_it(llama_server: str, ledger: str, tmp_path: Path) -> None:
    errors = _run_fleet(llama_server, ledger, 0.5, tmp_path / "calls.db")
    assert errors == []
    _check(ledger, 0.5, tmp_path / "calls.db")


def test_streams_closed_early_in_half_the_calls_still_hold_the_cap(llama_server: str, ledger: str, tmp_path: Path) -> None:
    errors = _run_fleet(llama_server, ledger, 0.5, tmp_path / "calls.db", stream_every=2)
    assert errors == []
    _check(ledger, 0.5, tmp_path / "calls.db")


def test_redis_killed_mid_run_fails_closed_and_the_run_completes_after_restart(llama_server: str, tmp_path: Path) -> None:
    cap = 1.5  # some 30 calls: the fleet is still spending when Redis dies
    redis_server = RedisServer(options=("--appendonly", "yes", "--appendfsync", "always")).start()  # as docs/fleet.md asks

    def crash() -> None:
        """Kill Redis once the fleet has spent a little (not after a fixed time: machines differ)."""
        deadline = time.monotonic() + 300
        while _budget(redis_server.url, cap).report().spent_usd < 0.1 and time.monotonic() < deadline:
            time.sleep(0.05)
        redis_server.stop()
        time.sleep(2)
        redis_server.start()  # with its data (one without it is refused until reset: test_redis_ledger.py)

    try:
        errors = _run_fleet(llama_server, redis_server.url, cap, tmp_path / "calls.db", during=crash)
        assert all(error.startswith("unavailable") for error in errors)
        records = list(CallLog(tmp_path / "calls.db").calls())
        unbudgeted = [r for r in records if r.error is None and r.cost_usd == 0]
        assert unbudgeted == []  # every call that ran was charged; none ran while the ledger was down
        assert errors or any("StoreUnavailableError" in (r.error or "") for r in records)  # the outage was seen
        assert any("BudgetExceededError" in (r.error or "") for r in records)  # and the run went on to the cap
        report = _budget(redis_server.url, cap).report()
        assert report.outstanding_reservations == 0 and 0.1 <= report.spent_usd <= cap  # the spend before the kill was kept
    finally:
        redis_server.close()


def _settled_once_back(budget: Budget, redis_server: Any) -> float:
    """Restart the ledger's Redis (empty) and wait, bounded, for the owed charge to land on it; the spend it holds."""
    redis_server.start()
    deadline = time.monotonic() + 30
    while budget.report().spent_usd == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return budget.report().spent_usd


def test_a_ledger_lost_after_the_answer_returns_the_paid_answer_and_charges_it_once_back(
    redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = InstantUpstream(_answer(), before=redis_server.stop)  # the ledger dies while the call is out
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=redis_server.url)
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, cache=tmp_path / "cache", log=tmp_path / "calls.db", max_retries=0)
    budget.calibration.learn(f"{client._core.endpoint}#chat.completions", MODEL, 0, 0)  # calibrated: no gate in this test
    try:
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        assert answer.choices[0].message.content == "Apple." and answer.blackbox.cost_usd > 0
        assert "the charge is kept and settled when it can be" in caplog.text
        assert owed_usd() == pytest.approx(answer.blackbox.cost_usd)
        client._core.opts.log.flush()
        [record] = list(CallLog(tmp_path / "calls.db").calls())
        assert record.error is None and record.cost_usd == pytest.approx(answer.blackbox.cost_usd)
        assert _settled_once_back(budget, redis_server) == pytest.approx(answer.blackbox.cost_usd)  # charged once, late
        assert owed_usd() == 0 and settle_owed() == 0
        again = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # the paid answer, from the cache
        assert again.blackbox.cache_hit and budget.report().spent_usd == pytest.approx(answer.blackbox.cost_usd)
    finally:
        upstream.close()


def test_a_ledger_lost_after_an_embedding_keeps_the_paid_vectors_and_charges_them_once_back(redis_server: Any, tmp_path: Path) -> None:
    """As for chat: the vectors come back, are cached, and their charge lands when the ledger does."""
    vectors = {"object": "list", "model": MODEL, "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
               "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    upstream = InstantUpstream(vectors, before=redis_server.stop, route="/embeddings")  # the ledger dies while the call is out
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=redis_server.url)
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, cache=tmp_path / "cache", max_retries=0)
    budget.calibration.learn(f"{client._core.endpoint}#embeddings", MODEL, 0, 0)  # calibrated: no gate in this test
    try:
        assert client.embeddings.create(model=MODEL, input="a fruit").data[0].embedding == [0.25, -0.5]
        assert _settled_once_back(budget, redis_server) == pytest.approx(3 * 1000 / 1e6)
        again = client.embeddings.create(model=MODEL, input="a fruit")  # the paid vectors, from the cache
        assert again.blackbox.cache_hit and again.data[0].embedding == [0.25, -0.5]
    finally:
        upstream.close()


def _release_every_hold(ledger: str) -> None:
    """Release every reservation `ledger` holds through a store of its own, as another process would (an operator's clean-up)."""
    if ledger.startswith("redis://"):
        store: Ledger | RedisLedger = RedisLedger(ledger)
        ids = [key.decode().rsplit(":", 1)[1] for key in redis.Redis.from_url(ledger).scan_iter("blackbox:ledger:res:*")]
    else:
        store = Ledger(ledger)
        with sqlite3.connect(ledger) as raw:
            ids = [row[0] for row in raw.execute("SELECT id FROM reservations")]
    assert ids and all(store.release(held) for held in ids)
    store.close()


def test_a_paid_answer_whose_reservation_was_released_mid_call_is_returned_and_charged(
    ledger: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = InstantUpstream(_answer(), before=lambda: _release_every_hold(ledger))  # released while the call is out
    budget = _budget(ledger, 1.0)
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, log=tmp_path / "calls.db", max_retries=0)
    budget.calibration.learn(f"{client._core.endpoint}#chat.completions", MODEL, 0, 0)  # calibrated: no gate in this test
    try:
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
            answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    finally:
        upstream.close()
    assert answer.choices[0].message.content == "Apple." and answer.blackbox.cost_usd == pytest.approx(11 * 1000 / 1e6)
    report = budget.report()
    assert (report.calls, report.spent_usd, report.outstanding_reservations) == (1, pytest.approx(answer.blackbox.cost_usd), 0)
    [warning] = [record.getMessage() for record in caplog.records if "no longer held" in record.getMessage()]
    assert answer.blackbox.call_id in warning  # one warning, naming the call
    client._core.opts.log.flush()
    [record] = list(CallLog(tmp_path / "calls.db").calls())
    assert record.error is None and record.cost_usd == pytest.approx(answer.blackbox.cost_usd)


def test_usage_a_server_reports_that_cant_be_real_is_charged_at_the_worst_case(tmp_path: Path) -> None:
    upstream = InstantUpstream(_answer(completion_tokens=-1))
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, max_retries=0)
    try:
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        report = budget.report()
        assert answer.blackbox.cost_usd > 0 and report.spent_usd == pytest.approx(answer.blackbox.cost_usd)
        assert report.outstanding_reservations == 0  # settled, not left held until its lease lapses
    finally:
        upstream.close()


def test_credentials_in_the_base_url_stay_out_of_the_ledger_and_the_calibration_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_url = "https://svc:gw-pass-12345@gateway.example/v1?key=gw-query-secret-6789"
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(200, json=_answer())))
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = OpenAI(base_url=base_url, api_key="sk-test", budget=budget, http_client=http, max_retries=0)
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # calibrates the endpoint
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("ledger.db*"))
    assert b"gateway.example" in stored and b"gw-pass-12345" not in stored and b"gw-query-secret-6789" not in stored
    other = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "other.db")
    waiting = OpenAI(base_url=base_url, api_key="sk-test", budget=other, http_client=http, max_retries=0)
    other.calibration.open_gate("https://gateway.example/v1/#chat.completions", MODEL, "another-process")  # it calibrates
    monkeypatch.setattr(_flows, "CALIBRATION_WAIT_S", 0.0)
    with pytest.raises(RateLimitExceededError) as refused:
        waiting.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert refused.value.scope == "calibration" and "https://gateway.example/v1/ is not calibrated" in str(refused.value)
    assert "gw-pass-12345" not in str(refused.value) and "gw-query-secret-6789" not in str(refused.value)
