"""`blackbox-sdk serve` against LiteLLM's proxy, side by side in one run, over one instant upstream.

Targets, all in front of the same instant loopback upstream (a process of its own that answers a
chat completion, whole or as SSE, at once):
- `direct`: the upstream itself (the baseline);
- `blackbox-sdk serve`: `python -m blackbox_sdk serve` as a process, caching, budgets and log off;
- `blackbox-sdk serve, cache+budget+log`: the same with a cache folder, a priced budget on an
  SQLite ledger and an SQLite call log (every request is a new question: all cache misses);
- `blackbox-sdk serve, uvloop+httptools` (only when BENCH_PROXY_UVICORN_EXTRAS names a folder
  holding them): ours with uvicorn's fast event loop and HTTP parser, which LiteLLM's proxy installs;
- `openai's AsyncOpenAI, direct`: no proxy, openai's own client from the measuring process to the
  upstream (latency only): what that client costs per request, the floor of a proxy that, like
  ours, sends upstream through it;
- `litellm proxy`: LiteLLM's proxy (`litellm --config`, one worker, caching and budgets off, no
  database), from its own virtual environment (`scripts/litellm_env.sh`), with a fake key only.

Measured for each: latency per request with one client at a time (p50 and p99, and what the proxy
adds to direct), requests/s with 64 concurrent clients over a fixed time, time to first byte of a
stream (p50), the CPU time the serving process spends per request under that load (user + system,
its whole process tree: unlike latency, this does not grow with the machine's other load), and the
proxy process's resident memory after the load;
for ours with a cache, also the latency of a cache hit (one question asked again and again). Every
other request is a new question, so caches only miss.
Latency rounds are interleaved over the targets so drift on the machine hits all alike.

The load generator is a raw asyncio HTTP/1.1 client on keep-alive connections (one connection per
client, no openai/httpx on the measuring side) in a process of its own; `direct` shows its ceiling:
when direct serves many times the proxies' requests/s, the generator is not what limits them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import psutil

from blackbox_sdk.local import free_port

LITELLM_VENV = Path(os.environ.get("LITELLM_VENV") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blackbox-sdk" / "venv-litellm")
MODEL = "m"
# optional: a folder holding uvloop and httptools (`pip install --target DIR uvloop httptools`): one more row, ours with them
UVICORN_EXTRAS = os.environ.get("BENCH_PROXY_UVICORN_EXTRAS")
CLIENTS = 64
START_TIMEOUT_S = 90.0
FULL = {"latency_rounds": 400, "ttfb_rounds": 200, "load_s": 6.0}
QUICK = {"latency_rounds": 60, "ttfb_rounds": 30, "load_s": 2.0}
GOAL_ADDED_P50_MS = 1.0
GOAL_RPS_VS_LITELLM = 2.0
FAKE_KEY = f"sk-fake-{secrets.token_hex(24)}"  # every request's bearer key: LiteLLM's master key for this run, ignored by ours (no key store)


@dataclass
class Target:
    """One thing to send requests to: its name, host and port, and the process serving it (None: the upstream)."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    note: str = ""


# ---- the instant upstream: a raw asyncio HTTP/1.1 server, run as `python bench_proxy.py upstream PORT`

WHOLE = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "54"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}


