"""Streams as server-sent events, byte for byte OpenAI's format: `data: {chunk}\\n\\n` per chunk,
then `data: [DONE]\\n\\n`; for the Responses API `event: {type}\\ndata: {event}\\n\\n` per event,
and no `[DONE]`. The SDK's stream is closed however the response ends (done, failed, the client
gone), so the SDK settles it at what was sent and logs it. Bodies and events go out as OpenAI writes
them, timestamps in whole seconds included (`wire_json`)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ._errors import describe

DONE = b"data: [DONE]\n\n"
RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed", "error")  # the events a Responses stream ends with
# The Responses API's times are whole seconds on OpenAI's wire; openai-python types them `float`, so a
# validated object dumps them as `1796456711.0`, which clients that read them as integers refuse.
# Outside a JSON string a key's quotes are bare; inside one they are escaped, so this never matches text.
_WHOLE_SECONDS = re.compile(r'"(created_at|completed_at)":(-?\d+)\.0(?=[,}])')


def wire_json(model: Any) -> str:
    """An openai object as OpenAI sends it: the fields it was given, its whole-second times as integers."""
    return _WHOLE_SECONDS.sub(r'"\1":\2', model.model_dump_json(exclude_unset=True, warnings=False))


def frame(payload: str, event: str | None = None) -> bytes:
    """One SSE event carrying a JSON payload, under an event name when it has one."""
    named = b"" if event is None else b"event: " + event.encode() + b"\n"
    return named + b"data: " + payload.encode() + b"\n\n"


async def events(stream: Any, *, named: bool = False) -> AsyncIterator[bytes]:
    """The SSE events of an SDK stream (`named`: the Responses API's, each under its `type`, with no `[DONE]`); an
    error after the headers went out becomes the error event OpenAI sends there (its status kept as the stream's
    `status`, for the metrics), a stream the upstream cut short ends with an `upstream_stream_incomplete` error event,
    and the stream is closed at the end."""
    sent, last = 0, ""
    try:
        async for chunk in stream:
            yield frame(wire_json(chunk), chunk.type if named else None)
            number = getattr(chunk, "sequence_number", None)
            sent, last = sent + 1 if number is None else number + 1, getattr(chunk, "type", "")
        cut = getattr(stream.blackbox, "error", None) is not None
        if not named:
            yield incomplete_event(None) if cut else DONE
        elif cut and last not in RESPONSE_ENDS:  # a failed response ended with its own event
            yield incomplete_event(sent)
    except Exception as exc:  # noqa: BLE001 - the status is sent already: the error goes in the stream
        status, body, _ = describe(exc)
        stream.status = status
        yield error_event(body["error"], sent if named else None)
    finally:
        with anyio.CancelScope(shield=True):
            await stream.close()


def incomplete_event(sequence: int | None) -> bytes:
    """The error event that ends a stream the upstream ended short: chat's in place of `[DONE]`, the choices lacking a
    finish_reason; the Responses API's (numbered `sequence`) where `response.completed` never came."""
    end = "every choice had a finish_reason" if sequence is None else "response.completed"
    message = f"the upstream ended the stream before {end}: the answer is incomplete"
    return error_event({"message": message, "type": "upstream_error", "param": None, "code": "upstream_stream_incomplete"}, sequence)


def error_event(error: dict[str, Any], sequence: int | None) -> bytes:
    """A failure mid-stream: chat's `data: {"error": ...}`, or the Responses API's `event: error` with a
    `sequence_number` (`sequence`), each as OpenAI sends it, so each client reacts as it does to OpenAI's."""
    if sequence is None:
        return frame(json.dumps({"error": error}))
    fields = {"code": error.get("code"), "message": error["message"], "param": error.get("param")}
    return frame(json.dumps({"type": "error", **fields, "sequence_number": sequence}), "error")


class EventStream(StreamingResponse):
    """A `text/event-stream` response that is never cancelled mid-read: a client that leaves is noticed
    between events, the SDK's stream is then closed (settled at what was sent), and a server shutting
    down gracefully lets it run to its end."""

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"cache-control": "no-cache", **headers})
        self._events = body
        self.after: Callable[[], None] | None = None  # called once the stream has ended and been closed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = anyio.Event()

        async def watch() -> None:
            """Set `gone` when the client disconnects."""
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                await self._relay(send, gone)
            finally:
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self._events.aclose()  # type: ignore[attr-defined]
                if self.after is not None:
                    self.after()

    async def _relay(self, send: Send, gone: anyio.Event) -> None:
        """Send each event until the stream ends or the client has gone."""
        async for event in self._events:
            if gone.is_set():
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
