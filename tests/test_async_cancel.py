"""An `AsyncOpenAI` call cancelled (`asyncio.wait_for`, a web framework dropping a request whose
client went away) or a stream left early, wherever it waits: its request out, single flight, a
rate-limit slot, the calibration gate, K reranked requests gathered, a stream mid-read. Whatever the
point, CancelledError goes on as it came, nothing stays reserved, what was sent is charged (the
server has the prompt), no claim keeps identical requests waiting, nothing partial is cached, and
the call has exactly one log record. The sync client interrupted (Ctrl-C) at the same points does
the same.

The server is a real HTTP server on a loopback port that answers as slowly as each test needs; the
ledger, cache and call log are the real SQLite ones in the test's folder.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI, RateLimitExceededError, RateLimits
from blackbox_sdk._pipeline import _flows

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}  # USD per million tokens
ANSWER_USD = (10 * 1.0 + 5 * 2.0) / 1e6  # one answer's usage: 10 prompt and 5 completion tokens
SLOW_S = 3.0  # a slow answer: far longer than any test waits for it


def ask(text: str) -> list[dict[str, str]]:
    """One user message."""
    return [{"role": "user", "content": text}]


class SlowServer:
    """An OpenAI-compatible endpoint: each request waits `delay(body, index)` seconds before its answer
    (a stream: before each chunk); `one_choice` answers one choice whatever `n` (as llama.cpp does)."""

    def __init__(self, delay: Callable[[dict[str, Any], int], float], one_choice: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                with server.lock:
                    index = len(server.bodies)
                    server.bodies.append(body)
                try:
                    server.answer(self, body, delay(body, index), 1 if one_choice else int(body.get("n") or 1))
                except OSError:
                    pass  # the client went away

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, body: dict[str, Any], delay: float, choices: int) -> None:
        """A whole answer after `delay`, or a stream of three chunks, each after `delay`."""
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            time.sleep(delay)
            data = json.dumps({
                "id": "x", "object": "chat.completion", "created": 1, "model": MODEL, "usage": usage,
                "choices": [{"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"} for i in range(choices)],
            }).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        SlowServer.stream_chunks(handler, delay)
        handler.wfile.write(b"data: [DONE]\n\n")

    @staticmethod
    def stream_chunks(handler: BaseHTTPRequestHandler, delay: float) -> None:
        """A stream's head and its three chunks, each after `delay` (no usage, no [DONE])."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for text, reason in (("one", None), (" two", None), (" three", "stop")):
            time.sleep(delay)
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": reason}]}
            handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            handler.wfile.flush()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def slow_when_asked(body: dict[str, Any], index: int) -> float:
    """SLOW_S for a message that says "slow", 0.4 s for "streaming", else at once."""
    text = body["messages"][-1]["content"]
    return SLOW_S if "slow" in text else 0.4 if "streaming" in text else 0.0


@pytest.fixture
def server() -> Iterator[SlowServer]:
    """A server slow for the messages that ask it to be."""
    running = SlowServer(slow_when_asked)
    yield running
    running.close()


