"""A beam-searched call (`beam=...` with a reranker) that fails or is cancelled: each step call is
logged on its own, and the whole call once more, with its error and what its steps spent (the
failing step's charge included, and their usage; its own cost 0, so the log's spend is the ledger's), as for any other call; cancelling an async one ends it at once
without blocking the event loop. A real HTTP server on a loopback port; real SQLite stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import send_json
from test_async_cancel import MODEL, PRICES, SLOW_S, SlowServer, Stores, ask, cancelled, until

from blackbox_sdk import Budget, BudgetExceededError, CallLog

BEAM = {"beam": 1, "candidates": 2, "max_steps": 3, "answer_marker": None}


def by_length(question: str, answers: Sequence[str]) -> list[float]:
    """Prefers longer prefixes."""
    return [float(len(answer)) for answer in answers]


@pytest.fixture
def second_step_slow() -> Iterator[SlowServer]:
    """A server whose second request (the beam's second step) is slow."""
    running = SlowServer(lambda body, index: SLOW_S if index == 1 else 0.0)
    yield running
    running.close()


def whole_and_steps(log: CallLog) -> tuple[tuple[str | None, float], list[tuple[str | None, float]]]:
    """(error, cost) of the beam call, logged last, and of each step call before it; the beam call's record holds cost 0
    and what its steps spent under `steps_cost_usd` (each step's record holds its own charge), so that the log's spend,
    summed, is the ledger's."""
    log.flush()
    *steps, whole = sorted(log.calls(), key=lambda r: r.created)
    assert whole.cost_usd == 0.0 and log.stats()["cost_usd"] == pytest.approx(sum(step.cost_usd for step in steps))
    return (whole.error and whole.error.split(":")[0], whole.extra["steps_cost_usd"]), [(r.error and r.error.split(":")[0], r.cost_usd) for r in steps]


async def test_a_beam_call_cancelled_during_a_step_ends_at_once_and_is_logged_once(second_step_slow: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, second_step_slow.url, reranker=by_length, beam=BEAM)
    sdk = stores.client()
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("beam"), max_tokens=50))
    await until(lambda: len(second_step_slow.bodies) == 2)
    await asyncio.sleep(0.1)  # the second step's request is out
    started = time.monotonic()
    await asyncio.wait_for(cancelled(task), 2.0)  # the loop was blocked for good before
    assert time.monotonic() - started < 1.0
    whole, steps = whole_and_steps(stores.log)
    assert [error for error, _ in steps] == [None, "CancelledError"] and all(cost > 0 for _, cost in steps)
    assert whole == ("CancelledError", pytest.approx(sum(cost for _, cost in steps)))
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0) and spent == pytest.approx(whole[1])
    await asyncio.sleep(0.3)
    assert len(second_step_slow.bodies) == 2  # no step after the cancel


@pytest.mark.parametrize("client", ["sync", "async"])
async def test_a_beam_call_whose_scorer_fails_is_logged_once_with_what_its_steps_spent(tmp_path: Path, client: str) -> None:
    scored: list[int] = []

    def failing_second_time(question: str, answers: Sequence[str]) -> list[float]:
        scored.append(len(answers))
        if len(scored) == 2:
            raise ValueError("the scorer broke")
        return by_length(question, answers)

    fast = SlowServer(lambda body, index: 0.0)
    try:
        stores = Stores(tmp_path, fast.url, reranker=failing_second_time, beam=BEAM)
        with pytest.raises(ValueError, match="the scorer broke"):
            if client == "sync":
                stores.sync_client().chat.completions.create(model=MODEL, messages=ask("beam"), max_tokens=50)
            else:
                await stores.client().chat.completions.create(model=MODEL, messages=ask("beam"), max_tokens=50)
        whole, steps = whole_and_steps(stores.log)
        assert [error for error, _ in steps] == [None, None]  # both steps answered; the search failed scoring the second
        assert whole == ("ValueError", pytest.approx(sum(cost for _, cost in steps)))
        assert stores.held() == (0, 0.0, pytest.approx(whole[1]))
        *step_records, record = sorted(stores.log.calls(), key=lambda r: r.created)
        assert [step.usage["total_tokens"] for step in step_records] == [15, 15]
        assert record.usage == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}  # the steps' usage, as a search that ends has
    finally:
        fast.close()


def test_a_beam_call_that_ends_is_logged_so_that_the_logs_spend_is_the_ledgers(tmp_path: Path) -> None:
    fast = SlowServer(lambda body, index: 0.0)
    try:
        stores = Stores(tmp_path, fast.url, reranker=by_length, beam=BEAM)
        answer = stores.sync_client().chat.completions.create(model=MODEL, messages=ask("beam"), max_tokens=50)
        whole, steps = whole_and_steps(stores.log)  # the whole call's own cost is 0: its steps hold the charges
        assert whole == (None, pytest.approx(answer.blackbox.cost_usd)) and answer.blackbox.cost_usd > 0
        assert stores.held() == (0, 0.0, pytest.approx(sum(cost for _, cost in steps)))
    finally:
        fast.close()


class _FullUsage(BaseHTTPRequestHandler):
    """Answers each step with as much as it may: its `n` choices, each at the step's `max_tokens`, on a 60-token prompt."""

    def do_POST(self) -> None:  # http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if not self.path.endswith("/chat/completions"):  # no tokenize route
            self.send_error(404)
            return
        n, cap = int(body.get("n") or 1), int(body.get("max_tokens") or body.get("max_completion_tokens"))
        usage = {"prompt_tokens": 60, "completion_tokens": cap * n, "total_tokens": 60 + cap * n}
        send_json(self, {"id": "x", "object": "chat.completion", "created": 1, "model": MODEL, "usage": usage, "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"step answer {i}"}, "finish_reason": "stop"} for i in range(n)]})

    def log_message(self, *args: object) -> None:
        """Quiet."""


def test_per_call_usd_bounds_a_beam_calls_steps_together(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FullUsage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # a step costs about $0.00026 (60 prompt tokens, 2 x 50 output at $1 and $2 per million): one fits $0.0004, three don't
        stores = Stores(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/v1", reranker=by_length, beam=BEAM)
        stores.options["budget"] = stores.budget = Budget(total_usd=1.0, per_call_usd=0.0004, prices=PRICES, ledger=tmp_path / "capped.db")
        with contextlib.suppress(BudgetExceededError):  # refused, or shrunk to fit: either way the whole search stays under the cap
            stores.sync_client().chat.completions.create(model=MODEL, messages=ask("beam"), max_tokens=50)
        outstanding, reserved, spent = stores.held()
        assert (outstanding, reserved) == (0, 0.0) and 0.00026 <= spent <= 0.0004
    finally:
        server.shutdown()
        server.server_close()
