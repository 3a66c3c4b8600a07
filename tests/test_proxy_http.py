"""Hostile HTTP against `blackbox-sdk serve` as deployed (a process of its own on a free loopback port): headers
that never finish (slowloris) are cut off at `--header-timeout` with a 408 while other connections are served, an
unread body trickled after the answer is cut off at `body_timeout_s`, headers past 64 KiB are a 431, bytes that are
not HTTP get OpenAI's 400 body, numbers no ledger or parser can hold are 400s naming the field they are in, and
connections past `--max-connections` get OpenAI's 503 with Retry-After, which the openai client waits out and retries."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import openai
import pytest

from servers import InstantUpstream, proxy_ready

from blackbox_sdk.local import free_port
from blackbox_sdk.serve._http import MAX_HEADER_BYTES

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 1.0
SLACK_S = 1.5  # how late past a deadline a busy machine may still close the connection
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`python -m blackbox_sdk serve --config F --header-timeout 0.5` with a budget, its upstream a closed port."""
    folder = tmp_path_factory.mktemp("proxy-http")
    port = free_port()
    config = folder / "proxy.toml"
    config.write_text(
        f'port = {port}\nupstream = "http://127.0.0.1:{free_port()}/v1"\nmax_retries = 0\nbody_timeout_s = {BODY_TIMEOUT_S}\n'
        f'[budget]\ntotal_usd = 10.0\nledger = "{folder / "ledger.db"}"\n[budget.prices.m]\ninput = 1.0\noutput = 1.0\n'
    )
    with _serving(port, "--config", str(config), "--header-timeout", str(HEADER_TIMEOUT_S)):
        yield port


@contextmanager
def _serving(port: int, *arguments: str) -> Iterator[None]:
    """`python -m blackbox_sdk serve ARGUMENTS` as a process of its own, without the developer's settings; stopped after."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BLACKBOX_"))}
    command = [sys.executable, "-m", "blackbox_sdk", "serve", *arguments]
    process = subprocess.Popen(command, env=clean, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not proxy_ready(port, process, 60):
            raise RuntimeError("the proxy did not become ready")
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def _until_closed(sock: socket.socket, trickle: bytes = b"", every_s: float = 0.2, limit_s: float = 10.0) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took; `trickle` is sent a byte at a
    time every `every_s` meanwhile (a slowloris client). Fails if the connection is still open after `limit_s`."""
    start, received, sent = time.monotonic(), b"", 0
    sock.settimeout(every_s)
    while time.monotonic() - start < limit_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if sent < len(trickle):
                sock.sendall(trickle[sent:sent + 1])
                sent += 1
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail(f"the connection was still open after {limit_s} s")
    return received, time.monotonic() - start