class Stores:
    """A test's ledger, cache and call log (SQLite, in its folder) and the clients on them."""

    def __init__(self, tmp_path: Path, url: str, **options: Any) -> None:
        self.budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
        self.log = CallLog(tmp_path / "calls.db")
        self.options = {"base_url": url, "api_key": "sk-test", "max_retries": 0, "budget": self.budget,
                        "cache": str(tmp_path / "cache"), "log": self.log, **options}

    def client(self, **options: Any) -> AsyncOpenAI:
        """An async client on the stores."""
        return AsyncOpenAI(**{**self.options, **options})

    def sync_client(self, **options: Any) -> OpenAI:
        """A sync client on the stores."""
        return OpenAI(**{**self.options, **options})

    def held(self) -> tuple[int, float, float]:
        """Reservations outstanding, USD reserved, USD spent."""
        report = self.budget.report()
        return report.outstanding_reservations, report.reserved_usd, report.spent_usd

    def errors(self) -> list[str | None]:
        """Each logged call's error (None for a call that succeeded), oldest first."""
        self.log.flush()
        return [record.error for record in sorted(self.log.calls(), key=lambda r: r.created)]

    def cost_of(self, error: str) -> float:
        """The logged cost of the one call that failed with `error`."""
        self.log.flush()
        [record] = [r for r in self.log.calls() if r.error and r.error.startswith(error)]
        return record.cost_usd


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (on the loop) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel the task and check that CancelledError, and nothing else, comes out of it."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_call_cancelled_while_its_request_is_out_is_charged_its_prompt_and_logged_once(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)  # calibrates the endpoint
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50))
    await until(lambda: len(server.bodies) == 2)  # the server has the request
    await asyncio.sleep(0.1)
    await cancelled(task)
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0)
    assert spent > ANSWER_USD  # the answer before, and the prompt the server was sent
    assert stores.errors()[1].startswith("CancelledError") and len(stores.errors()) == 2
    assert stores.cost_of("CancelledError") > 0
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):  # no claim left: the same request is sent again at once, not served from a cache
        await asyncio.wait_for(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50), 0.5)
    assert time.monotonic() - started < 1.5 and len(server.bodies) == 3
    assert stores.held()[:2] == (0, 0.0)


def test_a_sync_call_interrupted_while_its_request_is_out_is_charged_its_prompt_and_logged_once(server: SlowServer, tmp_path: Path) -> None:
    """Ctrl-C once the server has the request (here: as its answer comes)."""

    def interrupt(response: httpx2.Response) -> None:
        if "interrupt" in response.request.content.decode():
            raise KeyboardInterrupt

    stores = Stores(tmp_path, server.url)
    sdk = stores.sync_client(http_client=httpx2.Client(event_hooks={"response": [interrupt]}))
    sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    with pytest.raises(KeyboardInterrupt):
        sdk.chat.completions.create(model=MODEL, messages=ask("interrupt"), max_tokens=50)
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0) and spent > ANSWER_USD
    assert stores.errors()[1].startswith("KeyboardInterrupt") and len(stores.errors()) == 2


async def test_a_cancelled_request_the_server_has_still_counts_in_the_rate_window(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url, rate_limit=RateLimits(rpm=1))
    sdk = stores.client()
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50))
    await until(lambda: len(server.bodies) == 1)
    await cancelled(task)
    with pytest.raises(RateLimitExceededError):  # the request was sent: its slot is used, not given back
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    assert len(server.bodies) == 1 and stores.held()[:2] == (0, 0.0)


async def test_a_call_cancelled_while_it_waits_on_single_flight_is_logged_and_the_winner_goes_on(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    winner = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50))
    await until(lambda: len(server.bodies) == 2)
    waiter = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50))
    await asyncio.sleep(0.3)  # waiting on the winner's answer
    await cancelled(waiter)
    assert stores.errors()[-1].startswith("CancelledError") and len(stores.errors()) == 2
    assert stores.held()[0] == 1  # the winner's own hold, only
    assert (await winner).choices[0].message.content == "answer 0"
    assert stores.held()[:2] == (0, 0.0) and len(server.bodies) == 2


@pytest.mark.parametrize("count", [1, 6])
async def test_waiters_left_by_a_cancelled_single_flight_winner_send_it_once_more_not_each(tmp_path: Path, count: int) -> None:
    """The waiters go at once, not after the 60 s single-flight wait: one of them sends the request again, the others
    have its answer."""
    first_slow = SlowServer(lambda body, index: SLOW_S if index == 1 else 0.0)
    try:
        stores = Stores(tmp_path, first_slow.url)
        sdk = stores.client()
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
        winner = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("again"), max_tokens=50))
        await until(lambda: len(first_slow.bodies) == 2)
        waiters = [asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("again"), max_tokens=50)) for _ in range(count)]
        await asyncio.sleep(0.3)  # all waiting on the winner's claim (one not yet waiting would change nothing asserted)
        await cancelled(winner)
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 10.0)  # not the 60 s single-flight wait
        assert [a.choices[0].message.content for a in answers] == ["answer 0"] * count
        assert len(first_slow.bodies) == 3  # one of them sent it again; the others had its answer
        assert sum(a.blackbox.cache_hit for a in answers) == count - 1 and stores.held()[:2] == (0, 0.0)
        assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError"] + [None] * count
    finally:
        first_slow.close()


