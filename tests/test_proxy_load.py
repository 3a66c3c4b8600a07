"""The proxy under a bounded load: 64 concurrent openai `AsyncOpenAI` clients, half of them streaming,
against `blackbox-sdk serve` (a process of its own, as deployed) with a budget that runs out during
the test; in front of an instant loopback upstream, then of the real llama.cpp server.

A fixed number of calls within a fixed time. Nothing fails but the budget's own refusals (429 or
402 with OpenAI's `insufficient_quota` body); spend stays within the cap; the ledger's settled spend
is the call log's; every served call is in the log; nothing is left reserved; a refusal reaches no
upstream.

llama-cpp-python's server ends a running stream early (`[DONE]` before any finish_reason) when
another request waits (its `interrupt_requests` setting, on by default), so under 64 clients the
`llama_server` fixture's server cuts nearly every stream. This test runs the same server on the
same GGUF with `--interrupt_requests False`, as one deploys it behind a proxy. A cut stream is
still passed on as the server sent it: the test counts such streams apart and checks that the log
has each as cut, charged for what arrived, as the library does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from typing_extensions import Self

from blackbox_sdk import Budget, CallLog
from blackbox_sdk.local import free_port

pytestmark = pytest.mark.slow

CLIENTS = 64
START_TIMEOUT_S = 120.0
PRICE = {"input": 1000.0, "output": 1000.0}  # USD per million tokens: a call costs cents


class Listener(ThreadingHTTPServer):
    """A threaded HTTP server whose listen queue takes a burst of CLIENTS new connections (the default 5 does not)."""

    request_queue_size = 4 * CLIENTS
    daemon_threads = True


class InstantUpstream:
    """An OpenAI-compatible chat endpoint on a free loopback port that answers at once, whole or as
    SSE (usage last when asked); 404 elsewhere (so no tokenize route). `requests` counts chat calls."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._send(404, "application/json", b'{"error": {"message": "no route"}}')
                with upstream._lock:
                    upstream.requests += 1
                if body.get("stream"):
                    return self._send(200, "text/event-stream", sse_answer(body))
                return self._send(200, "application/json", json.dumps(whole_answer(body)).encode())

            def _send(self, status: int, kind: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
                """Quiet."""

        self._server = Listener(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


USAGE = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}


def whole_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A whole chat completion."""
    message = {"role": "assistant", "content": "54"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"], "choices": [choice], "usage": USAGE}


def sse_answer(body: dict[str, Any]) -> bytes:
    """The same answer as OpenAI's event stream, a usage chunk last when asked, then [DONE]."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "54"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**head, "choices": [], "usage": USAGE})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def budgeted(upstream: str, model: str, cap_usd: float, folder: Path) -> str:
    """A proxy configuration: the upstream, a call log and a budget capped at `cap_usd` (SQLite files in `folder`)."""
    return (
        f'upstream = "{upstream}"\nlog = "{folder / "calls.db"}"\nmax_retries = 0\n'
        f'[budget]\ntotal_usd = {cap_usd}\nledger = "{folder / "ledger.db"}"\n'
        f'[budget.prices."{model}"]\ninput = {PRICE["input"]}\noutput = {PRICE["output"]}\n'
    )


class ServedProxy:
    """`python -m blackbox_sdk serve --config FILE` as a process of its own on a free loopback port, the
    configuration `settings` (TOML) written to `folder`; stopped with SIGTERM (graceful: the log and
    ledger are settled and closed) when the block ends. `env`: more environment for it."""

    def __init__(self, folder: Path, settings: str, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path, self.ledger_path = folder / "calls.db", folder / "ledger.db"
        config = folder / "proxy.toml"
        config.write_text(f"port = {self.port}\n{settings}")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BLACKBOX_"))}
        clean["BLACKBOX_LOG"] = "info"  # the SDK's log lines (an error's cause) in proxy.out, shown when a check fails
        self.output_path = folder / "proxy.out"
        self._output = self.output_path.open("wb")
        command = [sys.executable, "-m", "blackbox_sdk", "serve", "--config", str(config)]
        self.process = subprocess.Popen(command, stdout=self._output, stderr=subprocess.STDOUT, env={**clean, **(env or {})})

    def __enter__(self) -> Self:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx2.TransportError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"the proxy did not become ready: {self.errors()}")

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self._output.close()

    def errors(self) -> str:
        """The proxy's output lines that report an error or a traceback (the last 40)."""
        lines = self.output_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in lines if "INFO" not in line][-40:])


