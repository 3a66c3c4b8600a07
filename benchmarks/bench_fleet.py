"""The fleet's shared stores against the one-host defaults, side by side in one run, on loopback.

A real `redis-server` and a real PostgreSQL (tests/servers.py) are started on free loopback
ports for the run and stopped after. Every row names its store, what it measures, the value, the
baseline measured in the same run and the ratio to it:
- `reserve+settle latency`: one thread, median and p99 per pair, SQLite ledger (the baseline)
  vs the Redis ledger, the two interleaved so drift on the machine hits both alike.
- `ledger throughput`: reserve+settle pairs per second with 8 threads in one process, and with
  4 spawned processes x 8 threads, on one shared ledger; SQLite is the baseline.
- `cache hit latency`: `Cache.get` of a stored bucket holding a ~2 KB chat completion, against
  the floor of reading the same bytes with the store's own client (a plain `diskcache.Cache.get`,
  a plain redis-py `GET`), interleaved.
- `single flight`: 32 identical concurrent requests through `OpenAI(cache=...)` against a loopback
  upstream that answers after 50 ms and counts requests: requests sent with the disk and the
  Redis cache, against the same burst with no cache.
- `call-log inserts`: the same records written to the SQLite `CallLog` and to `PostgresCallLog`
  (record, then flush and close: all committed), records per second; SQLite is the baseline.
"""

from __future__ import annotations

import http.server
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import diskcache

import blackbox_sdk
from blackbox_sdk import Budget, Cache
from blackbox_sdk.call_log import CallLog, CallRecord, PostgresCallLog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import PostgresServer, RedisServer  # the tests' real servers, on loopback

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 0.15, "output": 0.6}}
ANSWER = (
    "The capital of France is Paris. It sits on the Seine in the north of the country and has been the seat of "
    "government for most of the last thousand years. "
) * 12  # ~1.7 KB of text: with the envelope, a ~2 KB chat completion
COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 14, "completion_tokens": 380, "total_tokens": 394},
}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer at length."}]
UPSTREAM_DELAY_S = 0.05
BURST = 32
Row = dict[str, Any]


def _row(benchmark: str, store: str, measure: str, value: float, unit: str, baseline: str, base: float) -> Row:
    """One table row: what was measured on which store, and its ratio to the baseline of the same run."""
    return {"benchmark": benchmark, "store": store, "measure": measure, "value": value, "unit": unit,
            "baseline": baseline, "baseline_value": base, "ratio": value / base if base else None}


def _median_p99(times: list[float]) -> tuple[float, float]:
    """Median and 99th percentile of timings, in microseconds."""
    return statistics.median(times) * 1e6, statistics.quantiles(times, n=100)[98] * 1e6


def _interleaved(calls: list[Callable[[], object]], repeat: int) -> list[list[float]]:
    """Per-call seconds of each call, taken in turn so drift hits all alike; after a warm-up of each."""
    times: list[list[float]] = [[] for _ in calls]
    for call in calls:
        call()
    for _ in range(repeat):
        for call, bucket in zip(calls, times):
            start = time.perf_counter()
            call()
            bucket.append(time.perf_counter() - start)
    return times


# ---- the ledger ----------------------------------------------------------------------------------

def _budget(ledger: str, prefix: str) -> Budget:
    """A budget far above what the run spends, on a ledger file or a Redis URL (keys under `prefix`)."""
    return Budget(total_usd=1e6, prices=PRICES, ledger=ledger, ledger_prefix=prefix)


def _pair(budget: Budget) -> None:
    """One call's bookkeeping: reserve the worst case, settle the real usage."""
    held = budget.reserve(model=MODEL, prompt_tokens=20, max_output_tokens=16, local=False)
    budget.settle(held, prompt_tokens=20, completion_tokens=8)