async def test_a_call_cancelled_while_it_waits_for_a_rate_limit_slot_holds_nothing(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url, rate_limit=RateLimits(rpm=1, policy="wait", max_wait_s=120))
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    waiting = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("more"), max_tokens=50))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await cancelled(waiting)
    assert time.monotonic() - started < 1.0
    assert len(server.bodies) == 1 and stores.held()[:2] == (0, 0.0)
    assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError"]


async def test_calls_cancelled_at_the_calibration_gate_or_holding_it_leave_it_open(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    holder = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50))
    await until(lambda: len(server.bodies) == 1)  # the first call to the endpoint holds its gate
    queued = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50))
    await asyncio.sleep(0.3)
    await cancelled(queued)
    assert len(server.bodies) == 1 and stores.held()[0] == 1
    await cancelled(holder)
    started = time.monotonic()
    got = await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)  # the gate is free: not 120 s
    assert got.choices[0].message.content == "answer 0" and time.monotonic() - started < 2.0
    assert stores.held()[:2] == (0, 0.0)
    assert [e and e.split(":")[0] for e in stores.errors()] == ["CancelledError", "CancelledError", None]


async def test_reranked_requests_gathered_are_all_cancelled_and_what_they_sent_is_charged(tmp_path: Path) -> None:
    """The server ignores n: the first request's one answer arrives, the three more requests are cancelled while out."""
    fan_out = SlowServer(lambda body, index: SLOW_S if index > 1 else 0.0, one_choice=True)
    try:
        stores = Stores(tmp_path, fan_out.url, reranker=lambda question, answers: [float(len(a)) for a in answers], rerank_n=4)
        sdk = stores.client()
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)  # calibrates
        spent_before = stores.held()[2]
        task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50))
        await until(lambda: len(fan_out.bodies) == 5)
        await asyncio.sleep(0.1)
        await cancelled(task)
        assert not [t for t in asyncio.all_tasks() if "_outcome" in repr(t.get_coro())]  # no sibling request left running
        outstanding, reserved, spent = stores.held()
        assert (outstanding, reserved) == (0, 0.0)
        assert spent - spent_before > ANSWER_USD  # the answer that arrived, and the prompts of the three cancelled
        assert stores.cost_of("CancelledError") == pytest.approx(spent - spent_before)
        await asyncio.sleep(0.3)
        assert len(fan_out.bodies) == 5  # nothing retried
    finally:
        fan_out.close()


async def test_a_stream_cancelled_before_its_first_chunk_is_charged_its_prompt(server: SlowServer, tmp_path: Path) -> None:
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("slow"), max_tokens=50, stream=True))
    await until(lambda: len(server.bodies) == 2)
    await cancelled(task)
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0) and spent > ANSWER_USD
    assert stores.errors()[-1].startswith("CancelledError") and len(stores.errors()) == 2


