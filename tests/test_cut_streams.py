"""Streams a server cuts short: charged for what arrived, never cached, nothing left reserved,
logged as cut. The server is a test double on a real loopback socket, since no real server can be
made to close its stream early on demand: it sends two chunks with no finish_reason and no [DONE],
then closes the connection (close-delimited) or stops a chunked body without its last chunk. Or
(`stall`) it sends the whole answer, finish_reason and all, then neither its usage nor [DONE] and
keeps the connection open: a caller that stops at the finish_reason must not wait on it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI

PRICES = {"m": {"input": 1000.0, "output": 1000.0}}
HELLO = [{"role": "user", "content": "Say hello"}]


def _events(finish: str | None = None) -> bytes:
    """Two chat chunks with text, the second with `finish` as its finish_reason."""
    out = b""
    for text, reason in (("Hello", None), (" there", finish)):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": reason}]}
        out += b"data: " + json.dumps(chunk).encode() + b"\n\n"
    return out


class CutServer:
    """Answers every request with a stream that ends early; counts the requests."""

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.requests = 0
        self._released = threading.Event()  # a stalled stream's connection is held open until then
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer_on, args=(conn,), daemon=True).start()

    def _answer_on(self, conn: socket.socket) -> None:
        with conn:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        if not head.split(b" ")[1].endswith(b"/chat/completions"):  # e.g. the SDK asking for a tokenize route
            conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        self.requests += 1
        events = _events("stop" if self.framing == "stall" else None)
        if self.framing == "close":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + events)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            conn.sendall(f"{len(events):x}\r\n".encode() + events + b"\r\n")  # and never the final 0-length chunk
        if self.framing == "stall":
            self._released.wait(30)
        conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._released.set()
        self._sock.close()


@pytest.fixture(params=["close", "chunked"])
def server(request: pytest.FixtureRequest) -> Iterator[CutServer]:
    cut = CutServer(request.param)
    yield cut
    cut.close()


def _client(kind: type, server: CutServer, tmp_path: Path, **options: float) -> tuple[Any, Budget]:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = kind(api_key="sk-test", base_url=server.url, cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db", max_retries=0, **options)
    return client, budget


def _check(server: CutServer, budget: Budget, tmp_path: Path, text: str) -> None:
    """Charged for what arrived, nothing held, logged as failed with the tokens it was charged for."""
    assert text == "Hello there"
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.reserved_usd == 0
    assert report.spent_usd > 0
    [record] = list(CallLog(tmp_path / "calls.db").calls())
    assert record.error is not None and record.cost_usd == pytest.approx(report.spent_usd)
    assert record.usage is not None and record.usage["completion_tokens"] >= 2  # "Hello there", counted


def test_a_cut_stream_is_charged_and_never_cached(server: CutServer, tmp_path: Path) -> None:
    client, budget = _client(OpenAI, server, tmp_path)
    pieces: list[str] = []
    stream = client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8)
    with contextlib.suppress(Exception):  # a chunked body cut short raises, as it does with plain openai
        for chunk in stream:
            pieces += [c.delta.content or "" for c in chunk.choices]
    _check(server, budget, tmp_path, "".join(pieces))
    assert stream.blackbox.error is not None  # a close-delimited cut ends quietly: the stream still says it was cut
    with contextlib.suppress(Exception):
        list(client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8))
    assert server.requests == 2  # not served from the cache


async def test_a_cut_async_stream_is_charged_and_never_cached(server: CutServer, tmp_path: Path) -> None:
    client, budget = _client(AsyncOpenAI, server, tmp_path)
    pieces: list[str] = []
    with contextlib.suppress(Exception):
        async for chunk in await client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8):
            pieces += [c.delta.content or "" for c in chunk.choices]
    _check(server, budget, tmp_path, "".join(pieces))


def test_a_stream_left_half_read_at_exit_is_charged_quietly_and_its_record_can_be_repaired(llama_server: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    from blackbox_sdk.call_log import repair_log

    prices = {"smollm2": {"input": 1000.0, "output": 1000.0}}
    script = f"""
import blackbox_sdk
budget = blackbox_sdk.Budget(total_usd=10.0, prices={prices!r}, ledger={str(tmp_path / "ledger.db")!r})
client = blackbox_sdk.OpenAI(base_url={llama_server!r}, api_key="sk-test", max_retries=0, budget=budget, log={str(tmp_path / "calls.db")!r})
stream = client.chat.completions.create(model="smollm2", messages=[{{"role": "user", "content": "Count to fifty."}}], max_tokens=64, stream=True)
chunks = iter(stream)
next(chunks)  # then the script ends: the stream is collected after the call log closed at exit
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == ""  # no traceback at exit
    budget = Budget(prices=prices, ledger=tmp_path / "ledger.db")
    report = budget.report()
    assert (report.calls, report.outstanding_reservations) == (1, 0) and report.spent_usd > 0  # charged, nothing left held
    with CallLog(tmp_path / "calls.db") as log:
        assert repair_log(log, budget) == 1  # the record the exit could not write, from the ledger
        [record] = log.calls()
        assert record.cost_usd == pytest.approx(report.spent_usd)


STALLED_READ_S = 8.0  # the client's read timeout: what closing the stream waited for before the fix
PROMPT_CLOSE_S = 5.0  # what it may take now: the SDK's bounded read of the rest, with room for a busy machine


@pytest.fixture
def stalling() -> Iterator[CutServer]:
    stall = CutServer("stall")
    yield stall
    stall.close()