def latency_rows(sqlite_ledger: str, redis_url: str, repeat: int) -> list[Row]:
    """reserve+settle per pair on one thread: median and p99, SQLite vs Redis, interleaved."""
    on_disk, on_redis = _budget(sqlite_ledger, "unused"), _budget(redis_url, f"bench:{uuid.uuid4().hex}:")
    disk_times, redis_times = _interleaved([lambda: _pair(on_disk), lambda: _pair(on_redis)], repeat)
    disk, redis = _median_p99(disk_times), _median_p99(redis_times)
    name = "reserve+settle latency, 1 thread"
    return [_row(name, store, f"{stat} per pair", value[i], "us", "sqlite", disk[i])
            for i, stat in enumerate(("median", "p99")) for store, value in (("sqlite", disk), ("redis", redis))]


def _drive(budget: Budget, threads: int, per_thread: int, go: Any, ready: Callable[[], None]) -> None:
    """`threads` threads doing `per_thread` pairs each once `go` is set; `ready()` once all are warm."""
    barrier, errors = threading.Barrier(threads + 1), []

    def work() -> None:
        try:
            _pair(budget)  # warm-up: opens this thread's connection before the clock starts
            barrier.wait()
            go.wait()
            for _ in range(per_thread):
                _pair(budget)
        except BaseException as exc:  # noqa: BLE001  # reported to the caller below
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        barrier.wait()
        ready()
    finally:
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]


def _process_main(ledger: str, prefix: str, threads: int, per_thread: int, go: Any, queue: Any) -> None:
    """A spawned process: its own Budget shared by `threads` threads; reports ready, done or the error."""
    try:
        _drive(_budget(ledger, prefix), threads, per_thread, go, lambda: queue.put(("ready", "")))
        queue.put(("done", ""))
    except BaseException as exc:  # noqa: BLE001  # the parent raises it
        queue.put(("error", repr(exc)))


def _next(queue: Any, want: str) -> None:
    """Wait for a `want` message from a worker process; RuntimeError for an error or a worker gone quiet."""
    kind, detail = queue.get(timeout=120)
    if kind != want:
        raise RuntimeError(f"a ledger worker process failed: {detail}")


