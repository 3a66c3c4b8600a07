"""`blackbox-sdk serve --keys` as a user runs it (the CLI, a key from `blackbox-sdk keys create`) in
front of the real llama.cpp server (the `hf:` backend for the Responses API, which llama.cpp's server lacks),
called by the official Node `openai` package and by curl: the examples in examples/node and examples/proxy_curl.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from blackbox_sdk import CallLog
from blackbox_sdk.local import free_port
from servers import PROXY_START_TIMEOUT_S

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SDK = [sys.executable, "-m", "blackbox_sdk"]


@contextmanager
def _serve(upstream: str, folder: Path) -> Iterator[tuple[str, str, Path]]:
    """(base URL, a tenant key, the call log) of `blackbox-sdk serve --keys` in front of `upstream`, run as a process."""
    env = {**os.environ, "BLACKBOX_ADMIN_KEY": "admin-key-for-the-tests-0123456789"}
    created = subprocess.run([*SDK, "keys", "create", "--store", str(folder / "keys.db"), "--name", "node-app"], env=env, capture_output=True, text=True, check=True)
    key = created.stdout.strip()
    port = free_port()
    command = [*SDK, "serve", "--upstream", upstream, "--port", str(port), "--keys", str(folder / "keys.db"),
               "--cache", str(folder / "cache"), "--log", str(folder / "calls.db")]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + PROXY_START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        yield f"http://127.0.0.1:{port}/v1", key, folder / "calls.db"
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def served(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The proxy as a process in front of the real llama.cpp server."""
    with _serve(llama_server, tmp_path_factory.mktemp("served")) as running:
        yield running


@pytest.fixture(scope="module")
def served_locally(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """The proxy as a process on the `hf:` backend (SmolLM2 in its process): llama.cpp's server has no /responses."""
    with _serve(f"hf:{gguf_path}", tmp_path_factory.mktemp("served-locally")) as running:
        yield running


def _run_node(example: str, url: str, key: str) -> dict[str, dict]:
    """Run a Node example against the proxy: its steps, by name."""
    assert (EXAMPLES / "node" / "node_modules" / "openai").is_dir(), "run scripts/setup.sh: it installs the Node example's packages"
    env = {**os.environ, "PROXY_URL": url, "PROXY_KEY": key}
    run = subprocess.run(["node", str(EXAMPLES / "node" / example)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return {line["step"]: line for line in map(json.loads, run.stdout.splitlines())}


def test_the_official_node_client_with_only_the_base_url_changed(served: tuple[str, str, Path]) -> None:
    url, key, log = served
    steps = _run_node("proxy_client.mjs", url, key)
    assert steps["create"]["text"] and steps["create"]["call_id"].startswith("bb-") and steps["create"]["cache_hit"] == "false"
    assert steps["again"]["cache_hit"] == "true" and steps["again"]["text"] == steps["create"]["text"]
    assert steps["stream"]["text"] and steps["stream"]["usage"]["completion_tokens"] > 0
    assert steps["bad request"]["status"] == 400
    records = [r for r in CallLog(log).calls() if r.call_id == steps["create"]["call_id"]]
    assert len(records) == 1 and records[0].key == "node-app"  # the tenant's name is the call's budget key


def test_the_node_clients_responses_api_whole_streamed_and_through_its_stream_helper(served_locally: tuple[str, str, Path]) -> None:
    url, key, log = served_locally
    steps = _run_node("responses_client.mjs", url, key)
    created, again = steps["create"], steps["again"]
    assert created["text"] and created["usage"]["output_tokens"] > 0
    assert created["call_id"].startswith("bb-") and created["request_id"] == created["call_id"] and created["cache_hit"] == "false"
    assert again["cache_hit"] == "true" and again["text"] == created["text"]
    stream = steps["stream"]
    events = stream["events"]
    assert events[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert events[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert set(events[4:-4]) == {"response.output_text.delta"} and stream["text"]
    assert stream["status"] == "completed" and stream["usage"]["output_tokens"] > 0
    helper = steps["stream helper"]
    assert helper["deltas"] and helper["output_text"] == helper["deltas"] and helper["status"] == "completed" and helper["usage"]["output_tokens"] > 0
    assert steps["bad request"] == {"step": "bad request", "status": 400, "type": "invalid_request_error", "param": "max_output_tokens"}
    records = [r for r in CallLog(log).calls() if r.call_id == created["call_id"]]
    assert len(records) == 1 and records[0].key == "node-app" and records[0].route == "responses"


def test_curl_gets_the_headers_and_raw_server_sent_events(served: tuple[str, str, Path]) -> None:
    url, key, _ = served
    run = subprocess.run(["bash", str(EXAMPLES / "proxy_curl.sh")], env={**os.environ, "PROXY_URL": url, "PROXY_KEY": key}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x-blackbox-call-id: bb-" in run.stdout.lower()
    events = [line for line in run.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def _logged(log: Path) -> int:
    """The call log's count once the server's batched writer has caught up (unchanged for a second)."""
    count, deadline = -1, time.monotonic() + 30
    while time.monotonic() < deadline:
        now = len(list(CallLog(log).calls()))
        if now == count:
            return now
        count = now
        time.sleep(1.0)
    return count


def test_a_wrong_key_is_refused_before_anything_is_sent(served: tuple[str, str, Path]) -> None:
    url, _, log = served
    before = _logged(log)
    reply = httpx2.post(f"{url}/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": "Bearer bb-" + "x" * 43}, timeout=30)
    assert reply.status_code == 401 and reply.json()["error"]["type"]
    assert _logged(log) == before
