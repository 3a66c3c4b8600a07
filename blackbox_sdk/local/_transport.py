"""An httpx2 transport that answers OpenAI's routes from a local HFBackend, with no server.

Give `openai.OpenAI(http_client=local_http_client(path))` and the openai package itself parses
responses, decodes the SSE stream and raises its own errors, exactly as against a real server:

    POST .../chat/completions   JSON, or `text/event-stream` when the body has "stream": true;
                                `response_format` json_schema / json_object constrains the answer
    POST .../responses          a Response, or with "stream": true its typed events (`event: <type>`
                                lines, no [DONE]); `text.format` constrains the answer likewise
    POST .../completions        JSON, or `text/event-stream` when the body has "stream": true
    POST .../embeddings         JSON
    GET  .../models             the one local model; GET .../models/{id} that model

A bad request answers 400 with OpenAI's error body, an unknown route 404, a backend failure 500.
This module imports without torch; `local_http_client` loads the model through `load_backend`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

from .._exceptions import BackendError, ConfigError

if TYPE_CHECKING:
    from ._backend import HFBackend


SSE_DONE = b"data: [DONE]\n\n"
_END = object()  # end marker on the async stream's queue


@dataclass(frozen=True)
class _Reply:
    """What a route answers: a JSON body with a status, or a lazy stream of SSE events."""

    status: int
    body: Any = None
    events: Iterator[dict[str, Any]] | None = None
    named: bool = False  # Responses streams: `event: <type>` before each data line, and no [DONE]


def _error(status: int, message: str, *, kind: str, param: str | None = None, code: str | None = None) -> _Reply:
    """A reply carrying OpenAI's error body `{"error": {message, type, param, code}}`."""
    return _Reply(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})


def _error_for(exc: Exception) -> _Reply:
    """400 for a request the backend refused, 500 for anything that broke while running it."""
    if isinstance(exc, ConfigError):
        return _error(
            400,
            str(exc),
            kind="invalid_request_error",
            param=getattr(exc, "param", None),
            code=getattr(exc, "code", None),
        )
    kind = "server_error" if isinstance(exc, BackendError) else "internal_error"
    return _error(500, f"the local model failed: {exc}", kind=kind)


def _parse_body(raw: bytes) -> dict[str, Any] | _Reply:
    """The JSON object in a request body, or a 400 reply saying why it is not one."""
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "We could not parse the JSON body of your request.", kind="invalid_request_error")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.", kind="invalid_request_error")
    return body


def _post_handler(backend: HFBackend, segments: list[str], stream: bool) -> Callable[[dict[str, Any]], Any] | None:
    """The backend method for a POST path, streaming or not; None for an unknown path."""
    if segments[-2:] == ["chat", "completions"]:
        return backend.chat_completion_stream if stream else backend.chat_completion
    if segments[-1:] == ["responses"]:
        return backend.response_stream if stream else backend.response
    if segments[-1:] == ["completions"]:
        return backend.completion_stream if stream else backend.completion
    if segments[-1:] == ["embeddings"]:  # "stream" here is refused by the embeddings parser as an unknown argument: a 400
        return backend.embeddings
    return None


def _get(backend: HFBackend, segments: list[str]) -> _Reply:
    """GET .../models and .../models/{id}."""
    if segments[-1:] == ["models"]:
        return _Reply(200, backend.models())
    if len(segments) >= 2 and segments[-2] == "models" and segments[-1] == backend.model_id:
        return _Reply(200, backend.model_card())
    if len(segments) >= 2 and segments[-2] == "models":
        message = f"The model {segments[-1]!r} does not exist; this local endpoint serves {backend.model_id!r}."
        return _error(404, message, kind="invalid_request_error", param="model", code="model_not_found")
    return _unknown_route("GET", segments)


def _unknown_route(method: str, segments: list[str]) -> _Reply:
    """OpenAI's 404 for a URL it does not serve."""
    path = "/" + "/".join(segments)
    return _error(404, f"Invalid URL ({method} {path})", kind="invalid_request_error", code="unknown_url")


def _route(backend: HFBackend, method: str, path: str, raw: bytes) -> _Reply:
    """Answer one request: parse, dispatch to the backend, map its errors to OpenAI's statuses."""
    segments = [part for part in path.split("/") if part]
    if method == "GET":
        return _get(backend, segments)
    body = _parse_body(raw) if method == "POST" else None
    if isinstance(body, _Reply):
        return body
    stream = body is not None and body.get("stream") is True
    handler = _post_handler(backend, segments, stream) if body is not None else None
    if handler is None or body is None:
        return _unknown_route(method, segments)
    try:
        result = handler(body)
    except Exception as exc:  # every failure becomes an HTTP status, as a server would answer
        return _error_for(exc)
    return _Reply(200, events=result, named=segments[-1:] == ["responses"]) if stream else _Reply(200, result)


