"""A stream closed before its answer ended (a `break`, a proxy's client gone) closes its connection to the server
before counting what came: behind a server that serves one request at a time (llama-cpp-python's with
`--interrupt_requests False`, as docs/proxy.md advises) a count on its tokenize route would otherwise queue behind
the generation the SDK itself still holds open, and the close, the account and the budget's hold would wait for the
whole generation. The server is a test double on a real loopback socket: it streams until its client hangs up, and
the token count waits for that, as such a server's tokenize route does."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI

PRICES = {"m": {"input": 1000.0, "output": 1000.0}}
CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
MOST_CHUNKS = 3000  # the generation's length: far longer than the wait below, at 10 ms a chunk


class EndlessServer:
    """Streams chunks of one unfinished answer until the client hangs up (`stopped`), or `MOST_CHUNKS`."""

    def __init__(self) -> None:
        self.streaming = threading.Event()
        self.stopped = threading.Event()
        self.counted_after_the_stream = False
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            self.streaming.set()
            try:
                for _ in range(MOST_CHUNKS):
                    conn.sendall(b"data: " + json.dumps(CHUNK).encode() + b"\n\n")
                    self.stopped.wait(0.01)
            except OSError:  # the client hung up
                pass
            self.stopped.set()

    def count(self, text: str) -> int:
        """A token count that, once the stream runs, waits for it to stop (as a one-at-a-time server's tokenize route)."""
        if self.streaming.is_set():
            self.counted_after_the_stream = self.stopped.wait(20)
        return len(text.split())

    def close(self) -> None:
        self.stopped.set()
        self._sock.close()


@pytest.fixture
def server() -> Iterator[EndlessServer]:
    endless = EndlessServer()
    yield endless
    endless.close()


def _client(kind: type, server: EndlessServer, tmp_path: Path) -> tuple[Any, Budget]:
    budget = Budget(total_usd=1000.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = kind(api_key="sk-test", base_url=server.url, budget=budget, log=tmp_path / "calls.db", max_retries=0, tokenizer=server.count)
    return client, budget


def _check(server: EndlessServer, budget: Budget, tmp_path: Path) -> None:
    """The server was hung up on before the count; the call settled and logged once, nothing held."""
    assert server.counted_after_the_stream
    report = budget.report()
    assert (report.calls, report.outstanding_reservations) == (1, 0)
    [record] = list(CallLog(tmp_path / "calls.db").calls())
    assert record.error is not None and record.cost_usd == pytest.approx(report.spent_usd)


def test_a_stream_closed_early_hangs_up_before_counting(server: EndlessServer, tmp_path: Path) -> None:
    client, budget = _client(OpenAI, server, tmp_path)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Go on"}], stream=True, max_tokens=4000)
    for _ in range(3):
        next(stream)
    stream.close()
    client.close()
    _check(server, budget, tmp_path)


async def test_an_async_stream_closed_early_hangs_up_before_counting(server: EndlessServer, tmp_path: Path) -> None:
    client, budget = _client(AsyncOpenAI, server, tmp_path)
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Go on"}], stream=True, max_tokens=4000)
    for _ in range(3):
        await anext(stream)
    await stream.close()
    await client.close()
    _check(server, budget, tmp_path)
