"""Streams a server cuts short: charged for what arrived, never cached, nothing left reserved,
logged as cut. The server is a test double on a real loopback socket, since no real server can be
made to close its stream early on demand: it sends two chunks with no finish_reason and no [DONE],
then closes the connection (close-delimited) or stops a chunked body without its last chunk."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI

PRICES = {"m": {"input": 1000.0, "output": 1000.0}}
HELLO = [{"role": "user", "content": "Say hello"}]


def _events() -> bytes:
    """Two chat chunks with text and no finish_reason."""
    out = b""
    for text in ("Hello", " there"):
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        out += b"data: " + json.dumps(chunk).encode() + b"\n\n"
    return out


class CutServer:
    """Answers every request with a stream that ends early; counts the requests."""

    def __init__(self, framing: str) -> None:
        self.framing = framing
        self.requests = 0
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
        events = _events()
        if self.framing == "close":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + events)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            conn.sendall(f"{len(events):x}\r\n".encode() + events + b"\r\n")  # and never the final 0-length chunk
        conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(params=["close", "chunked"])
def server(request: pytest.FixtureRequest) -> Iterator[CutServer]:
    cut = CutServer(request.param)
    yield cut
    cut.close()


def _client(kind: type, server: CutServer, tmp_path: Path) -> tuple[object, Budget]:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = kind(api_key="sk-test", base_url=server.url, cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db", max_retries=0)
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