@pytest.fixture(scope="module")
def patient_llama(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) on the shipped GGUF, queueing requests
    rather than cutting a running stream when another arrives; yields its /v1 base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--model_alias", "smollm2", "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--interrupt_requests", "False",
    ]
    with (tmp_path_factory.mktemp("llama") / "server.log").open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"llama.cpp's server did not start (exit status {process.poll()})")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Outcome:
    """What the clients saw: served call ids (streamed or not), budget refusals, anything else."""

    served: list[str] = field(default_factory=list)  # whole answers and complete streams
    cut: list[str] = field(default_factory=list)  # streams the upstream ended before a finish_reason
    streamed: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def is_budget_refusal(error: Exception) -> bool:
    """A budget's refusal as the proxy maps it: 429 (or 402) with OpenAI's insufficient_quota body."""
    if not isinstance(error, openai.APIStatusError) or error.status_code not in (402, 429):
        return False
    body = error.body if isinstance(error.body, dict) else {}
    return body.get("code") == "insufficient_quota" and body.get("type") == "insufficient_quota"


async def one_call(client: openai.AsyncOpenAI, params: dict[str, Any], streaming: bool, outcome: Outcome) -> None:
    """One call, whole or streamed (with usage), its call id from the `x-blackbox-call-id` header."""
    try:
        if not streaming:
            raw = await client.chat.completions.with_raw_response.create(**params)
            completion = raw.parse()
            assert completion.choices[0].message.content, "an empty answer"
        else:
            raw = await client.chat.completions.with_raw_response.create(**params, stream=True, stream_options={"include_usage": True})
            chunks = [chunk async for chunk in raw.parse()]
            if not any(c.choices[0].finish_reason for c in chunks if c.choices):
                return outcome.cut.append(raw.headers["x-blackbox-call-id"])
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, "no usage chunk"
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "an empty stream"
            outcome.streamed += 1
        outcome.served.append(raw.headers["x-blackbox-call-id"])
    except Exception as error:  # noqa: BLE001 - every failure is sorted: a budget refusal or an error
        if is_budget_refusal(error):
            outcome.refused += 1
        else:
            outcome.errors.append(f"{type(error).__name__}: {error}")


async def load(base_url: str, model: str, calls_each: int, max_tokens: int, within_s: float, distinct: int | None = None) -> Outcome:
    """CLIENTS clients (every other one streaming), each making `calls_each` calls in turn, all within
    `within_s`; each call a new question, or when `distinct` is given client N's question N % distinct
    (so every distinct question is first asked as the clients start)."""
    outcome = Outcome()

    async def client_run(number: int) -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-load", max_retries=0, timeout=within_s) as client:
            for turn in range(calls_each):
                asked = number * calls_each + turn if distinct is None else number % distinct
                question = [{"role": "user", "content": f"Question {asked}: what is 26 plus 28?"}]
                params = {"model": model, "messages": question, "max_tokens": max_tokens, "temperature": 0}
                await one_call(client, params, number % 2 == 1, outcome)

    await asyncio.wait_for(asyncio.gather(*(client_run(n) for n in range(CLIENTS))), timeout=within_s)
    return outcome


def check_books(proxy: ServedProxy, outcome: Outcome, model: str, cap_usd: float, calls: int) -> None:
    """What the load must leave: only budget refusals, spend within the cap, the ledger equal to the log."""
    assert outcome.errors == [], f"{outcome.errors[:5]}\n{proxy.errors()}"
    assert len(outcome.served) + len(outcome.cut) + outcome.refused == calls
    assert outcome.served and outcome.refused, "the budget must run out during the test"
    assert outcome.streamed and outcome.streamed < len(outcome.served)
    report = Budget(prices={model: PRICE}, ledger=str(proxy.ledger_path)).report()
    assert 0 < report.spent_usd <= cap_usd
    assert report.outstanding_reservations == 0 and report.reserved_usd == 0
    log = CallLog(proxy.log_path)
    try:
        records = list(log.calls())
    finally:
        log.close()
    served, cut = set(outcome.served), set(outcome.cut)
    assert len(served | cut) == len(outcome.served) + len(outcome.cut)  # one call id per call
    assert {r.call_id for r in records if r.error is None} == served  # every served call logged, once
    assert all(r.cost_usd > 0 and r.usage for r in records if r.call_id in served)  # each charged for its tokens
    assert {r.call_id for r in records if r.error and "ended the stream before" in r.error} == cut
    refused = [r for r in records if r.error and "budget" in r.error]
    assert len(refused) == outcome.refused and all(r.cost_usd == 0 for r in refused)  # each refusal logged, free
    assert len(records) == calls  # nothing else in the log
    assert sum(r.cost_usd for r in records) == pytest.approx(report.spent_usd, abs=1e-9 * len(records))


