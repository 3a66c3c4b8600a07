"""Per-call overhead of the SDK over the bare openai client, and the local HF backend's tokens/s.

Rows:
- `wrapper vs bare, llama.cpp server`: the same request to the same local server through
  `openai.OpenAI` and `blackbox_sdk.OpenAI` (no cache, no budget), interleaved; median ratio
  (goal < 1.05).
- `wrapper vs bare, in-process transport`: the same, over an in-memory httpx2 transport, so the
  SDK's own per-call cost is not hidden by generation time (microseconds added per call).
- `hf backend`: completion tokens per second for n=1 and n=8 (one batched generate).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
    return server_rows(10 if quick else 40) + transport_rows(100 if quick else 1000) + hf_rows(16 if quick else 48)