@pytest.mark.parametrize("how", ["cancel", "close", "drop"])
async def test_a_stream_left_mid_read_is_charged_not_cached_and_logged_once(server: SlowServer, tmp_path: Path, how: str) -> None:
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    stream = await sdk.chat.completions.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True)
    first = await anext(aiter(stream))
    assert first.choices[0].delta.content == "one"
    if how == "cancel":
        reading = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.1)  # waiting for the next chunk
        await cancelled(reading)
    elif how == "close":
        await stream.close()
    else:
        del stream
    await until(lambda: gc.collect() >= 0 and stores.held()[0] == 0)  # a dropped stream: the loop closes its generator once collected
    outstanding, reserved, spent = stores.held()
    assert reserved == 0.0 and spent > ANSWER_USD
    expected = "CancelledError" if how == "cancel" else "RuntimeError: stream closed before its end"
    assert stores.errors()[-1].startswith(expected) and len(stores.errors()) == 2
    again = await sdk.chat.completions.create(model=MODEL, messages=ask("streaming"), max_tokens=50)
    assert not again.blackbox.cache_hit and len(server.bodies) == 3


async def test_a_call_cancelled_between_adaptive_rounds_is_logged_once_with_its_paid_round(server: SlowServer, tmp_path: Path) -> None:
    """Cancelled while the reranker scores the first round (in a worker thread, which runs on to its end)."""
    scoring = threading.Event()

    def reranker(question: str, answers: list[str]) -> list[float]:
        scoring.set()
        time.sleep(0.5)
        return [1.0] * len(answers)  # no clear pick: another round would follow

    stores = Stores(tmp_path, server.url, reranker=reranker, rerank_n=8, rerank_confidence=0.99)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50))
    await until(scoring.is_set)
    await cancelled(task)
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0) and spent == pytest.approx(2 * ANSWER_USD)  # the first round is paid
    assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError"]
    assert stores.cost_of("CancelledError") == pytest.approx(ANSWER_USD)


def dropped_costs(stores: Stores) -> list[float]:
    """The logged cost of each stream dropped before its end, oldest first."""
    stores.log.flush()
    records = sorted(stores.log.calls(), key=lambda r: r.created)
    return [r.cost_usd for r in records if r.error == "RuntimeError: stream closed before its end"]


async def test_streams_dropped_mid_read_close_quietly_charged_and_logged_once(server: SlowServer, tmp_path: Path) -> None:
    """Nothing keeps a dropped stream alive (its HTTP response holds it weakly): the loop closes its
    generator once, and no "Task exception was never retrieved" reaches the loop's exception handler."""
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    gc.collect()  # what earlier tests left on this session's loop is freed before the handler: only these drops are judged
    loop, problems = asyncio.get_running_loop(), []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: problems.append(context["message"]))
    try:
        for _ in range(4):  # the noise came from the collection's order of finalizers: most drops showed it
            stream = await sdk.chat.completions.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True)
            assert (await anext(stream)).choices[0].delta.content == "one"
            del stream
            gc.collect()
            await until(lambda: stores.held()[0] == 0)
            await asyncio.sleep(0.2)  # the loop runs what the collection scheduled
    finally:
        loop.set_exception_handler(previous)
    assert problems == []
    outstanding, reserved, spent = stores.held()
    assert (outstanding, reserved) == (0, 0.0)
    assert stores.errors() == [None] + ["RuntimeError: stream closed before its end"] * 4
    costs = dropped_costs(stores)
    assert all(cost > 0 for cost in costs) and sum(costs) == pytest.approx(spent - ANSWER_USD)