def _throughput(ledger: str, processes: int, threads: int, per_thread: int) -> float:
    """Pairs per second on one ledger: `threads` threads in this process (processes=0) or in each spawned process."""
    prefix = f"bench:{uuid.uuid4().hex}:"
    if processes == 0:
        go, ready = threading.Event(), threading.Event()
        runner = threading.Thread(target=_drive, args=(_budget(ledger, prefix), threads, per_thread, go, ready.set))
        runner.start()
        ready.wait(timeout=120)
        start = time.perf_counter()
        go.set()
        runner.join()
        return threads * per_thread / (time.perf_counter() - start)
    context = multiprocessing.get_context("spawn")
    go, queue = context.Event(), context.Queue()
    workers = [context.Process(target=_process_main, args=(ledger, prefix, threads, per_thread, go, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            _next(queue, "ready")  # every interpreter imported and warm before the clock starts
        start = time.perf_counter()
        go.set()
        for _ in workers:
            _next(queue, "done")
        return processes * threads * per_thread / (time.perf_counter() - start)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()


def throughput_rows(folder: Path, redis_url: str, per_thread: int) -> list[Row]:
    """Pairs per second under 8 threads and under 4 processes x 8 threads, SQLite vs Redis."""
    rows = []
    for label, processes in (("8 threads", 0), ("4 processes x 8 threads", 4)):
        sqlite = _throughput(str(folder / f"ledger-{processes}.sqlite3"), processes, 8, per_thread)
        redis = _throughput(redis_url, processes, 8, per_thread)
        rows += [_row("ledger throughput", store, label, value, "pairs/s", "sqlite", sqlite)
                 for store, value in (("sqlite", sqlite), ("redis", redis))]
    return rows


# ---- the cache -----------------------------------------------------------------------------------

def _stored_key(cache: Cache) -> str:
    """Store one bucket holding the ~2 KB completion and return its key."""
    key = cache.key(route="chat.completions", endpoint="http://127.0.0.1/v1", params={"model": MODEL, "messages": QUESTION})
    cache.extend(key, [COMPLETION])
    if cache.get(key) != [COMPLETION]:
        raise RuntimeError(f"the bucket stored in {cache.location} did not read back")
    return key


def _entries(stored: str | bytes) -> list[Any]:
    """The entries of a stored bucket (without their creation times, which differ between stores)."""
    return [wrapper["entry"] for wrapper in json.loads(stored)]


def cache_rows(folder: Path, redis_url: str, repeat: int) -> list[Row]:
    """Cache.get of the stored bucket against the floor: the same bytes read by the store's own client."""
    import redis

    disk_cache = Cache(folder / "cache")
    disk_key = _stored_key(disk_cache)
    text = disk_cache._read(disk_key)  # the stored JSON text, as bench_cache reads it
    plain_disk = diskcache.Cache(str(folder / "plain"))
    plain_disk.set("k", text)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    redis_cache = Cache(redis_url, namespace=namespace)
    redis_key = _stored_key(redis_cache)
    plain_redis = redis.Redis.from_url(redis_url)
    name = f"blackbox:cache:{namespace}:{redis_key}"  # the layout cache/_redis.py documents
    raw = plain_redis.get(name)
    if raw is None or _entries(raw) != _entries(text) or abs(len(raw) - len(text)) > 8:
        raise RuntimeError("the Redis bucket differs from the disk bucket: not the same payload")
    times = _interleaved([lambda: disk_cache.get(disk_key), lambda: plain_disk.get("k"),
                          lambda: redis_cache.get(redis_key), lambda: plain_redis.get(name)], repeat)
    disk, disk_floor, on_redis, redis_floor = (_median_p99(t) for t in times)
    rows = []
    for store, ours, floor, floor_name in (("disk", disk, disk_floor, "diskcache.get"),
                                            ("redis", on_redis, redis_floor, "redis-py GET")):
        rows += [_row(f"cache hit latency ({len(text)} B bucket)", store, f"Cache.get {stat}", ours[i], "us",
                      floor_name, floor[i]) for i, stat in enumerate(("median", "p99"))]
    disk_cache.close(), redis_cache.close(), plain_disk.close(), plain_redis.close()
    return rows


# ---- single flight -------------------------------------------------------------------------------

class _Upstream(http.server.ThreadingHTTPServer):
    """A loopback chat-completions server: a fixed body after a short delay, counting requests."""

    daemon_threads = True
    request_queue_size = 2 * BURST  # the default backlog (5) resets a burst's connections

    def __init__(self) -> None:
        """Listen on a free loopback port."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests, self.lock = 0, threading.Lock()
        self.body = json.dumps(COMPLETION).encode()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL for this server."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions; anything else is a 404."""

    protocol_version = "HTTP/1.1"
    server: _Upstream

    def do_POST(self) -> None:  # http.server's name
        """Count the request, wait the upstream's delay, send the fixed completion."""
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        with self.server.lock:
            self.server.requests += 1
        time.sleep(UPSTREAM_DELAY_S)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        """Quiet."""


def _burst(upstream: _Upstream, cache: str | None, question: str) -> tuple[int, float]:
    """BURST identical requests at once through one client; the upstream requests they caused and the burst's seconds."""
    client = blackbox_sdk.OpenAI(base_url=upstream.base_url, api_key="sk-test", cache=cache, max_retries=0)
    messages = [{"role": "user", "content": question}]
    barrier = threading.Barrier(BURST)

    def ask(_: int) -> str:
        barrier.wait()
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=400, temperature=0).id

    before = upstream.requests
    start = time.perf_counter()
    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(ask, range(BURST)))
    seconds = time.perf_counter() - start
    client.close()
    if answers != [COMPLETION["id"]] * BURST:
        raise RuntimeError("a single-flight burst returned the wrong answers")
    return upstream.requests - before, seconds


def flight_rows(folder: Path, redis_url: str, bursts: int) -> list[Row]:
    """Upstream requests and wall time per burst (mean of `bursts`, each a new question and a new client):
    no cache (the baseline), the disk cache (a new folder), the Redis cache."""
    upstream = _Upstream()
    serving = threading.Thread(target=upstream.serve_forever, daemon=True)
    serving.start()
    targets: dict[str, str | None] = {"none": None, "disk": str(folder / "flight-cache"), "redis": redis_url}
    try:
        runs = {store: [_burst(upstream, cache, f"{store} {uuid.uuid4().hex}") for _ in range(bursts)]
                for store, cache in targets.items()}
    finally:
        upstream.shutdown()
        upstream.server_close()
    means = {store: (statistics.mean(r for r, _ in done), statistics.mean(s for _, s in done) * 1e3)
             for store, done in runs.items()}
    name = f"single flight, {BURST} identical concurrent requests (mean of {bursts} bursts)"
    sent, wall = means["none"]
    return [_row(name, store, measure, value, unit, "no cache", base)
            for store, (requests, millis) in means.items()
            for measure, value, unit, base in (("upstream requests per burst", requests, "requests", sent),
                                               ("burst wall time", millis, "ms", wall))]


# ---- the call log --------------------------------------------------------------------------------

def _records(count: int) -> list[CallRecord]:
    """`count` realistic records: a chat request, one ~2 KB candidate, usage and cost."""
    return [CallRecord(endpoint_host="127.0.0.1", model=MODEL, route="chat",
                       request={"model": MODEL, "messages": QUESTION, "max_tokens": 400, "temperature": 0},
                       candidates=[ANSWER], chosen=[0], usage=COMPLETION["usage"], usage_counted=True,
                       cost_usd=0.00023, latency_s=0.4, key=f"tenant-{i % 7}") for i in range(count)]


def _timed_writes(log: CallLog | PostgresCallLog, records: list[CallRecord]) -> float:
    """Seconds to record every record and close the log (for PostgreSQL: flushed, all committed)."""
    start = time.perf_counter()
    for record in records:
        log.record(record)
    if isinstance(log, PostgresCallLog):
        log.flush()
    log.close()
    return time.perf_counter() - start


def log_rows(folder: Path, postgres_url: str, count: int) -> list[Row]:
    """The same records into the SQLite log and the PostgreSQL log: records per second, all committed."""
    records = _records(count)
    sqlite_s = _timed_writes(CallLog(folder / "calls.sqlite3"), records)
    postgres_s = _timed_writes(PostgresCallLog(postgres_url), records)
    for log in (CallLog(folder / "calls.sqlite3"), PostgresCallLog(postgres_url)):
        logged = log.stats()["calls"]
        log.close()
        if logged != count:
            raise RuntimeError(f"{log!r} holds {logged} calls, not the {count} recorded")
    name = f"call-log inserts ({count} records)"
    return [_row(name, store, "record + commit", count / seconds, "records/s", "sqlite", count / sqlite_s)
            for store, seconds in (("sqlite", sqlite_s), ("postgres", postgres_s))]


def rows(quick: bool) -> list[Row]:
    """Every fleet row, with a real Redis and PostgreSQL on loopback for the run; --quick uses fewer calls."""
    folder = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    redis_server, postgres_server = RedisServer().start(), PostgresServer()
    try:
        postgres_server.start()
        return (
            latency_rows(str(folder / "latency.sqlite3"), redis_server.url, repeat=300 if quick else 5000)
            + throughput_rows(folder, redis_server.url, per_thread=15 if quick else 400)
            + cache_rows(folder, redis_server.url, repeat=500 if quick else 5000)
            + flight_rows(folder, redis_server.url, bursts=2 if quick else 8)
            + log_rows(folder, postgres_server.url, count=400 if quick else 2000)
        )
    finally:
        redis_server.close()
        postgres_server.close()
        shutil.rmtree(folder, ignore_errors=True)
