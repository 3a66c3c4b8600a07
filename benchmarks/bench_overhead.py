"""Per-call overhead of the SDK over the bare openai client, and the local HF backend's tokens/s.

Rows:
- `wrapper vs bare, llama.cpp server`: the same request to the same local server through
  `openai.OpenAI` and `blackbox_sdk.OpenAI` (no cache, no budget), interleaved; median ratio
  (goal < 1.05).
- `wrapper vs bare, in-process transport`: the same, over an in-memory httpx2 transport, so the
  SDK's own per-call cost is not hidden by generation time (microseconds added per call).
- Against an instant loopback HTTP server, each interleaved with its baseline in the same run:
  `options off` (the SDK with no option vs the bare client: at most 100 us added),
  `features on, cache miss` (cache, budget and call log all on, a new question each call, vs the
  bare client asking the same: at most 300 us added), `features on, cache hit` (the same
  question again, vs a plain `diskcache.Cache.get` of the same stored payload: at most 200 us and
  at most 3x that read; in alternating blocks of 50, the log's writer flushed before each block of
  reads so that it never slows the floor), `raw store read` (that plain read alone), and a miss's
  four write transactions alone (the claim, the reservation, the stored answer, the settlement, in plain
  sqlite3 with a bare loopback call between: the floor of what single flight and a hard budget write). The
  server runs in a process of its own, as a real one does; `met` says whether each goal held.
- `hf backend`: completion tokens per second for n=1 and n=8 (one batched generate).
"""

from __future__ import annotations

import http.server
import itertools
import json
import multiprocessing
import socket
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache  # type: ignore[import-untyped]
import httpx2
import openai

import blackbox_sdk
from blackbox_sdk.local import LlamaServer

QUESTION = [{"role": "user", "content": "What is 26 plus 28?"}]
BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "54"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}


def _timed(call: Callable[[], object]) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _interleaved(bare: Callable[[], object], ours: Callable[[], object], rounds: int) -> tuple[list[float], list[float]]:
    """Alternate the two calls so drift on the machine hits both alike; after one warm-up each."""
    bare(), ours()
    times_bare, times_ours = [], []
    for _ in range(rounds):
        times_bare.append(_timed(bare))
        times_ours.append(_timed(ours))
    return times_bare, times_ours


def _row(name: str, bare: list[float], ours: list[float]) -> dict[str, object]:
    """A comparison row: medians, their ratio, and the added microseconds."""
    median_bare, median_ours = statistics.median(bare), statistics.median(ours)
    return {
        "benchmark": name,
        "calls": len(bare),
        "bare_median_ms": median_bare * 1e3,
        "sdk_median_ms": median_ours * 1e3,
        "ratio": median_ours / median_bare,
        "added_us": (median_ours - median_bare) * 1e6,
        "goal": "ratio < 1.05",
    }


def server_rows(rounds: int) -> list[dict[str, object]]:
    """Wrapper vs bare client against a real llama.cpp server."""
    with LlamaServer() as base_url:
        bare = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        ours = blackbox_sdk.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        params = {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0}
        times = _interleaved(
            lambda: bare.chat.completions.create(**params), lambda: ours.chat.completions.create(**params), rounds
        )
    return [_row("wrapper vs bare, llama.cpp server", *times)]


def transport_rows(rounds: int) -> list[dict[str, object]]:
    """Wrapper vs bare client over an in-memory transport: the SDK's own cost per call."""
    def http() -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(200, json=BODY)))

    bare = openai.OpenAI(base_url="http://bench.test/v1", api_key="sk-bench", max_retries=0, http_client=http())
    ours = blackbox_sdk.OpenAI(base_url="http://bench.test/v1", api_key="sk-bench", max_retries=0, http_client=http())
    params = {"model": "m", "messages": QUESTION, "max_tokens": 4}
    times = _interleaved(lambda: bare.chat.completions.create(**params), lambda: ours.chat.completions.create(**params), rounds)
    return [_row("wrapper vs bare, in-process transport", *times)]


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions with BODY at once, in one write; a 404 elsewhere (so no tokenize route is found)."""

    protocol_version = "HTTP/1.1"
    body = json.dumps(BODY).encode()

    def setup(self) -> None:
        """No Nagle delay on the answers."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:  # http.server's name
        """Read the request, send the headers and body together."""
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        found = self.path == "/v1/chat/completions"
        body = self.body if found else b"{}"
        head = f"HTTP/1.1 {200 if found else 404} {'OK' if found else 'Not Found'}\r\nContent-Type: application/json\r\n"
        self.wfile.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        """Quiet."""