def _sse(reply: _Reply) -> Iterator[bytes]:
    """SSE frames (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`, or named events); a failure mid-stream becomes an error event."""
    events = reply.events or iter(())
    try:
        for event in events:
            name = b"event: " + event["type"].encode() + b"\n" if reply.named else b""
            yield name + b"data: " + json.dumps(event).encode() + b"\n\n"
        if not reply.named:
            yield SSE_DONE
    except Exception as exc:  # the status line is already sent: report it the way OpenAI streams errors
        yield b"data: " + json.dumps(_error_for(exc).body).encode() + b"\n\n"
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _headers(streaming: bool) -> dict[str, str]:
    """Response headers: the content type plus a request id, as OpenAI sends."""
    kind = "text/event-stream; charset=utf-8" if streaming else "application/json"
    return {"content-type": kind, "x-request-id": f"req_{uuid.uuid4().hex}"}


def _json_response(reply: _Reply) -> httpx2.Response:
    """A complete JSON response."""
    return httpx2.Response(reply.status, headers=_headers(False), content=json.dumps(reply.body).encode())


class _SyncEventStream(httpx2.SyncByteStream):
    """A response body that generates SSE frames while the model generates; closing it stops the model."""

    def __init__(self, frames: Iterator[bytes]) -> None:
        self._frames = frames

    def __iter__(self) -> Iterator[bytes]:
        """Frames as they are produced."""
        yield from self._frames

    def close(self) -> None:
        """Stop generation (the frames generator cancels the backend's worker when closed)."""
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


class _AsyncEventStream(httpx2.AsyncByteStream):
    """An async response body: a worker thread runs the blocking frames iterator into an asyncio queue."""

    def __init__(self, frames: Iterator[bytes]) -> None:
        self._frames = frames
        self._stop = threading.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Frames as the worker thread hands them over."""
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[Any] = asyncio.Queue()
        pump = loop.run_in_executor(None, self._pump, loop, frames)
        try:
            while (item := await frames.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
        await pump

    def _pump(self, loop: asyncio.AbstractEventLoop, frames: asyncio.Queue[Any]) -> None:
        """Worker body: move frames to the loop until done or told to stop, then close the iterator."""
        try:
            for frame in self._frames:
                if self._stop.is_set() or not _deliver(loop, frames, frame):
                    break
        except Exception as exc:  # handed to the reading coroutine, which raises it
            _deliver(loop, frames, exc)
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            _deliver(loop, frames, _END)

    async def aclose(self) -> None:
        """Ask the worker to stop at its next frame (which also stops the model)."""
        self._stop.set()


def _deliver(loop: asyncio.AbstractEventLoop, frames: asyncio.Queue[Any], item: object) -> bool:
    """Put an item on the loop's queue from a worker thread; False once the loop is gone."""
    try:
        loop.call_soon_threadsafe(frames.put_nowait, item)
    except RuntimeError:  # the event loop was closed under us
        return False
    return True


class HFTransport(httpx2.BaseTransport):
    """Answers OpenAI routes from a local HFBackend inside the process (sync clients)."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Route the request; a streamed reply is produced lazily while the model generates."""
        reply = _route(self.backend, request.method, request.url.path, request.read())
        if reply.events is None:
            return _json_response(reply)
        return httpx2.Response(200, headers=_headers(True), stream=_SyncEventStream(_sse(reply)))


class AsyncHFTransport(httpx2.AsyncBaseTransport):
    """Answers OpenAI routes from a local HFBackend; the blocking model work runs in threads (async clients)."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Route the request in a thread; a streamed reply flows through a queue from a worker thread."""
        raw = await request.aread()
        reply = await asyncio.to_thread(_route, self.backend, request.method, request.url.path, raw)
        if reply.events is None:
            return _json_response(reply)
        return httpx2.Response(200, headers=_headers(True), stream=_AsyncEventStream(_sse(reply)))


def local_http_client(path: str | Path, *, device: str = "auto") -> httpx2.Client:
    """An httpx2.Client answered by the local model at path (loaded once per process)."""
    from ._backend import load_backend

    return httpx2.Client(transport=HFTransport(load_backend(path, device=device)))


def local_async_http_client(path: str | Path, *, device: str = "auto") -> httpx2.AsyncClient:
    """An httpx2.AsyncClient answered by the local model at path (loaded once per process)."""
    from ._backend import load_backend

    return httpx2.AsyncClient(transport=AsyncHFTransport(load_backend(path, device=device)))