def test_a_sync_stream_dropped_mid_read_is_accounted_at_once_and_quietly(server: SlowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No garbage collection needed: the dropped stream is freed, its iterator closed and accounted, as `del` returns."""
    stores = Stores(tmp_path, server.url)
    sdk = stores.sync_client()
    sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    unraisable: list[str] = []
    gc.collect()  # what earlier tests left unclosed is freed before the hook: only this stream is judged
    monkeypatch.setattr(sys, "unraisablehook", lambda raised: unraisable.append(repr(raised.exc_value)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = sdk.chat.completions.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True)
        assert next(stream).choices[0].delta.content == "one"
        gc.disable()
        try:
            del stream
            outstanding, reserved, spent = stores.held()
        finally:
            gc.enable()
        gc.collect()
    assert (outstanding, reserved) == (0, 0.0) and spent > ANSWER_USD
    assert stores.errors() == [None, "RuntimeError: stream closed before its end"]
    assert dropped_costs(stores) == [pytest.approx(spent - ANSWER_USD)]
    assert not caught and not unraisable


async def test_a_call_cancelled_while_its_rate_limit_slot_is_being_taken_gives_the_slot_back(server: SlowServer, tmp_path: Path) -> None:
    """The SQLite window's admission waits in a worker thread for a lock another process holds: the
    cancel waits for it to end, then the slot it took is released (it stayed counted for a window before)."""
    window = tmp_path / "rate.db"
    stores = Stores(tmp_path, server.url, rate_limit=RateLimits(rpm=2, store=window))
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)  # the first of two slots; the window's file is open
    other = sqlite3.connect(window, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing the window
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("more"), max_tokens=50))
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.sleep(0.2)
    other.execute("COMMIT")  # the admission goes through now
    other.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)
    got = await sdk.chat.completions.create(model=MODEL, messages=ask("again"), max_tokens=50)  # the second slot is free
    assert got.choices[0].message.content == "answer 0"
    assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError", None]
    assert len(server.bodies) == 2 and stores.held()[:2] == (0, 0.0)


async def test_a_call_cancelled_during_a_later_adaptive_rounds_request_is_charged_both_rounds_and_logged_once(tmp_path: Path) -> None:
    """The first round answers; the second round's request is out (slow) when the cancel comes."""
    second_round_slow = SlowServer(lambda body, index: SLOW_S if index == 2 else 0.0)
    try:
        stores = Stores(tmp_path, second_round_slow.url, reranker=lambda question, answers: [1.0] * len(answers), rerank_n=8, rerank_confidence=0.99)
        sdk = stores.client()
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)  # calibrates: prompts count 10 tokens
        task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50))
        await until(lambda: len(second_round_slow.bodies) == 3)
        await asyncio.sleep(0.1)
        await cancelled(task)
        assert [body.get("n", 1) for body in second_round_slow.bodies[1:]] == [1, 1]  # round 1: 1 answer; round 2: 1 more
        outstanding, reserved, spent = stores.held()
        assert (outstanding, reserved) == (0, 0.0)
        assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError"]
        cost = stores.cost_of("CancelledError")
        assert spent == pytest.approx(ANSWER_USD + cost)  # the ledger holds what the one record says
        # beyond round 1's settled answer, round 2's request at its worst (the server bills it answered or not):
        # its 1 choice's 50 output tokens at $2 per million, and its prompt as reserved at $1 per million
        prompt_tokens = (cost - ANSWER_USD) * 1e6 - 1 * 50 * 2.0
        assert prompt_tokens == pytest.approx(round(prompt_tokens)) and 10 <= round(prompt_tokens) <= 20
    finally:
        second_round_slow.close()


class FailingLate(SlowServer):
    """A SlowServer whose answers to the requests `held_until_released` held are 500s (retried, were they the call's)."""

    late = threading.local()

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, body: dict[str, Any], delay: float, choices: int) -> None:
        if getattr(FailingLate.late, "held", False):
            handler.send_error(500)
            return
        SlowServer.answer(handler, body, delay, choices)