def _serve(ports: Any) -> None:
    """The server process: a threaded HTTP server on a free loopback port, its port sent back."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.daemon_threads = True
    ports.put(server.server_address[1])
    server.serve_forever()


@contextmanager
def _loopback() -> Iterator[str]:
    """The base URL of an instant loopback server in its own process (as a real server is), stopped after."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=_serve, args=(ports,), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=60)}/v1"
    finally:
        process.terminate()
        process.join()


def _goal_row(name: str, calls: int, baseline: str, base: list[float], ours: list[float], goals: dict[str, bool]) -> dict[str, object]:
    """A row against a baseline measured in the same run: medians in us, what is added, the ratio, the goals and whether met."""
    median_base, median_ours = statistics.median(base), statistics.median(ours)
    return {
        "benchmark": name, "calls": calls, "baseline": baseline, "baseline_median_us": median_base * 1e6,
        "sdk_median_us": median_ours * 1e6, "added_us": (median_ours - median_base) * 1e6,
        "ratio": median_ours / median_base, "goal": "; ".join(goals), "met": all(goals.values()),
    }


def _features(base_url: str, folder: Path) -> tuple[blackbox_sdk.OpenAI, blackbox_sdk.CallLog]:
    """A client with cache, budget (a priced model, an SQLite ledger) and call log all on; and its log."""
    budget = blackbox_sdk.Budget(total_usd=1e6, prices={"m": {"input": 1.0, "output": 2.0}}, ledger=str(folder / "ledger.db"))
    log = blackbox_sdk.CallLog(folder / "calls.db")
    client = blackbox_sdk.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0, cache=str(folder / "cache"), budget=budget, log=log)
    return client, log


