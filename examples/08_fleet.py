"""A fleet in miniature: two processes, standing in for two hosts, share one cache and one budget
on Redis. The second host's identical question is a cache hit, and the shared cap refuses the call
that would cross it, whichever host makes it. Answers come from the embedded model (no API key).

Set REDIS_URL to use your Redis; without it, a throwaway redis-server runs on loopback.
Run: python examples/08_fleet.py
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from blackbox_sdk import Budget, BudgetExceededError, Cache, OpenAI
from blackbox_sdk.local import free_port

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # pretend the model is expensive: a few cents a call
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def start_redis(folder: str) -> tuple[str, subprocess.Popen[bytes] | None]:
    """REDIS_URL, or a throwaway redis-server on a free loopback port, its append-only file in ``folder`` (as
    docs/fleet.md asks of a ledger's Redis)."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    if shutil.which("redis-server") is None:
        raise SystemExit("set REDIS_URL, or install redis-server (apt-get install redis-server)")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", folder]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", server


def host(name: str, url: str, run: str, questions: list[str]) -> None:
    """One host of the fleet: its own process and client, the shared cache and budget."""
    budget = Budget(total_usd=0.2, prices=PRICES, ledger=url, ledger_prefix=f"example:{run}:")
    client = OpenAI(base_url="hf:default", cache=Cache(url, namespace=run), budget=budget)  # the embedded model
    for question in questions:
        messages = [{"role": "user", "content": question}]
        try:
            answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
        except BudgetExceededError as refused:
            print(f"{name}: refused before sending: {refused}")
            return
        info = answer.blackbox
        print(f"{name}: {question!r} -> cache_hit={info.cache_hit}, cost=${info.cost_usd:.4f}; fleet spent ${budget.spent():.4f} of $0.20")


def main() -> None:
    """Host A asks; host B asks the same (a hit), then new questions until the shared cap refuses."""
    folder = tempfile.mkdtemp(prefix="blackbox-fleet-")
    url, server = start_redis(folder)
    run = uuid.uuid4().hex[:8]  # this run's own keys, so that reruns start from nothing
    spawn = multiprocessing.get_context("spawn")
    try:
        for name, questions in (("host-a", [QUESTION[0]["content"]]), ("host-b", [QUESTION[0]["content"]] + [f"Name {n} fruits." for n in range(2, 9)])):
            process = spawn.Process(target=host, args=(name, url, run, questions))
            process.start()
            process.join()
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
