"""The proxy's HTTP/1.1 connections: uvicorn's httptools protocol with deadlines on what the client owes,
and OpenAI's JSON bodies for the answers uvicorn writes itself.

uvicorn times a connection only between requests (`timeout_keep_alive`), so a client that opens
one and sends its headers a byte every few seconds, or never, holds it for ever (slowloris). Here
a request's headers must arrive within `header_timeout_s` of its first byte (of the connection's
opening, for its first request): past it the client is answered 408 and the connection closed.
A body is the app's to time while it reads it (`body_timeout_s`, 408); once the answer is sent,
the rest of an unread body must arrive within `body_timeout_s` too, or the connection is closed.

A request that is not HTTP (`GARBAGE\\r\\n\\r\\n`) is answered OpenAI's 400 body, not uvicorn's text, and
one whose request line and headers pass MAX_HEADER_BYTES 431 (httptools keeps them whole, however long).

At most `max_connections` connections are served at once, in the order they opened. A request on one past
them is answered OpenAI's 503 with `Retry-After: 1` (the openai clients wait and retry it) and the connection
closed, where uvicorn's `limit_concurrency` answers plain text and refuses every connection's requests alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .._logging import logger
from ..call_log import new_call_id
from ._config import ProxyConfig
from ._errors import error_body, error_json

MAX_HEADER_BYTES = 64 * 1024  # a request line and headers longer than this are refused (nginx's default is 32 KiB)


class ProxyHttp(HttpToolsProtocol):
    """One client connection: uvicorn's, with the client's deadlines (`http_protocol` sets them)."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    served: set[ProxyHttp]  # the connections within max_connections (one set for all of a server's connections)
    _deadline: asyncio.TimerHandle | None = None  # when what the client owes now is due, if it owes anything
    _in_headers = False  # a request has begun whose headers have not all arrived
    _header_bytes = 0  # what has arrived since the last request ended: its headers, and then its body (at most one read short)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start timing the first request's headers from the connection's opening (a client may send none)."""
        super().connection_made(transport)
        self._await(self.header_timeout_s, self._headers_late)
        if len(self.served) < self.max_connections:
            self.served.add(self)
        else:
            self.app = _busy(self.max_connections)  # each request is answered 503, the connection closed

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop timing a connection that is gone; its place is free."""
        self._await(None, None)
        self.served.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Bytes between requests start the next one's header deadline (uvicorn's keep-alive timer stops at any byte)."""
        if self._deadline is None and (self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)):
            self._await(self.header_timeout_s, self._headers_late)
        self._header_bytes += len(data)
        super().data_received(data)
        if self._in_headers and self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_long()

    def on_message_begin(self) -> None:
        """A request's first byte: its headers are due within `header_timeout_s`."""
        super().on_message_begin()
        self._in_headers = True
        self._await(self.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        """The headers arrived: the app has the request, and times its body itself while it reads it."""
        self._in_headers = False
        self._await(None, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request arrived: nothing is owed (an unread body's deadline ends); the next headers are counted anew."""
        self._await(None, None)
        self._header_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """The answer is sent: the rest of a body the app did not read is due within `body_timeout_s` (a pipelined
        request's body, whose app starts now, is that app's to time: it answers 408, where a close would say nothing)."""
        super().on_response_complete()
        if self.cycle is not None and self.cycle.response_complete and self.cycle.more_body and not self.transport.is_closing():
            self._await(self.body_timeout_s, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        """OpenAI's 400 body for a request that is not HTTP/1.1, then the connection closed."""
        self._answer(400, "Invalid HTTP request received: the proxy could not read it as HTTP/1.1.", "invalid_http_request")

    @property
    def _answering(self) -> bool:
        """Whether an answer is being sent (a pipelined request's headers wait behind it: nothing may be written)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _headers_too_long(self) -> None:
        """431 and close for headers past MAX_HEADER_BYTES; behind an answer, stop reading until it is sent."""
        if self._answering:
            self.flow.pause_reading()  # uvicorn reads on once the answer is sent, and the next bytes are checked
        else:
            self._answer(431, f"the request line and headers are longer than the proxy's limit of {MAX_HEADER_BYTES} bytes",
                         "request_headers_too_large")

    def _headers_late(self) -> None:
        """The deadline for a request's headers passed: 408 for a request begun, then close (or just close an idle one)."""
        self._deadline = None
        if self._answering:
            self._await(self.header_timeout_s, self._headers_late)
        elif self._in_headers:
            self._answer(408, f"the request headers did not arrive within {self.header_timeout_s:g} s", "request_timeout")
        else:
            self.transport.close()

    def _await(self, seconds: float | None, then: Callable[[], None] | None) -> None:
        """Replace the connection's deadline: `then()` after `seconds`, or none (None)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, then) if seconds is not None and then is not None else None

    def _answer(self, status: int, message: str, code: str) -> None:
        """Write OpenAI's error body with `status` straight to the socket (no app is running) and close."""
        body = json.dumps(error_body(message, "invalid_request_error", code=code), separators=(",", ":")).encode()
        head = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
        head += [b"x-request-id: " + new_call_id().encode() + b"\r\n", b"connection: close\r\n\r\n"]
        if not self.transport.is_closing():
            self.transport.write(b"".join(head) + body)
            self.transport.close()


def _busy(limit: int) -> Any:
    """The ASGI app of a connection past `limit`: OpenAI's 503 with Retry-After, and `connection: close` (its place is not held)."""

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        """503 server_busy for any request."""
        logger.warning("proxy: %d connections are open, the most served at once (max_connections): answered 503", limit)
        message = f"The proxy is serving as many connections as it takes ({limit}): retry after a second."
        headers = {"retry-after": "1", "connection": "close"}
        await error_json(error_body(message, "server_error", code="server_busy"), 503, headers)(scope, receive, send)

    return busy


def http_protocol(config: ProxyConfig) -> type[ProxyHttp]:
    """The protocol class uvicorn builds each connection with (its `http=`), with `config`'s deadlines and connection cap."""

    class Configured(ProxyHttp):
        header_timeout_s = config.header_timeout_s
        body_timeout_s = config.body_timeout_s
        max_connections = config.max_connections
        served: set[ProxyHttp] = set()

    return Configured
