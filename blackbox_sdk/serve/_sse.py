"""Streams as server-sent events, byte for byte OpenAI's format: `data: {chunk}\\n\\n` per chunk,
then `data: [DONE]\\n\\n`; for the Responses API `event: {type}\\ndata: {event}\\n\\n` per event,
and no `[DONE]`. The SDK's stream is closed however the response ends (done, failed, the client
gone), so the SDK settles it at what was sent and logs it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ._errors import describe

DONE = b"data: [DONE]\n\n"


def frame(payload: str, event: str | None = None) -> bytes:
    """One SSE event carrying a JSON payload, under an event name when it has one."""
    named = b"" if event is None else b"event: " + event.encode() + b"\n"
    return named + b"data: " + payload.encode() + b"\n\n"


async def events(stream: Any, *, named: bool = False) -> AsyncIterator[bytes]:
    """The SSE events of an SDK stream (`named`: the Responses API's, each under its `type`, with no `[DONE]`); an
    error after the headers went out becomes an error event (`data: {"error": ...}`, which openai's clients raise),
    and the stream is closed at the end."""
    try:
        async for chunk in stream:
            yield frame(chunk.model_dump_json(exclude_unset=True, warnings=False), chunk.type if named else None)
        if not named:
            yield DONE
    except Exception as exc:  # noqa: BLE001 - the status is sent already: the error goes in the stream
        yield frame(json.dumps(describe(exc)[1]))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.close()


class EventStream(StreamingResponse):
    """A `text/event-stream` response that is never cancelled mid-read: a client that leaves is noticed
    between events, the SDK's stream is then closed (settled at what was sent), and a server shutting
    down gracefully lets it run to its end."""

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={"cache-control": "no-cache", **headers})
        self._events = body

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

    async def _relay(self, send: Send, gone: anyio.Event) -> None:
        """Send each event until the stream ends or the client has gone."""
        async for event in self._events:
            if gone.is_set():
                return
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
