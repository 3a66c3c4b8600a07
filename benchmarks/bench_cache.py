"""Cache hit path, budget check and ledger throughput.

Rows:
- `cache hit vs miss`: a chat completion served from the cache, in process, against the same
  request sent to a real llama.cpp server (goal: hit median under 200 us).
- `cache hit vs diskcache.get`: the whole SDK hit path (key, read, JSON, rebuild, log-free
  accounting) against a plain `diskcache.Cache.get` of the same stored JSON text.
- `budget reserve+settle`: the budget's per-call cost, against a call with no budget.
- `ledger throughput`: reserve+settle pairs per second on one shared ledger file, 1 thread vs
  8 threads vs 4 processes.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import diskcache

import blackbox_sdk
from blackbox_sdk import Budget, Cache
from blackbox_sdk.local import LlamaServer

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is 26 plus 28?"}]
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}


def _median_us(call: Callable[[], object], repeat: int) -> float:
    """Median wall time of `call` in microseconds, after a warm-up."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def cache_rows(repeat: int, misses: int) -> list[dict[str, object]]:
    """Hit latency against misses on the real server, and against a plain diskcache.get."""
    folder = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    cache = Cache(folder / "cache")
    with LlamaServer() as base_url:
        client = blackbox_sdk.OpenAI(base_url=base_url, api_key="sk-bench", cache=cache)
        params = {"model": MODEL, "messages": QUESTION, "max_tokens": 16, "temperature": 0.9}
        miss_times = []
        for seed in range(misses + 1):
            start = time.perf_counter()
            client.chat.completions.create(**params, seed=seed)
            miss_times.append(time.perf_counter() - start)
        miss_us = statistics.median(miss_times[1:]) * 1e6
        hit_us = _median_us(lambda: client.chat.completions.create(**params, seed=0), repeat)
    key = cache.key(route="chat.completions", endpoint=client._core.endpoint, params={**params, "seed": 0})
    stored_text = cache._read(key)
    plain = diskcache.Cache(str(folder / "plain"))
    plain.set("k", stored_text)
    plain_us = _median_us(lambda: plain.get("k"), repeat)
    return [
        {"benchmark": "cache hit vs miss (llama.cpp)", "baseline_us": miss_us, "sdk_us": hit_us,
         "ratio": hit_us / miss_us, "goal": "hit median < 200 us"},
        {"benchmark": "cache hit vs diskcache.get", "baseline_us": plain_us, "sdk_us": hit_us,
         "ratio": hit_us / plain_us, "goal": "-"},
    ]


def budget_rows(repeat: int) -> list[dict[str, object]]:
    """reserve + settle per call against doing nothing, on a ledger file."""
    budget = Budget(total_usd=1e6, prices=PRICES, ledger=Path(tempfile.mkdtemp()) / "ledger.db")

    def check() -> None:
        held = budget.reserve(model=MODEL, prompt_tokens=20, max_output_tokens=16, n=1)
        budget.settle(held, prompt_tokens=20, completion_tokens=8)

    nothing_us = _median_us(lambda: None, repeat)
    check_us = _median_us(check, repeat)
    return [{"benchmark": "budget reserve+settle per call", "baseline_us": nothing_us, "sdk_us": check_us,
             "ratio": None, "added_us": check_us - nothing_us, "goal": "-"}]


def _hammer(ledger: str, count: int, go: object = None) -> None:
    """count reserve+settle pairs on a shared ledger (a thread's or a process's work), after `go` is set."""
    budget = Budget(total_usd=1e6, prices=PRICES, ledger=ledger)
    if go is not None:
        go.wait()
    for _ in range(count):
        held = budget.reserve(model=MODEL, prompt_tokens=20, max_output_tokens=16, n=1)
        budget.settle(held, prompt_tokens=20, completion_tokens=8)


def _throughput(workers: int, per_worker: int, processes: bool) -> float:
    """reserve+settle pairs per second with `workers` threads or processes on one ledger file.

    Workers start (processes import the SDK) before the clock does; a shared event releases them.
    """
    ledger = str(Path(tempfile.mkdtemp()) / "ledger.db")
    _hammer(ledger, 1)  # create the ledger before timing
    context = multiprocessing.get_context("spawn")
    go = context.Event() if processes else threading.Event()
    kind = context.Process if processes else threading.Thread
    runners = [kind(target=_hammer, args=(ledger, per_worker, go)) for _ in range(workers)]
    for runner in runners:
        runner.start()
    time.sleep(8.0 if processes else 0.2)  # let spawned interpreters finish importing
    start = time.perf_counter()
    go.set()
    for runner in runners:
        runner.join()
    return workers * per_worker / (time.perf_counter() - start)


def ledger_rows(per_worker: int) -> list[dict[str, object]]:
    """Ledger throughput for 1 thread (the baseline), 8 threads and 4 processes."""
    single = _throughput(1, per_worker, processes=False)
    rows = []
    for name, workers, processes in (("1 thread", 1, False), ("8 threads", 8, False), ("4 processes", 4, True)):
        rate = single if workers == 1 else _throughput(workers, per_worker, processes)
        rows.append({"benchmark": f"ledger throughput, {name}", "pairs_per_s": rate, "ratio": rate / single, "goal": "-"})
    return rows


def rows(quick: bool) -> list[dict[str, object]]:
    """All cache, budget and ledger rows; --quick uses fewer calls."""
    return (
        cache_rows(repeat=200 if quick else 1000, misses=3 if quick else 10)
        + budget_rows(repeat=200 if quick else 1000)
        + ledger_rows(per_worker=50 if quick else 200)
    )
