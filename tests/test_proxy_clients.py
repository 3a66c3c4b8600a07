"""`blackbox-sdk serve --keys` as a user runs it (the CLI, a key from `blackbox-sdk keys create`) in
front of the real llama.cpp server, called by the official Node `openai` package and by curl: the
examples in examples/node and examples/proxy_curl.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from blackbox_sdk import CallLog
from blackbox_sdk.local import free_port

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SDK = [sys.executable, "-m", "blackbox_sdk"]


@pytest.fixture(scope="module")
def served(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(base URL, a tenant key, the call log) of `blackbox-sdk serve --keys` run as a process."""
    folder = tmp_path_factory.mktemp("served")
    env = {**os.environ, "BLACKBOX_ADMIN_KEY": "admin-key-for-the-tests-0123456789"}
    created = subprocess.run([*SDK, "keys", "create", "--store", str(folder / "keys.db"), "--name", "node-app"], env=env, capture_output=True, text=True, check=True)
    key = created.stdout.strip()
    port = free_port()
    command = [*SDK, "serve", "--upstream", llama_server, "--port", str(port), "--keys", str(folder / "keys.db"),
               "--cache", str(folder / "cache"), "--log", str(folder / "calls.db")]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        yield f"http://127.0.0.1:{port}/v1", key, folder / "calls.db"
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_the_official_node_client_with_only_the_base_url_changed(served: tuple[str, str, Path]) -> None:
    url, key, log = served
    assert (EXAMPLES / "node" / "node_modules" / "openai").is_dir(), "run scripts/setup.sh: it installs the Node example's packages"
    env = {**os.environ, "PROXY_URL": url, "PROXY_KEY": key}
    run = subprocess.run(["node", str(EXAMPLES / "node" / "proxy_client.mjs")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line["step"]: line for line in map(json.loads, run.stdout.splitlines())}
    assert steps["create"]["text"] and steps["create"]["call_id"].startswith("bb-") and steps["create"]["cache_hit"] == "false"
    assert steps["again"]["cache_hit"] == "true" and steps["again"]["text"] == steps["create"]["text"]
    assert steps["stream"]["text"] and steps["stream"]["usage"]["completion_tokens"] > 0
    assert steps["bad request"]["status"] == 400
    records = [r for r in CallLog(log).calls() if r.call_id == steps["create"]["call_id"]]
    assert len(records) == 1 and records[0].key == "node-app"  # the tenant's name is the call's budget key


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