def _sse_body() -> bytes:
    """The same answer as OpenAI's event stream, a usage chunk last, then [DONE]."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "54"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": WHOLE["usage"]},
    ]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _reply(status: str, kind: str, body: bytes) -> bytes:
    """A whole HTTP/1.1 response with its length (the connection stays open)."""
    return f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


ANSWERS = {
    False: _reply("200 OK", "application/json", json.dumps(WHOLE).encode()),
    True: _reply("200 OK", "text/event-stream", _sse_body()),
}
NOT_FOUND = _reply("404 Not Found", "application/json", b'{"error": {"message": "no such route"}}')


async def _upstream_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request on one keep-alive connection at once: chat completions whole or streamed, 404 elsewhere."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0)
            body = await reader.readexactly(length)
            if lines[0].split(" ")[1].rstrip("/").endswith("/chat/completions"):
                writer.write(ANSWERS[b'"stream":true' in body.replace(b" ", b"")])
            else:
                writer.write(NOT_FOUND)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _upstream_main(port: int) -> None:
    """Serve the instant upstream on 127.0.0.1:port until killed."""
    server = await asyncio.start_server(_upstream_connection, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---- the load generator: raw HTTP/1.1 on keep-alive connections


class Connection:
    """One keep-alive HTTP/1.1 connection; `post` sends a JSON body and reads the whole answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, float, float]:
        """(status, seconds to the first body byte, seconds to the end) of one POST; sent again once on a
        fresh connection when the server had closed the kept-alive one (as HTTP clients do)."""
        reused = self.writer is not None
        try:
            return await self._post(path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            if not reused:
                raise
            return await self._post(path, body)

    async def _post(self, path: str, body: bytes) -> tuple[int, float, float]:
        """One POST on this connection (opened first when it is not)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nauthorization: Bearer {FAKE_KEY}\r\ncontent-length: {len(body)}\r\n\r\n"
        started = time.perf_counter()
        self.writer.write(head.encode() + body)
        assert self.reader is not None
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        first = await self._body(headers, started)
        return int(lines[0].split(" ")[1]), first, time.perf_counter() - started

    async def _body(self, headers: dict[str, str], started: float) -> float:
        """Read the body (by length or chunked); seconds from `started` to its first byte."""
        assert self.reader is not None
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
            return time.perf_counter() - started
        first = 0.0
        while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
            await self.reader.readexactly(size + 2)
            first = first or time.perf_counter() - started
        await self.reader.readuntil(b"\r\n")
        return first

    def close(self) -> None:
        """Close the socket."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Questions:
    """Request bodies, each a new question across the whole run (so a cache never hits; the SDK's cache
    serves a streamed request from a whole answer, so phases must not repeat questions either);
    `repeat` asks one question over and over instead (every call after the first a cache hit)."""

    asked = itertools.count(1)

    def __init__(self, repeat: bool = False) -> None:
        self.repeat = repeat

    def body(self, stream: bool) -> bytes:
        """The next chat request."""
        number = 0 if self.repeat else next(self.asked)
        message = {"role": "user", "content": f"Question {number}: what is 26 plus 28?"}
        return json.dumps({"model": MODEL, "messages": [message], "max_tokens": 8, "stream": stream}).encode()


PATH = "/v1/chat/completions"


async def sequential(targets: list[Target], rounds: int, stream: bool, repeat: bool = False) -> dict[str, list[tuple[float, float]]]:
    """(first byte, total) seconds of `rounds` requests per target, one at a time, interleaved over the targets
    (`repeat`: the same question each time)."""
    connections = {t.name: Connection(t.port) for t in targets}
    questions = Questions(repeat)
    times: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
    for number in range(rounds + 5):  # the first 5 warm up
        for target in targets:
            status, first, total = await connections[target.name].post(PATH, questions.body(stream))
            if status != 200:
                raise RuntimeError(f"{target.name} answered {status}")
            if number >= 5:
                times[target.name].append((first, total))
    for connection in connections.values():
        connection.close()
    return times


async def openai_client_times(port: int, rounds: int) -> list[float]:
    """Seconds per request of openai's own `AsyncOpenAI` against the upstream directly: the floor of any
    proxy that, like ours, sends through it (what the client itself costs beside the raw client's `direct`)."""
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=FAKE_KEY, max_retries=0)
    questions, times = Questions(), []
    for number in range(rounds + 5):
        body = json.loads(questions.body(False))
        started = time.perf_counter()
        await client.chat.completions.create(**body)
        if number >= 5:
            times.append(time.perf_counter() - started)
    await client.close()
    return times


async def throughput(port: int, seconds: float) -> tuple[int, int]:
    """Failed and served requests (whole answers) of CLIENTS clients on their own connections for `seconds`."""
    questions = Questions()
    done = failed = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done, failed
        connection = Connection(port)
        while time.perf_counter() < stop:
            status, _, _ = await connection.post(PATH, questions.body(False))
            done, failed = done + (status == 200), failed + (status != 200)
        connection.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return failed, done


# ---- the processes: upstream, our proxy, LiteLLM's proxy


def _quiet_env(**extra: str) -> dict[str, str]:
    """This environment without any OpenAI or SDK setting (no real key reaches a proxy), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BLACKBOX_", "LITELLM_"))}
    return {**env, **extra}


def _wait_ready(target: Target, path: str) -> None:
    """Until GET path answers 200 (or the process died, or START_TIMEOUT_S passed)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if target.process is not None and target.process.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.process.returncode}")
        try:
            if httpx2.get(f"http://127.0.0.1:{target.port}{path}", timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} was not ready within {START_TIMEOUT_S:.0f} s")


