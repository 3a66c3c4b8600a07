"""The proxy's wire format as clients in other languages meet it (curl, Node's openai, any HTTP client that expects
OpenAI's API to the letter), against the proxy under uvicorn on loopback in front of an instant upstream, a fault
double or the real llama.cpp server: request bodies sent compressed are decoded (a coding the proxy can't read is
OpenAI's 415, never a body taken undecoded), a trailing slash is OpenAI's 404 and not a redirect, every answer has an
`x-request-id`, an upstream answer that is not JSON is the upstream's 502 and not the proxy's 500, and an upstream's
error given as text passes its words, redacted."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from servers import InstantUpstream, Proxy, sse_upstream

from blackbox_sdk.serve import ProxyConfig

LIMIT = 64 * 1024  # the proxy's body limit here
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    """The proxy without keys in front of an upstream that answers every chat completion at once."""
    upstream = InstantUpstream(ANSWER)
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0, max_body_bytes=LIMIT)) as running:
            yield running
    finally:
        upstream.close()


def _error(answer: httpx2.Response, status: int, code: str) -> str:
    """The message of OpenAI's error body, checked for its status, its four fields and its code."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == (code or None)
    assert answer.headers["x-request-id"].startswith("bb-")
    return str(error["message"])


def _raw_deflate(data: bytes) -> bytes:
    """Deflate without zlib's wrapper, as many clients send `Content-Encoding: deflate` (RFC 9110 says wrapped)."""
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("coding", "compress"), [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes), ("GZip", gzip.compress),
    ("deflate", _raw_deflate),
])
def test_a_compressed_body_is_read_as_its_content_encoding_says(proxy: Proxy, coding: str, compress: object) -> None:
    assert callable(compress)
    answer = proxy.post("/chat/completions", compress(BODY), **{"content-encoding": coding})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello there."



@pytest.mark.parametrize(("coding", "compress", "size"), [("gzip", gzip.compress, 7), ("deflate", zlib.compress, 1), ("deflate", _raw_deflate, 1)])
def test_a_compressed_body_sent_chunked_in_small_pieces_is_decoded_across_them(proxy: Proxy, coding: str, compress: Any, size: int) -> None:
    packed = compress(BODY)
    pieces = [packed[start:start + size] for start in range(0, len(packed), size)]  # chunked transfer, no Content-Length
    answer = httpx2.post(f"{proxy.base_url}/chat/completions", content=iter(pieces), timeout=30,
                         headers={"content-type": "application/json", "content-encoding": coding})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello there."

@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", _raw_deflate)])
def test_a_compressed_body_larger_than_the_limit_once_decoded_is_a_413(proxy: Proxy, coding: str, compress: Any) -> None:
    padded = json.dumps({"model": "m", "messages": [{"role": "user", "content": " " * (4 * LIMIT)}]}).encode()
    bomb = compress(padded)
    assert len(bomb) < LIMIT // 8  # small on the wire, four times the limit once decoded
    assert "larger than" in _error(proxy.post("/chat/completions", bomb, **{"content-encoding": coding}), 413, "request_too_large")


@pytest.mark.parametrize(("coding", "sent"), [
    ("gzip", b"not gzip at all"), ("gzip", gzip.compress(BODY)[:-12]), ("gzip", gzip.compress(BODY) + b"trailing"),
    ("deflate", b"\xff not deflate"), ("deflate", _raw_deflate(BODY)[:-12]), ("deflate", zlib.compress(BODY) + b"trailing"), ("deflate", b"x"),
], ids=["not-gzip", "cut-short", "runs-on", "not-deflate", "raw-cut-short", "zlib-runs-on", "one-byte"])
def test_a_body_that_is_not_what_its_content_encoding_says_is_a_400(proxy: Proxy, coding: str, sent: bytes) -> None:
    message = _error(proxy.post("/chat/completions", sent, **{"content-encoding": coding}), 400, "invalid_json")
    assert coding in message


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip"])
def test_a_content_encoding_the_proxy_cannot_read_is_a_415_not_a_body_taken_as_is(proxy: Proxy, coding: str) -> None:
    answer = proxy.post("/chat/completions", BODY, **{"content-encoding": coding})  # sent plain: must not be read as plain
    message = _error(answer, 415, "unsupported_media_type")
    assert "Content-Encoding" in message and "gzip" in message


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions/"), ("POST", "/v1/embeddings/"), ("GET", "/healthz/")])
def test_a_path_with_a_trailing_slash_is_openais_404_not_a_redirect(proxy: Proxy, method: str, path: str) -> None:
    answer = httpx2.request(method, f"{proxy.url}{path}", content=BODY if method == "POST" else None,
                            headers={"content-type": "application/json"}, timeout=30)
    assert "location" not in answer.headers  # a 307 a client follows with its key, to a URL built from its Host header
    assert _error(answer, 404, "") == f"Invalid URL ({method} {path})"