@pytest.mark.parametrize("server_class", [pytest.param(SlowServer, id="answered-late"), pytest.param(FailingLate, id="failing-late")])
def test_a_sync_fan_out_interrupted_surfaces_at_once_charging_what_was_sent(tmp_path: Path, server_class: type[SlowServer]) -> None:
    """The server ignores n: the first request's one answer arrives, Ctrl-C comes while the three more are out.
    The interrupt surfaces before they are answered (not after), and what they get later (an answer, or a 500
    the policy would retry) changes nothing: nothing more charged, logged or sent."""
    release, answered_late = threading.Event(), []

    def held_until_released(body: dict[str, Any], index: int) -> float:
        FailingLate.late.held = index > 1
        if index > 1:
            release.wait(10)  # the test releases them once the interrupt surfaced (unreleased: answered after 10 s)
            answered_late.append(index)
        return 0.0

    fan_out = server_class(held_until_released, one_choice=True)
    try:
        stores = Stores(tmp_path, fan_out.url, reranker=lambda question, answers: [float(len(a)) for a in answers], rerank_n=4)
        sdk = stores.sync_client(max_retries=2)
        sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)  # calibrates
        spent_before = stores.held()[2]
        main = threading.main_thread().ident
        assert main is not None

        def interrupt_once_all_are_out() -> None:
            while len(fan_out.bodies) < 5:
                time.sleep(0.01)
            time.sleep(0.1)
            signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C

        gc.collect()  # no collection while the interrupt is due: raised inside a finalizer, Python would only print it
        gc.disable()
        try:
            threading.Thread(target=interrupt_once_all_are_out, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50)
        finally:
            gc.enable()
        assert answered_late == []  # surfaced while the three were still out, not after their answers
        outstanding, reserved, spent = stores.held()
        assert (outstanding, reserved) == (0, 0.0)
        assert spent - spent_before >= ANSWER_USD + 3 * 50 * 2.0 / 1e6  # the answer that arrived, the three out at their worst case
        assert stores.cost_of("KeyboardInterrupt") == pytest.approx(spent - spent_before)
        release.set()
        for thread in [t for t in threading.enumerate() if t.name.startswith("blackbox-fan-out")]:
            thread.join(10)  # each ends once its request's retry loop does
        assert sorted(answered_late) == [2, 3, 4] and len(fan_out.bodies) == 5  # answered late, nothing retried
        assert stores.held() == (0, 0.0, spent) and len(stores.errors()) == 2  # the late answers charged and logged nothing more
    finally:
        release.set()
        fan_out.close()


class ReportingServer(SlowServer):
    """A SlowServer whose streams end with a usage chunk (10 prompt tokens, 3 completion), as vLLM's and OpenAI's do."""

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, body: dict[str, Any], delay: float, choices: int) -> None:
        if not body.get("stream"):
            SlowServer.answer(handler, body, delay, choices)
            return
        SlowServer.stream_chunks(handler, delay)
        usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        final = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [], "usage": usage}
        handler.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")


def second_stream_slow(body: dict[str, Any], index: int) -> float:
    """Request 2 (the second stream of an n=2 call on a server that ignores n) waits before each chunk."""
    return SLOW_S if index == 2 else 0.0


@pytest.mark.parametrize("server_class", [pytest.param(SlowServer, id="counted"), pytest.param(ReportingServer, id="reported")])
async def test_a_stream_cancelled_while_its_later_request_is_out_is_charged_that_prompt(tmp_path: Path, server_class: type[SlowServer]) -> None:
    """The server ignores n: the first stream is read whole, and the cancel comes while the second stream's request is out."""
    ignoring_n = server_class(second_stream_slow, one_choice=True)
    try:
        stores = Stores(tmp_path, ignoring_n.url)
        sdk = stores.client()
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)  # calibrates: a prompt counts 10 tokens
        stream = await sdk.chat.completions.create(model=MODEL, messages=ask("two"), max_tokens=50, stream=True, n=2)
        reading = asyncio.create_task(asyncio.wait_for(_read_all(stream), 30))
        await until(lambda: len(ignoring_n.bodies) == 3)
        await asyncio.sleep(0.2)
        await cancelled(reading)
        assert stores.held()[:2] == (0, 0.0)
        stores.log.flush()
        [record] = [r for r in stores.log.calls() if r.error]
        assert record.error.startswith("CancelledError")
        assert record.usage["prompt_tokens"] >= 16  # both requests' prompts (8 counted, or 10 reported): the server bills the second
    finally:
        ignoring_n.close()