def test_64_clients_against_an_instant_upstream_until_the_budget_runs_out(tmp_path: Path) -> None:
    calls_each, cap = 6, 2.0  # 384 calls; a call costs $0.014 and reserves more: the cap runs out about halfway
    with InstantUpstream() as upstream, ServedProxy(tmp_path, budgeted(upstream.url, "m", cap, tmp_path)) as proxy:
        started = time.monotonic()
        outcome = asyncio.run(load(proxy.base_url, "m", calls_each, 8, within_s=45.0))
        elapsed = time.monotonic() - started
    assert upstream.requests == len(outcome.served) and not outcome.cut  # a refusal reaches no upstream; nothing retried
    check_books(proxy, outcome, "m", cap, CLIENTS * calls_each)
    assert elapsed < 45.0


def test_64_clients_against_llama_cpp_until_the_budget_runs_out(patient_llama: str, tmp_path: Path) -> None:
    # 128 calls; a call costs a few cents: about 20 are served. Four distinct questions, each first
    # asked as the clients start (no cache, so every call is sent): the SDK counts a prompt on
    # llama.cpp's tokenize route once per distinct text, a blocking request that waits behind the
    # generations queued there and times out after 10 s (the proxy then answers 504).
    calls_each, cap = 2, 0.6
    with ServedProxy(tmp_path, budgeted(patient_llama, "smollm2", cap, tmp_path)) as proxy:
        outcome = asyncio.run(load(proxy.base_url, "smollm2", calls_each, 4, within_s=120.0, distinct=4))
    check_books(proxy, outcome, "smollm2", cap, CLIENTS * calls_each)


def test_two_replicas_share_keys_budgets_and_cache_on_redis(redis_server: Any, tmp_path: Path) -> None:
    """The replica setup of docs/proxy.md (examples/deploy/proxy.toml) on loopback: two proxies, one
    real Redis holding the keys, the ledger, the rate windows and the cache; requests alternate."""
    url, env = redis_server.url, {"BLACKBOX_ADMIN_KEY": "an-admin-key-for-this-test-only"}
    keys = [sys.executable, "-m", "blackbox_sdk", "keys"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BLACKBOX_"))}
    key = subprocess.run([*keys, "create", "--name", "team-a", "--budget-usd", "0.1", "--store", url], env=clean, capture_output=True, text=True, check=True).stdout.strip()
    shared = (
        f'keys = "{url}"\ncache = "{url}"\nlog = "{tmp_path / "calls.db"}"\nmax_retries = 0\n'
        f'[budget]\ntotal_usd = 100.0\nledger = "{url}"\n[budget.prices.m]\ninput = {PRICE["input"]}\noutput = {PRICE["output"]}\n'
        f'[rate_limit]\nrpm = 1000\nper = "key"\nstore = "{url}"\n'
    )
    with (
        InstantUpstream() as upstream,
        ServedProxy(tmp_path / "a", f'upstream = "{upstream.url}"\n{shared}', env) as a,
        ServedProxy(tmp_path / "b", f'upstream = "{upstream.url}"\n{shared}', env) as b,
    ):

        def ask(proxy: ServedProxy, question: str) -> httpx2.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": question}], "max_tokens": 4}
            return httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)

        first, again = ask(a, "the same question"), ask(b, "the same question")
        statuses = [ask((a, b)[turn % 2], f"question {turn}").status_code for turn in range(12)]
        subprocess.run([*keys, "revoke", "team-a", "--store", url], env=clean, capture_output=True, check=True)
        after = [ask(proxy, "after the revoke").status_code for proxy in (a, b)]
    assert first.headers["x-blackbox-cache-hit"] == "false" and again.headers["x-blackbox-cache-hit"] == "true"  # one cache
    served = statuses.index(429)  # the key's $0.10 runs out, counted across both replicas on one ledger
    assert served >= 2 and statuses[:served] == [200] * served and set(statuses[served:]) == {429}
    assert upstream.requests == 1 + served  # the cache hit and the refusals sent nothing
    log = CallLog(tmp_path / "calls.db")
    try:
        spent = sum(record.cost_usd for record in log.calls())
    finally:
        log.close()
    assert 0 < spent <= 0.1
    assert after == [401, 401]  # revoked once, refused by every replica

@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        pytest.param(httpx2.ReadTimeout("timed out"), 504, "upstream_timeout", id="timeout"),
        pytest.param(httpx2.ConnectError("refused"), 502, "upstream_unreachable", id="unreachable"),
    ],
)
def test_an_sdk_request_of_its_own_failing_is_an_upstream_error_not_a_500(error: Exception, status: int, code: str) -> None:
    # What the llama.cpp run above met under load before it used few distinct questions: the SDK's
    # count on the tokenize route timing out raised httpx2.ReadTimeout, which the proxy answered 500.
    from blackbox_sdk.serve._errors import describe

    answered, body, _ = describe(error)
    assert (answered, body["error"]["code"], body["error"]["type"]) == (status, code, "upstream_error")