@pytest.fixture(scope="module")
def llama_proxy(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The proxy with a call log in front of the real llama.cpp server."""
    log = tmp_path_factory.mktemp("proxy-wire") / "calls.db"
    with Proxy(ProxyConfig(upstream=llama_server, log=str(log), max_retries=0)) as running:
        yield running


def test_every_answer_carries_a_request_id_not_only_the_generating_ones(llama_proxy: Proxy) -> None:
    client = llama_proxy.client()
    listed = client.models.with_raw_response.list()
    name = listed.parse().data[0].id
    one = client.models.with_raw_response.retrieve(name)
    call = client.chat.completions.with_raw_response.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    feedback = httpx2.post(f"{llama_proxy.base_url}/feedback", json={"call_id": call.headers["x-blackbox-call-id"], "label": "correct"})
    assert feedback.status_code == 200, feedback.text
    ids = [listed.headers.get("x-request-id"), one.headers.get("x-request-id"), feedback.headers.get("x-request-id")]
    assert all(str(found).startswith("bb-") for found in ids), ids  # as OpenAI sends one on every answer
    assert len(set(ids)) == 3


def _a_stream(headers: object) -> bytes:
    """What a misconfigured upstream sends to a request that asked for no stream: an event stream, not JSON."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "sk-secret-in-the-answer"}, "finish_reason": "stop"}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"


def test_an_upstream_answer_that_is_not_openais_json_is_a_502_not_the_proxys_own_500() -> None:
    with sse_upstream(_a_stream) as url, Proxy(ProxyConfig(upstream=url, max_retries=0)) as running:
        answer = running.post("/chat/completions", BODY)
    message = _error(answer, 502, "upstream_invalid_response")
    assert answer.json()["error"]["type"] == "upstream_error"
    assert answer.headers["x-should-retry"] == "false"  # the unreadable answer was billed: a retry pays again
    assert "sk-secret" not in answer.text and "data:" not in message  # the upstream's body stays in the proxy's log


def _good_then_unreadable(headers: object) -> bytes:
    """A stream whose first event is a chunk and whose second is not JSON (a broken upstream or a gateway's page)."""
    return _a_stream(headers).split(b"data: [DONE]")[0].replace(b'"stop"', b"null") + b"data: {not json}\n\n"


def test_a_stream_event_that_is_not_json_is_the_upstreams_502_before_or_after_the_200() -> None:
    streamed = json.dumps({**json.loads(BODY), "stream": True}).encode()
    with sse_upstream(lambda headers: b"data: {not json}\n\n") as url, Proxy(ProxyConfig(upstream=url, max_retries=0)) as running:
        first = running.post("/chat/completions", streamed)
    assert _error(first, 502, "upstream_invalid_response") and first.headers["x-should-retry"] == "false"
    with sse_upstream(_good_then_unreadable) as url, Proxy(ProxyConfig(upstream=url, max_retries=0)) as running:
        later = running.post("/chat/completions", streamed)
    assert later.status_code == 200 and later.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in later.text.split("\n\n") if line]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "sk-secret-in-the-answer"
    assert json.loads(events[-1])["error"]["code"] == "upstream_invalid_response" and len(events) == 2


@pytest.mark.parametrize("answer", [
    {"error": "Input validation error: `max_new_tokens` must be <= 100 (key sk-proj-abcdefghijklmnopqrstuvwxyz0123)", "error_type": "validation"},
    {"detail": "Input validation error: `max_new_tokens` must be <= 100 (key sk-proj-abcdefghijklmnopqrstuvwxyz0123)"},
], ids=["tgi", "fastapi"])
def test_an_upstream_error_given_as_text_passes_its_words_redacted(answer: dict[str, object]) -> None:
    upstream = InstantUpstream(answer, status=422)
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0)) as running:
            refused = running.post("/chat/completions", BODY)
    finally:
        upstream.close()
    message = _error(refused, 422, "")
    assert message.startswith("Input validation error: `max_new_tokens` must be <= 100")  # not openai's bare "Error code: 422"
    assert "sk-proj-abcdef" not in refused.text



def test_an_upstream_error_page_that_is_not_json_stays_out_of_the_answer(proxy: Proxy) -> None:
    answer = httpx2.get(f"{proxy.base_url}/models", timeout=30)  # http.server's HTML page: 501 Unsupported method
    assert _error(answer, 501, "") == "Error code: 501" and "<" not in answer.text


def _whole_stream(headers: object) -> bytes:
    """An upstream's stream of one chunk, as OpenAI sends it."""
    return _a_stream(headers).replace(b"sk-secret-in-the-answer", b"Hello there.")


def test_json_and_streamed_answers_carry_the_proxys_processing_time_as_openai_does(proxy: Proxy) -> None:
    """openai's clients and their users read `openai-processing-ms` (whole milliseconds) on every answer."""
    whole = proxy.client().chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}])
    streamed = json.dumps({**json.loads(BODY), "stream": True}).encode()
    with sse_upstream(_whole_stream) as url, Proxy(ProxyConfig(upstream=url, max_retries=0)) as running:
        stream = running.post("/chat/completions", streamed)
    refused = proxy.post("/chat/completions", b"{not json")
    assert stream.status_code == 200 and "Hello there." in stream.text
    for answer in (whole, stream, refused):
        assert answer.headers["openai-processing-ms"].isdigit(), answer.headers


def test_a_stream_asked_of_an_upstream_that_answers_whole_is_that_answer_streamed(proxy: Proxy) -> None:
    """The upstream here ignores `stream` and answers one JSON body: the client still gets OpenAI's stream of it,
    not a 200 followed by an error event."""
    streamed = json.dumps({**json.loads(BODY), "stream": True, "stream_options": {"include_usage": True}}).encode()
    answer = proxy.post("/chat/completions", streamed)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello there."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 6 and not any("error" in c for c in chunks)


def test_an_error_object_answered_whole_to_a_stream_is_the_upstreams_error_before_any_200() -> None:
    refusal = {"error": {"message": "The model is overloaded", "type": "server_error", "param": None, "code": "overloaded"}}
    upstream = InstantUpstream(refusal)
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, max_retries=0)) as running:
            answer = running.post("/chat/completions", json.dumps({**json.loads(BODY), "stream": True}).encode())
    finally:
        upstream.close()
    assert _error(answer, 502, "overloaded") == "The model is overloaded"