async def test_a_later_stream_cut_mid_read_is_charged_its_prompt_and_text_beside_the_usage_reported(tmp_path: Path) -> None:
    """The server ignores n and reports each stream's usage at its end: the second stream, cancelled after its first
    chunk, has reported none, so what it was sent and what came of it are counted beside the first stream's usage."""
    ignoring_n = ReportingServer(lambda body, index: 0.4 if index == 2 else 0.0, one_choice=True)
    try:
        stores = Stores(tmp_path, ignoring_n.url)
        sdk = stores.client()
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
        stream = await sdk.chat.completions.create(model=MODEL, messages=ask("two"), max_tokens=50, stream=True, n=2)
        seen = [await anext(stream) for _ in range(4)]  # the first stream's three, the second's first
        assert seen[-1].choices[0].index == 1
        reading = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.1)  # waiting for the second stream's next chunk
        await cancelled(reading)
        assert stores.held()[:2] == (0, 0.0)
        stores.log.flush()
        [record] = [r for r in stores.log.calls() if r.error]
        assert record.usage["prompt_tokens"] >= 18 and record.usage["completion_tokens"] >= 4  # 10 + 3 reported, and the rest
    finally:
        ignoring_n.close()


async def _read_all(stream: Any) -> list[Any]:
    """Every chunk of a stream."""
    return [chunk async for chunk in stream]


def test_a_sync_stream_interrupted_while_its_later_request_is_out_is_charged_that_prompt(tmp_path: Path) -> None:
    """Ctrl-C as the second stream's answer comes (the server ignores n): the server has that request and bills its prompt."""
    ignoring_n = ReportingServer(lambda body, index: 0.0, one_choice=True)
    responses = []

    def interrupt(response: httpx2.Response) -> None:
        responses.append(response)
        if len(responses) == 3:
            raise KeyboardInterrupt

    try:
        stores = Stores(tmp_path, ignoring_n.url)
        sdk = stores.sync_client(http_client=httpx2.Client(event_hooks={"response": [interrupt]}))
        sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
        stream = sdk.chat.completions.create(model=MODEL, messages=ask("two"), max_tokens=50, stream=True, n=2)
        with pytest.raises(KeyboardInterrupt):
            list(stream)
        assert stores.held()[:2] == (0, 0.0)
        stores.log.flush()
        [record] = [r for r in stores.log.calls() if r.error]
        assert record.error.startswith("KeyboardInterrupt") and record.usage["prompt_tokens"] >= 16
    finally:
        ignoring_n.close()


def test_a_stream_half_read_when_its_event_loop_ends_is_accounted_once_and_quietly(server: SlowServer, tmp_path: Path) -> None:
    """`asyncio.run` ending with a stream half-read (left by `break`, still referenced): the loop closes its generators,
    the HTTP body's before the SDK's; the stream is charged and logged once, and the loop reports no error closing them."""
    stores = Stores(tmp_path, server.url)
    sdk = stores.client()
    kept: list[Any] = []
    problems: list[str] = []

    async def half_read() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: problems.append(context["message"]))
        await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
        stream = await sdk.chat.completions.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True)
        async for _ in stream:
            break
        kept.append(stream)

    asyncio.run(half_read())
    assert problems == []
    assert stores.held()[:2] == (0, 0.0)
    assert stores.errors() == [None, "RuntimeError: stream closed before its end"]


def scores_slowly(started: threading.Event) -> Callable[[str, list[str]], list[float]]:
    """A reranker that takes 0.5 s to score (the call's last step, once its answers are paid)."""

    def reranker(question: str, answers: list[str]) -> list[float]:
        started.set()
        time.sleep(0.5)
        return [float(i) for i in range(len(answers))]

    return reranker


async def test_a_call_cancelled_in_its_last_step_is_logged_with_the_cancel_and_charged_once(server: SlowServer, tmp_path: Path) -> None:
    """Cancelled while the reranker picks among its paid answers (the step runs on to its end in a worker thread)."""
    scoring = threading.Event()
    stores = Stores(tmp_path, server.url, reranker=scores_slowly(scoring), rerank_n=2)
    sdk = stores.client()
    await sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)
    task = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50))
    await until(scoring.is_set)
    await cancelled(task)
    assert [e and e.split(":")[0] for e in stores.errors()] == [None, "CancelledError"]
    assert stores.held() == (0, 0.0, pytest.approx(2 * ANSWER_USD)) and stores.cost_of("CancelledError") == pytest.approx(ANSWER_USD)