def _in_blocks(ours: Callable[[], object], floor: Callable[[], object], rounds: int, settle: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Alternate blocks of the two calls (drift hits both alike), letting ``settle`` run untimed before each
    block of the floor: the SDK's log writer then never runs during a raw read, which would slow it."""
    block = 50
    times_floor: list[float] = []
    times_ours: list[float] = []
    floor(), ours()
    for _ in range(max(1, rounds // block)):
        times_ours += [_timed(ours) for _ in range(block)]
        settle()
        times_floor += [_timed(floor) for _ in range(block)]
    return times_floor, times_ours


def _stored_payload(folder: Path, key: str) -> str:
    """The JSON text the SDK's cache folder holds at ``key``."""
    plain = diskcache.Cache(str(folder / "cache"))
    try:
        text = plain.get(key)
    finally:
        plain.close()
    if not isinstance(text, str):
        raise TypeError("the hit's bucket is not JSON text in the cache folder")
    return text


def loopback_rows(rounds: int) -> list[dict[str, object]]:
    """Options off, features on (miss and hit), and the raw store read, against an instant loopback server."""
    with _loopback() as base_url, tempfile.TemporaryDirectory(prefix="bb-overhead-") as tmp:
        folder = Path(tmp)
        bare = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        plain = blackbox_sdk.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
        full, log = _features(base_url, folder)
        params = {"model": "m", "messages": QUESTION, "max_tokens": 4}
        off = _interleaved(lambda: bare.chat.completions.create(**params), lambda: plain.chat.completions.create(**params), rounds)

        fresh = itertools.count()
        asked: list[dict[str, Any]] = []

        def ask_bare() -> object:
            asked.append({**params, "messages": [{"role": "user", "content": f"What is {next(fresh)} plus 28?"}]})
            return bare.chat.completions.create(**asked[-1])

        miss = _interleaved(ask_bare, lambda: full.chat.completions.create(**asked[-1]), rounds)
        floor = _write_floor(folder, lambda: bare.chat.completions.create(**params), rounds)
        full.chat.completions.create(**params)  # stored: every call below is a hit
        with blackbox_sdk.Cache(folder / "cache") as keys:
            key = keys.key(route="chat.completions", endpoint=str(bare.base_url), params=params)
        store = diskcache.Cache(str(folder / "raw"))
        store.set("payload", _stored_payload(folder, key))
        raw, hit = _in_blocks(lambda: full.chat.completions.create(**params), lambda: store.get("payload"), rounds, log.flush)
        if not full.chat.completions.create(**params).blackbox.cache_hit:
            raise RuntimeError("the hit row did not hit the cache")
        store.close(), full.close(), log.close(), plain.close(), bare.close()
    hit_us, raw_us = statistics.median(hit) * 1e6, statistics.median(raw) * 1e6
    return [
        _goal_row("options off, loopback", rounds, "bare openai client", *off, {"added <= 100 us": _added_us(*off) <= 100}),
        _goal_row("features on, cache miss, loopback", rounds, "bare openai client", *miss, {"added <= 300 us": _added_us(*miss) <= 300}),
        _goal_row("features on, cache hit", rounds, "raw store read", raw, hit, {"hit <= 200 us": hit_us <= 200, "hit <= 3x raw read": hit_us <= 3 * raw_us}),
        {"benchmark": "raw store read (plain diskcache.Cache.get, same payload)", "calls": rounds, "sdk_median_us": raw_us, "goal": "the floor"},
        {"benchmark": "a miss's four write transactions alone (plain sqlite3, a bare call between)", "calls": rounds,
         "sdk_median_us": statistics.median(floor) * 1e6, "goal": "the floor of a miss's cross-process writes"},
    ]


def _write_floor(folder: Path, between: Callable[[], object], rounds: int) -> list[float]:
    """Seconds per call of four minimal write transactions in plain sqlite3 (WAL, synchronous=NORMAL, two files), as a
    features-on miss makes them: the claim and the reservation before ``between`` (a bare loopback call, the real wait
    that leaves the core's caches cold), the stored answer ending the claim and the settlement after it. The floor of
    what single flight and a hard budget write across processes, with none of the SDK's own work around them."""
    cache, ledger = (sqlite3.connect(folder / name, isolation_level=None) for name in ("floor-cache.db", "floor-ledger.db"))
    for conn in (cache, ledger):
        conn.execute("PRAGMA journal_mode=WAL"), conn.execute("PRAGMA synchronous=NORMAL")
    cache.executescript("CREATE TABLE claims (key TEXT PRIMARY KEY, expires REAL) WITHOUT ROWID; CREATE TABLE cache (key TEXT PRIMARY KEY, value TEXT)")
    ledger.executescript("CREATE TABLE holds (id TEXT PRIMARY KEY, nano INTEGER); CREATE TABLE spent (scope TEXT PRIMARY KEY, nano INTEGER);"
                         "INSERT INTO spent VALUES ('total', 0)")

    def write(conn: sqlite3.Connection, *statements: tuple[str, tuple[object, ...]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for sql, args in statements:
            conn.execute(sql, args).fetchall()
        conn.execute("COMMIT")

    times = []
    for call in range(rounds):
        key, start = f"{call:064x}", time.perf_counter()
        write(cache, ("SELECT value FROM cache WHERE key = ?", (key,)), ("INSERT INTO claims VALUES (?, ?)", (key, time.time() + 60)))
        write(ledger, ("SELECT nano FROM spent", ()), ("SELECT SUM(nano) FROM holds", ()), ("INSERT INTO holds VALUES (?, 100)", (key,)))
        before = time.perf_counter() - start
        between()
        start = time.perf_counter()
        write(cache, ("INSERT INTO cache VALUES (?, ?)", (key, json.dumps(BODY))), ("DELETE FROM claims WHERE key = ?", (key,)))
        write(ledger, ("DELETE FROM holds WHERE id = ?", (key,)), ("UPDATE spent SET nano = nano + 40 WHERE scope = 'total'", ()))
        times.append(before + time.perf_counter() - start)
    cache.close()
    ledger.close()
    return times


def _added_us(base: list[float], ours: list[float]) -> float:
    """Microseconds the median call adds over its baseline."""
    return (statistics.median(ours) - statistics.median(base)) * 1e6


def hf_rows(max_tokens: int) -> list[dict[str, object]]:
    """Tokens per second of the local HF backend for n=1 and n=8 (one batched generate)."""
    from blackbox_sdk.local import default_gguf_path, load_backend

    backend = load_backend(default_gguf_path())
    rows = []
    for n in (1, 8):
        params = {"model": "local", "messages": QUESTION, "n": n, "max_tokens": max_tokens, "temperature": 0.9, "seed": 1}
        backend.chat_completion(params)  # warm-up
        start = time.perf_counter()
        response = backend.chat_completion(params)
        seconds = time.perf_counter() - start
        tokens = response["usage"]["completion_tokens"]
        rows.append({
            "benchmark": f"hf backend, n={n}", "device": str(backend.device), "completion_tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds,
        })
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / base
    return rows


def rows(quick: bool) -> list[dict[str, object]]:
    """All overhead rows; --quick uses fewer calls."""
    return (
        loopback_rows(200 if quick else 2000) + server_rows(10 if quick else 40) + transport_rows(100 if quick else 1000)
        + hf_rows(16 if quick else 48)
    )