@contextmanager
def _process(name: str, command: list[str], ready: str, folder: Path, env: dict[str, str], port: int) -> Iterator[Target]:
    """A target served by `command` (output in folder/NAME.log), ready when GET `ready` answers 200; stopped after."""
    log = (folder / f"{name.split()[0]}-{port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    target = Target(name, port, process)
    try:
        _wait_ready(target, ready)
        yield target
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def _upstream_process(folder: Path) -> Iterator[Target]:
    """The instant upstream as a process of its own, ready once it answers a request."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "upstream", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=_quiet_env(), cwd=folder)
    target = Target("direct", port, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=5)
                break
            except httpx2.TransportError:
                time.sleep(0.05)
        yield target
    finally:
        process.terminate()
        process.wait()


def _ours(name: str, upstream: str, folder: Path, features: bool, extras: str | None = None) -> Any:
    """`python -m blackbox_sdk serve` in front of `upstream`; with a cache, a priced budget and a log when `features`;
    `extras`: a folder put first on its PYTHONPATH (uvloop and httptools there, which uvicorn then picks)."""
    port = free_port()
    config = folder / f"ours-{port}.toml"
    text = f'upstream = "{upstream}"\nport = {port}\nmax_retries = 0\n'
    if features:
        text += f'cache = "{folder / "cache"}"\nlog = "{folder / "calls.db"}"\n'
        text += f'[budget]\ntotal_usd = 1000000.0\nledger = "{folder / "ledger.db"}"\n[budget.prices.{MODEL}]\ninput = 1.0\noutput = 2.0\n'
    config.write_text(text)
    command = [sys.executable, "-m", "blackbox_sdk", "serve", "--config", str(config)]
    env = _quiet_env() if extras is None else _quiet_env(PYTHONPATH=os.pathsep.join(filter(None, [extras, os.environ.get("PYTHONPATH")])))
    return _process(name, command, "/readyz", folder, env, port)


def litellm_problem() -> str | None:
    """Why LiteLLM's proxy can't run here (None when its virtual environment is ready)."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if not executable.exists():
        return f"not run: {executable} is missing (bash scripts/litellm_env.sh makes it)"
    return None


def litellm_version() -> str:
    """The installed LiteLLM's version, read from its virtual environment."""
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    return subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def _litellm(upstream: str, folder: Path) -> Any:
    """LiteLLM's proxy (one worker, no database, caching and budgets off) in front of `upstream`, with fake keys
    (a throwaway master key, which it requires to start, and a placeholder upstream key)."""
    port = free_port()
    config = folder / "litellm.yaml"
    config.write_text(
        f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {upstream}\n      api_key: sk-fake-not-a-key\n"
        "litellm_settings:\n  telemetry: false\n  cache: false\n"
        f"general_settings:\n  master_key: {FAKE_KEY}\n"
    )
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = _quiet_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="true")
    return _process(f"litellm proxy {litellm_version()}", command, "/health/liveliness", folder, env, port)


def _tree(target: Target) -> list[psutil.Process]:
    """The target's process and its children."""
    assert target.process is not None
    root = psutil.Process(target.process.pid)
    return [root, *root.children(recursive=True)]


def cpu_s(target: Target) -> float:
    """CPU seconds (user + system) the target's processes have used so far."""
    return sum(sum(p.cpu_times()[:2]) for p in _tree(target))


def rss_mb(target: Target) -> float | None:
    """Resident memory of the target's process and its children, in MiB (None for the upstream itself)."""
    if target.process is None or target.name == "direct":
        return None
    return sum(p.memory_info().rss for p in _tree(target)) / 2**20


# ---- the measurement and its rows