def test_a_sync_call_interrupted_in_its_last_step_is_logged_with_the_interrupt_and_charged_once(server: SlowServer, tmp_path: Path) -> None:
    """Ctrl-C while the reranker picks among its paid answers."""

    def reranker(question: str, answers: list[str]) -> list[float]:
        raise KeyboardInterrupt

    stores = Stores(tmp_path, server.url, reranker=reranker, rerank_n=2)
    sdk = stores.sync_client()
    sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50, reranker=None)
    with pytest.raises(KeyboardInterrupt):
        sdk.chat.completions.create(model=MODEL, messages=ask("pick"), max_tokens=50)
    assert [e and e.split(":")[0] for e in stores.errors()] == [None, "KeyboardInterrupt"]
    assert stores.held() == (0, 0.0, pytest.approx(2 * ANSWER_USD)) and stores.cost_of("KeyboardInterrupt") == pytest.approx(ANSWER_USD)


def test_a_streaming_view_left_by_an_error_is_logged_as_closed_before_its_end(server: SlowServer, tmp_path: Path) -> None:
    """`with_streaming_response` left by the caller's own error mid-read: charged its worst case, logged as a
    stream closed early (sync and async alike); one read to its end first, then left by an error, is not."""
    stores = Stores(tmp_path, server.url)
    sdk, asdk = stores.sync_client(), stores.client()
    sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    with pytest.raises(ValueError), sdk.chat.completions.with_streaming_response.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True) as response:
        next(response.iter_lines())
        raise ValueError("the caller's own")

    async def main() -> None:
        with pytest.raises(ValueError):
            async with asdk.chat.completions.with_streaming_response.create(model=MODEL, messages=ask("streaming"), max_tokens=50, stream=True) as aresponse:
                await aresponse.iter_lines().__anext__()
                raise ValueError("the caller's own")
        with pytest.raises(ValueError):
            async with asdk.chat.completions.with_streaming_response.create(model=MODEL, messages=ask("read"), max_tokens=50) as aresponse:
                await aresponse.parse()
                raise ValueError("the caller's own")

    asyncio.run(main())
    assert stores.errors() == [None, "RuntimeError: stream closed before its end", "RuntimeError: stream closed before its end", None]
    assert stores.held()[:2] == (0, 0.0)


@pytest.mark.parametrize("view", ["stream", "streaming-response"])
def test_a_first_stream_half_read_and_left_alone_holds_no_other_call_at_the_calibration_gate(
    server: SlowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, view: str
) -> None:
    """The first call to an uncalibrated endpoint is a stream whose reader stops after one chunk and keeps it: the gate
    goes back once the stream is handed over, so the next call goes (it waited 2 s here, then was refused); the
    stream read to its end later is charged and logged as any other."""
    monkeypatch.setattr(_flows, "CALIBRATION_WAIT_S", 2.0)
    stores = Stores(tmp_path, server.url)
    sdk = stores.sync_client()
    question = {"model": MODEL, "messages": ask("streaming"), "max_tokens": 50, "stream": True}
    if view == "stream":
        left = sdk.chat.completions.create(**question)
        next(left)
    else:
        viewing = sdk.chat.completions.with_streaming_response.create(**question)
        left = viewing.__enter__()
    other = sdk.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=50)
    assert other.choices[0].message.content == "answer 0"
    if view == "stream":
        assert "".join(c.choices[0].delta.content or "" for c in left if c.choices) == " two three"
    else:
        viewing.__exit__(None, None, None)
    assert stores.errors() == [None, None] and stores.held()[:2] == (0, 0.0)
