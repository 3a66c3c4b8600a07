"""A Responses API endpoint (POST /v1/responses, whole and streamed) on a free loopback port, for
the faults no real server shows on demand: a stream cut before `response.completed`, a failed
response, errors before an answer. It answers `answers` in turn (one per request, word by word
when streamed), counts input and output tokens as words, and keeps every request body it got;
every other route is a 404 (so the SDK's probe of a tokenize route falls back to tiktoken). A
request that continues stored state is billed its history as a server bills it: the input and
output of the response or conversation it continues when this double made it, else `history`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from servers import send_json

Json = dict[str, Any]
STORED_STATE = ("previous_response_id", "conversation", "prompt")  # what a request may continue


def words(text: str) -> int:
    """The token count this endpoint reports: whitespace-separated words."""
    return len(text.split())


def prompt_text(body: Json) -> str:
    """The text of a request's instructions and input (strings and text parts)."""
    texts = [body.get("instructions") or ""]
    given = body.get("input")
    if isinstance(given, str):
        texts.append(given)
    for item in given if isinstance(given, list) else []:
        content = item.get("content")
        texts += [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
    return " ".join(texts)


def response_json(number: int, body: Json, answer: str, history: int = 0) -> Json:
    """A whole response: one assistant message, cut to `max_output_tokens` words (then incomplete);
    `history` input tokens are billed on top."""
    pieces = answer.split(" ")
    cap = body.get("max_output_tokens")
    incomplete = isinstance(cap, int) and len(pieces) > cap
    text = " ".join(pieces[:cap] if incomplete else pieces)
    message = {"type": "message", "id": f"msg_{number}", "role": "assistant", "status": "completed",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    usage = {"input_tokens": words(prompt_text(body)) + history, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": words(text), "output_tokens_details": {"reasoning_tokens": 0}}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    return {"id": f"resp_{number}", "object": "response", "created_at": 1, "model": body.get("model"),
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": [message], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage}


def stream_events(response: Json, mode: str) -> Iterator[Json]:
    """A response's events; "cut" stops after two deltas, "error" sends an unnamed error frame after them
    (as a gateway does, which openai's client raises), "failed" ends with response.failed."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    message = response["output"][0]
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    text = message["content"][0]["text"]
    yield {"type": "response.created", "response": started}
    yield {"type": "response.output_item.added", "output_index": 0, "item": {**message, "status": "in_progress", "content": []}}
    yield {"type": "response.content_part.added", **where, "part": {"type": "output_text", "text": "", "annotations": []}}
    for index, piece in enumerate(text.split(" ")):
        if mode in ("cut", "error") and index == 2:
            if mode == "error":
                yield {"error": {"message": "the gateway lost its upstream", "type": "server_error", "code": "bad_gateway"}}
            return
        yield {"type": "response.output_text.delta", **where, "delta": piece if index == 0 else " " + piece, "logprobs": []}
    if mode == "failed":
        yield {"type": "response.failed", "response": {**response, "status": "failed", "error": {"code": "server_error", "message": "boom"}}}
        return
    yield {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
    yield {"type": "response.content_part.done", **where, "part": message["content"][0]}
    yield {"type": "response.output_item.done", "output_index": 0, "item": message}
    yield {"type": response["status"] == "incomplete" and "response.incomplete" or "response.completed", "response": response}


class ResponsesUpstream:
    """The endpoint; `mode` is "ok", "cut", "error", "failed" or "stall" (for streams: the whole text, then nothing
    more until `close`, the connection held open), `errors` the number of 500s to
    answer before answering, `history` the input tokens billed for the stored state a request
    continues; `bodies` the requests received; `url` its /v1 base URL."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.mode = "ok"
        self.errors = 0
        self.history = 0
        self.contexts: dict[str, int] = {}  # response and conversation ids -> the context a continuation carries
        self.bodies: list[Json] = []
        self._lock = threading.Lock()
        self._released = threading.Event()  # what a "stall" stream waits for
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                upstream.answer(self, body)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answer(self, handler: BaseHTTPRequestHandler, body: Json) -> None:
        """One request: a 404 off the route, a 500 while `errors` last, else the next answer."""
        with self._lock:
            fail = handler.path.endswith("/responses") and self.errors > 0
            self.errors -= int(fail)
            if handler.path.endswith("/responses") and not fail:
                self.bodies.append(body)
            number = len(self.bodies)
        if not handler.path.endswith("/responses") or fail:
            payload = b'{"error": {"message": "not here", "type": "server_error"}}'
            handler.send_response(500 if fail else 404)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        conversation = body.get("conversation")
        conversation = conversation.get("id") if isinstance(conversation, dict) else conversation
        continued = self.contexts.get(body.get("previous_response_id") or "") or self.contexts.get(conversation or "")
        history = (continued or self.history) if any(body.get(name) for name in STORED_STATE) else 0
        response = response_json(number, body, self.answers[(number - 1) % len(self.answers)], history)
        usage = response["usage"]
        with self._lock:
            for made in (response["id"], conversation):
                if made:
                    self.contexts[made] = usage["input_tokens"] + usage["output_tokens"]
        if body.get("stream"):
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()  # HTTP/1.0: the stream ends when the connection closes
            for sequence, event in enumerate(stream_events(response, self.mode)):
                named = f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': sequence})}" if "type" in event else ""
                handler.wfile.write(f"{named or 'data: ' + json.dumps(event)}\n\n".encode())
                if self.mode == "stall" and event.get("type") == "response.output_text.done":
                    self._released.wait(30)
                    return
            return
        send_json(handler, response)

    def close(self) -> None:
        """Stop serving."""
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