def _error(reply: bytes) -> tuple[bytes, dict[str, object]]:
    """A raw reply's status line and its OpenAI error object."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower() and b"x-request-id" in head.lower()
    return head.split(b"\r\n")[0], json.loads(body)["error"]


def test_headers_that_never_finish_are_answered_408_and_closed_while_others_are_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200  # another connection
        reply, took = _until_closed(slow, trickle=b"X-Slow: " + b"a" * 100)  # a byte every 0.2 s: never the end
    status, error = _error(reply)
    assert status == b"HTTP/1.1 408 Request Timeout" and error["code"] == "request_timeout"
    assert took < HEADER_TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as idle:
        reply, took = _until_closed(idle)
    assert reply == b"" and took < HEADER_TIMEOUT_S + SLACK_S


def test_the_next_request_on_a_kept_connection_is_timed_too(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        reply, took = _until_closed(kept, trickle=b"Host: 127.0.0.1\r\n" * 10)
    assert _error(reply)[0] == b"HTTP/1.1 408 Request Timeout" and took < HEADER_TIMEOUT_S + SLACK_S


def test_a_body_trickled_after_the_answer_is_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as slow:  # a route that answers without reading the body
        slow.sendall(b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        reply, took = _until_closed(slow, trickle=b"x" * 1000)
    assert _error(reply)[0] == b"HTTP/1.1 404 Not Found" and took < BODY_TIMEOUT_S + SLACK_S


def test_headers_past_the_limit_are_refused_431_and_a_large_body_is_not(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as long:
        long.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * (MAX_HEADER_BYTES + 1))
        reply, took = _until_closed(long)
    status, error = _error(reply)
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large" and error["code"] == "request_headers_too_large"
    assert took < HEADER_TIMEOUT_S  # at once, not at the deadline
    headers = {"content-type": "application/json", "x-near-the-limit": "a" * (MAX_HEADER_BYTES - 1024)}
    answer = httpx2.post(f"http://127.0.0.1:{port}/v1/files", content=b" " * (1024 * 1024), headers=headers, timeout=30)
    assert answer.status_code == 404  # headers just under the limit, sent with a megabyte of body in the same reads


def test_bytes_that_are_not_http_get_openais_400_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as garbage:
        garbage.sendall(b"GARBAGE\r\n\r\n")
        reply, _ = _until_closed(garbage)
    status, error = _error(reply)
    assert status == b"HTTP/1.1 400 Bad Request"
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_http_request"


@pytest.mark.parametrize("number", [b"1" + b"0" * 5000, b"1" + b"0" * 5000 + b".5", b"1e400"], ids=["int", "float", "exponent"])
def test_a_number_too_large_to_read_is_a_400_naming_its_field(port: int, number: bytes) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + number + b"}"
    answer = httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "max_tokens" and error["code"] == "invalid_json"
    assert "max_tokens holds a number too large" in error["message"] and len(error["message"]) < 200


@pytest.mark.parametrize(
    ("path", "cap", "body"),
    [
        pytest.param("/chat/completions", "max_tokens", {"messages": HELLO}, id="chat-max-tokens"),
        pytest.param("/chat/completions", "max_completion_tokens", {"messages": HELLO}, id="chat-max-completion-tokens"),
        pytest.param("/completions", "max_tokens", {"prompt": "hi"}, id="completions"),
        pytest.param("/responses", "max_output_tokens", {"input": "hi"}, id="responses"),
    ],
)
def test_an_output_cap_no_ledger_counts_is_a_400_naming_the_callers_parameter(port: int, path: str, cap: str, body: dict[str, object]) -> None:
    answer = httpx2.post(f"http://127.0.0.1:{port}/v1{path}", json={"model": "m", cap: 2**53, **body}, timeout=30)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == cap and error["message"].startswith(f"{cap} must be an integer")


def test_a_pipelined_requests_body_is_timed_by_the_app_that_reads_it(port: int) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    second = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    with socket.create_connection(("127.0.0.1", port)) as pipelined:
        pipelined.sendall(first + second)  # the second body stalls: its app answers 408, the first's answer does not cut it off
        reply, took = _until_closed(pipelined)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.count(b"HTTP/1.1 ") == 2
    status, error = _error(reply[reply.rindex(b"HTTP/1.1 "):])
    assert status == b"HTTP/1.1 408 Request Timeout" and error["code"] == "request_timeout"
    assert took < 2 * BODY_TIMEOUT_S + SLACK_S


CAP = 4  # the capped proxy's --max-connections


@pytest.fixture(scope="module")
def capped() -> Iterator[int]:
    """`python -m blackbox_sdk serve --max-connections 4` in front of an upstream that answers every chat at once."""
    upstream = InstantUpstream({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}]})
    port = free_port()
    try:
        with _serving(port, "--upstream", upstream.url, "--port", str(port), "--max-connections", str(CAP)):
            yield port
    finally:
        upstream.close()


def _served(port: int, count: int) -> list[http.client.HTTPConnection]:
    """`count` kept-alive connections, each served one request (200): they hold their places until closed."""
    time.sleep(0.2)  # the connections of earlier tests, closed, are gone from the proxy's count
    held = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("connection") != "close"
        held.append(connection)
    return held


def test_connections_past_the_cap_get_openais_503_with_retry_after_and_places_free_when_closed(capped: int) -> None:
    held = _served(capped, CAP)
    extra = [http.client.HTTPConnection("127.0.0.1", capped, timeout=10) for _ in range(2)]
    for connection in extra:
        connection.connect()
    for connection in extra:
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        error = json.loads(answer.read())["error"]
        assert answer.status == 503 and answer.getheader("retry-after") == "1" and answer.getheader("connection") == "close"
        assert answer.getheader("content-type") == "application/json" and answer.getheader("x-request-id")
        assert error == {"message": error["message"], "type": "server_error", "param": None, "code": "server_busy"} and str(CAP) in error["message"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{capped}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError) as refused:  # a POST with its body, read by the official client
        client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    assert refused.value.status_code == 503 and refused.value.code == "server_busy"
    for connection in held:
        connection.request("GET", "/healthz")  # the places held are still served
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
        connection.close()
    for connection in extra:
        connection.close()
    for connection in _served(capped, CAP):  # once closed, their places serve new connections
        connection.close()


def test_the_openai_client_waits_retry_after_and_is_served_once_a_place_frees(capped: int) -> None:
    held = _served(capped, CAP)
    statuses: list[int] = []
    hooks = {"response": [lambda response: statuses.append(response.status_code)]}
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{capped}/v1", api_key="unused", max_retries=2, http_client=openai.DefaultHttpxClient(event_hooks=hooks))
    freeing = threading.Timer(0.3, lambda: [connection.close() for connection in held])
    freeing.start()
    start = time.monotonic()
    try:
        answer = client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    finally:
        freeing.join()
    assert answer.choices[0].message.content == "Hi." and statuses == [503, 200]
    assert time.monotonic() - start >= 0.9  # the 1 s of Retry-After, not openai's own 0.5 s backoff