def _check_whole(server: CutServer, budget: Budget, tmp_path: Path, took: float) -> None:
    """Closed at once; settled from the text counted, cached as whole, nothing held, logged without error."""
    assert took < PROMPT_CLOSE_S, f"closing the stream took {took:.1f} s"
    report = budget.report()
    assert (report.outstanding_reservations, report.reserved_usd, report.calls) == (0, 0, 1) and report.spent_usd > 0
    [record] = list(CallLog(tmp_path / "calls.db").calls())
    assert (record.error, record.usage_counted, record.cache_hit) == (None, True, False)
    assert record.cost_usd == pytest.approx(report.spent_usd) and record.usage["completion_tokens"] >= 2


def test_a_stream_left_at_its_finish_reason_is_closed_at_once_when_the_server_stalls(stalling: CutServer, tmp_path: Path) -> None:
    """The SDK reads what follows the finish_reason (the usage) for a bounded time only: openai's read
    timeout (600 s by default; 8 s here) used to hold the caller's `break` (or `close()`)."""
    client, budget = _client(OpenAI, stalling, tmp_path, timeout=STALLED_READ_S)
    stream = client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8)
    pieces = []
    for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        if chunk.choices and chunk.choices[0].finish_reason:
            started = time.monotonic()
            break
    stream.close()  # the SDK's bounded read of the rest (the usage) runs here: the wait was here
    _check_whole(stalling, budget, tmp_path, time.monotonic() - started)
    again = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8) if c.choices)
    assert "".join(pieces) == again == "Hello there" and stalling.requests == 1  # the whole answer, from the cache


async def test_an_async_stream_left_at_its_finish_reason_is_closed_at_once_when_the_server_stalls(stalling: CutServer, tmp_path: Path) -> None:
    client, budget = _client(AsyncOpenAI, stalling, tmp_path, timeout=STALLED_READ_S)
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            started = time.monotonic()
            break
    await stream.close()
    _check_whole(stalling, budget, tmp_path, time.monotonic() - started)
    assert stalling.requests == 1


async def test_an_async_stream_whose_close_is_cancelled_while_it_reads_on_is_still_accounted(stalling: CutServer, tmp_path: Path) -> None:
    """A cancel of `close()` while it reads on for the usage (which this server never sends) still settles, stores
    and logs the whole answer: the cancel's exception skipped the account, and the hold, the cache claim and the
    calibration gate stayed held, so the same call made again waited on them."""
    client, budget = _client(AsyncOpenAI, stalling, tmp_path, timeout=STALLED_READ_S)
    stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            break
    closing = asyncio.create_task(stream.close())
    await asyncio.sleep(0.5)  # the close is reading on (for at most REST_READ_S, 2 s)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    _check_whole(stalling, budget, tmp_path, 0.0)
    again = await client.chat.completions.create(model="m", messages=HELLO, stream=True, max_tokens=8)
    assert "".join([c.choices[0].delta.content or "" async for c in again if c.choices]) == "Hello there"
    assert stalling.requests == 1  # from the cache


def test_a_stream_left_by_break_reads_on_in_a_later_loop_as_openai_s_does(llama_server: str, tmp_path: Path) -> None:
    """openai's `Stream.__iter__` loops over its iterator without closing it when the loop is left: a `break`
    and a later `for` read on where it stopped. The SDK's stream does the same: the call ends, is settled,
    cached and logged once, with the whole answer, when the second loop ends (not cut at the `break`)."""
    prices = {"smollm2": {"input": 1000.0, "output": 1000.0}}
    budget = Budget(total_usd=10.0, prices=prices, ledger=tmp_path / "ledger.db")
    client = OpenAI(api_key="sk-test", base_url=llama_server, cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db", max_retries=0)
    ask = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 12, "temperature": 0, "stream": True}
    stream = client.chat.completions.create(**ask)
    for first in stream:
        break
    pieces = [chunk.choices[0].delta.content or "" for chunk in [first, *stream] if chunk.choices]
    replayed = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(**ask) if chunk.choices]
    assert len(pieces) > 2 and pieces == replayed  # the whole answer, read on after the break, then from the cache
    report = budget.report()
    assert (report.calls, report.outstanding_reservations) == (1, 0)
    paid, hit = CallLog(tmp_path / "calls.db").calls()  # oldest first
    assert (paid.error, hit.error, hit.cache_hit) == (None, None, True)
    assert paid.cost_usd == pytest.approx(report.spent_usd) and hit.cost_usd == 0


def _tokens_kept_in_a_cycle(text: str) -> int:
    """A token count (words) whose frame a reference cycle keeps after it returns, as an exception a library
    keeps does (tiktoken's failed download on a first count offline): the frames that called it go on too."""
    held: list[Any] = []
    held.append(sys._getframe())  # this frame holds itself
    return len(text.split())


def test_a_stream_left_by_break_and_let_go_is_accounted_at_once(llama_server: str, tmp_path: Path) -> None:
    """The loop's stream, let go at its `break`, is freed and accounted as the loop ends, without a garbage
    collection, though a cycle keeps the frames of the call that made it: the gate and the hold go at once."""
    prices = {"smollm2": {"input": 1000.0, "output": 1000.0}}
    budget = Budget(total_usd=10.0, prices=prices, ledger=tmp_path / "ledger.db")
    client = OpenAI(api_key="sk-test", base_url=llama_server, budget=budget, log=tmp_path / "calls.db", max_retries=0, tokenizer=_tokens_kept_in_a_cycle)
    gc.disable()
    try:
        for _chunk in client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=12, stream=True):
            break
        report = budget.report()
    finally:
        gc.enable()
    assert (report.calls, report.outstanding_reservations) == (1, 0)