def _ms(values: list[float], q: float) -> float:
    """The q-quantile of seconds, in milliseconds."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] * 1e3 if q < 1 else max(values) * 1e3


LOAD_ROUNDS = 3  # the load time of each target is split into rounds taken in turn, so drift hits all alike


def loaded(targets: list[Target], seconds: float) -> dict[str, tuple[float, int, float]]:
    """Per target under CLIENTS clients for `seconds` in all: requests/s, failures, and CPU ms per request."""
    totals = {t.name: [0.0, 0, 0, 0.0] for t in targets}  # seconds, answers, failures, CPU seconds
    for _ in range(LOAD_ROUNDS):
        for target in targets:
            used, started = cpu_s(target), time.perf_counter()
            failed, served = asyncio.run(throughput(target.port, seconds / LOAD_ROUNDS))
            total = totals[target.name]
            total[0] += time.perf_counter() - started
            total[1] += served
            total[2] += failed
            total[3] += cpu_s(target) - used
    return {name: (served / spent, int(failed), cpu / max(served, 1) * 1e3) for name, (spent, served, failed, cpu) in totals.items()}


def measure(targets: list[Target], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Latency, streams' first byte, requests/s at CLIENTS clients and memory for each target; ratios against direct."""
    whole = asyncio.run(sequential(targets, config["latency_rounds"], stream=False))
    streamed = asyncio.run(sequential(targets, config["ttfb_rounds"], stream=True))
    cached = [t for t in targets if "cache" in t.name]
    hits = asyncio.run(sequential(cached, config["ttfb_rounds"], stream=False, repeat=True))
    load = loaded(targets, config["load_s"])
    rows = []
    for target in targets:
        rps, failed, cpu_ms = load[target.name]
        totals, firsts = [t for _, t in whole[target.name]], [f for f, _ in streamed[target.name]]
        rows.append({
            "target": target.name, "p50_ms": _ms(totals, 0.5), "p99_ms": _ms(totals, 0.99),
            "ttfb_p50_ms": _ms(firsts, 0.5), f"rps_{CLIENTS}_clients": rps, "failed": failed,
            "cpu_ms_per_request": cpu_ms, "rss_mib": rss_mb(target),
            "cache_hit_p50_ms": _ms([t for _, t in hits[target.name]], 0.5) if target in cached else None,
        })
    floor = asyncio.run(openai_client_times(targets[0].port, config["latency_rounds"]))
    rows.insert(1, {"target": "openai's AsyncOpenAI, direct (no proxy)", "p50_ms": _ms(floor, 0.5), "p99_ms": _ms(floor, 0.99)})
    base = rows[0]
    for row in rows:
        row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
        row["added_p99_ms"] = row["p99_ms"] - base["p99_ms"]
        if "ttfb_p50_ms" in row:
            row["added_ttfb_ms"] = row["ttfb_p50_ms"] - base["ttfb_p50_ms"]
            row["rps_vs_direct"] = row[f"rps_{CLIENTS}_clients"] / base[f"rps_{CLIENTS}_clients"]
    return rows


def goal_rows(rows: list[dict[str, Any]], litellm_note: str | None) -> list[dict[str, Any]]:
    """The goals: ours adds < 1 ms at p50; ours serves >= 2x LiteLLM's requests/s."""
    ours = next(r for r in rows if r["target"] == "blackbox-sdk serve")
    goals = [{"target": "goal: ours adds < 1 ms at p50", "added_p50_ms": ours["added_p50_ms"], "met": ours["added_p50_ms"] < GOAL_ADDED_P50_MS}]
    litellm = next((r for r in rows if r["target"].startswith("litellm") and "note" not in r), None)
    key = f"rps_{CLIENTS}_clients"
    if litellm is None:
        goals.append({"target": "goal: ours >= 2x LiteLLM's requests/s", "met": None, "note": litellm_note})
        return goals
    ratio = ours[key] / litellm[key]
    goals.append({"target": "goal: ours >= 2x LiteLLM's requests/s", "rps_vs_litellm": ratio, "met": ratio >= GOAL_RPS_VS_LITELLM})
    goals.append({"target": "ours vs LiteLLM, added p50", "added_p50_ms": ours["added_p50_ms"], "litellm_added_p50_ms": litellm["added_p50_ms"]})
    return goals


def rows(quick: bool = False) -> list[dict[str, Any]]:
    """Every target in front of one instant upstream, measured in one run."""
    config = QUICK if quick else FULL
    folder = Path(tempfile.mkdtemp(prefix="bb-bench-proxy-"))
    problem = litellm_problem()
    try:
        with ExitStack() as stack:
            direct = stack.enter_context(_upstream_process(folder))
            upstream = f"http://127.0.0.1:{direct.port}/v1"
            targets = [direct, stack.enter_context(_ours("blackbox-sdk serve", upstream, folder, features=False))]
            targets.append(stack.enter_context(_ours("blackbox-sdk serve, cache+budget+log", upstream, folder, features=True)))
            if UVICORN_EXTRAS:
                targets.append(stack.enter_context(_ours("blackbox-sdk serve, uvloop+httptools", upstream, folder, False, UVICORN_EXTRAS)))
            if problem is None:
                try:
                    targets.append(stack.enter_context(_litellm(upstream, folder)))
                except (RuntimeError, subprocess.CalledProcessError) as error:
                    problem = f"not run: {error}; its output is in {folder}"
            measured = measure(targets, config)
    finally:
        if problem is None:
            shutil.rmtree(folder, ignore_errors=True)
    if problem is not None:
        measured.append({"target": "litellm proxy", "note": problem})
    return measured + goal_rows(measured, problem)


if __name__ == "__main__" and sys.argv[1:2] == ["upstream"]:
    asyncio.run(_upstream_main(int(sys.argv[2])))
