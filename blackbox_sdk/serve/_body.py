"""A request's body: read up to a size limit and a deadline, parsed as a JSON object (UTF-8 text, nested at
most MAX_JSON_DEPTH deep, its numbers finite), and split into the openai arguments of the route's `create` and the rest
(passed upstream in `extra_body`).

A body whose Content-Type is not JSON's (application/json, any charset) is refused with 415 before it
is read: application/xml or another type is not parsed as JSON, and a type a browser sends cross-site
without asking first (a CORS "simple" type: text/plain, a form) cannot spend through a proxy that trusts
this machine. A body with no Content-Type is read as JSON (openai's clients always send one; curl's -d
sends a form's, and is refused).

A body sent with `Content-Encoding: gzip` (or `x-gzip`, `deflate`: zlib-wrapped or raw) is decoded as it arrives, its size limit counting the
decoded bytes (a small compressed body that decodes past the limit is a 413, not a decompression bomb); any other coding
is refused with 415 before it is read, never taken as if it were plain.

The SDK's own options (`budget`, `cache`, `log`, ...) and openai's transport arguments
(`extra_headers`, `timeout`, ...) are the proxy's to set, never a client's: a body naming one is
refused, as OpenAI refuses an unknown argument.
"""

from __future__ import annotations

import inspect
import json
import math
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import anyio
from starlette.requests import Request

from .._options import OPTION_NAMES
from .._text import is_utf8
from ._errors import ProxyError

_TRANSPORT = frozenset({"extra_headers", "extra_query", "extra_body", "timeout", "max_retries"})
_RESERVED = frozenset(OPTION_NAMES) | _TRANSPORT
_JSON_TYPES = frozenset({"", "application/json"})  # "": no Content-Type at all
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MAX_JSON_DEPTH = 64  # arrays and objects nested deeper are refused (the SDK walks bodies recursively)


def check_content_type(request: Request) -> None:
    """415 for a body sent as anything but JSON (a browser's simple type, which a web page may POST cross-site
    with no preflight, or application/xml), before it is read."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in _JSON_TYPES:
        message = f"The Content-Type {media_type} is not accepted: send the JSON body with 'Content-Type: application/json'."
        raise ProxyError(415, message, code="unsupported_media_type")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, decoded as its Content-Encoding says, refused with 413 once it passes `limit` bytes (by its
    declared length, before reading, and by its decoded size as it arrives) and with 408 when it has not arrived within
    `timeout_s` (a client that stalls); 415 for a coding it can't decode, before reading."""
    decoded = _Decoded(request.headers.get("content-encoding", ""), limit)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    with anyio.move_on_after(timeout_s) as scope:
        async for chunk in request.stream():
            decoded.add(chunk)
    if scope.cancelled_caught:
        raise ProxyError(408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout")
    return decoded.end()


class _Decoded:
    """A body's bytes as they arrive, decoded (gzip, deflate or none) and counted against the limit once decoded."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding.strip().lower()
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.held: bytes | None = b"" if self.coding == "deflate" else None  # deflate's first bytes, until they say which
        self.decoder = None if self.coding in ("", "identity") else zlib.decompressobj(_window_bits(self.coding))

    def add(self, chunk: bytes) -> None:
        """Take the next bytes received; 413 once the decoded body passes the limit."""
        if self.decoder is not None:
            chunk = self._unheld(chunk)
            try:  # at most one byte past the limit is decoded: a bomb is never expanded further
                chunk = self.decoder.decompress(chunk, self.limit - self.size + 1)
            except zlib.error:
                raise self._corrupt() from None
        self.size += len(chunk)
        if self.size > self.limit:
            raise _too_large(self.limit)
        self.chunks.append(chunk)

    def _unheld(self, chunk: bytes) -> bytes:
        """The compressed bytes to decode now: deflate's first two are held until they say whether it is zlib-wrapped
        (RFC 9110) or raw (as many clients send it), and the decoder is then the one for it."""
        if self.held is None:
            return chunk
        self.held += chunk
        if len(self.held) < 2:
            return b""
        chunk, self.held = self.held, None
        if not _zlib_wrapped(chunk):
            self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        return chunk

    def end(self) -> bytes:
        """The whole decoded body; 400 when the compressed data was cut short or runs on past its end."""
        if self.decoder is not None and (not self.decoder.eof or self.decoder.unused_data):
            raise self._corrupt()
        return b"".join(self.chunks)

    def _corrupt(self) -> ProxyError:
        """The 400 for a body that is not the coding it was sent as."""
        return ProxyError(400, f"We could not parse the JSON body of your request: it is not valid {self.coding} data "
                          "(its Content-Encoding)", code="invalid_json")


def _zlib_wrapped(head: bytes) -> bool:
    """Whether deflate data starts with zlib's header (RFC 1950: method 8, a window of at most 32 KiB, a check that
    divides by 31), which raw deflate's first block does not start with (a stored block's padding bits set)."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


def _window_bits(coding: str) -> int:
    """zlib's window bits for a Content-Encoding; 415 for one the proxy does not decode (br, zstd, several codings)."""
    if coding not in _WINDOW_BITS:
        raise ProxyError(415, f"The Content-Encoding {coding} is not accepted: send the body uncompressed, or as gzip or "
                         "deflate.", code="unsupported_media_type")
    return _WINDOW_BITS[coding]


def _too_large(limit: int) -> ProxyError:
    """The 413 refusal."""
    return ProxyError(413, f"the request body is larger than the proxy's limit of {limit} bytes", code="request_too_large")


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object of finite numbers nested at most MAX_JSON_DEPTH deep; 400 for anything else."""
    try:
        value = json.loads(_utf8(raw), parse_constant=_no_number, parse_float=_finite, parse_int=_integer)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        raise ProxyError(400, f"We could not parse the JSON body of your request: {error}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ProxyError(400, "the request body must be a JSON object", code="invalid_json")
    _check_tree(value, MAX_JSON_DEPTH)
    return value


def _utf8(raw: bytes) -> str:
    """The body as UTF-8 text, JSON's only encoding on the wire (RFC 8259 §8.1), a leading BOM ignored as §8.1
    allows; 400 for UTF-16, UTF-32 or any other encoding, which json.loads would detect and take."""
    try:
        text: str | None = raw.decode("utf-8", "surrogatepass")  # lone surrogates: refused after parsing, by name
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:  # UTF-16 or UTF-32 of ASCII is valid UTF-8 full of NULs, which no JSON holds raw
        raise ProxyError(400, "We could not parse the JSON body of your request: it is not UTF-8 text; send JSON "
                         "encoded as UTF-8 (RFC 8259 §8.1)", code="invalid_json")
    return text.removeprefix("\ufeff")


def _no_number(text: str) -> float:
    """400 for NaN and Infinity, which json.loads takes but no JSON holds (nor can the upstream or the log)."""
    raise ProxyError(400, f"We could not parse the JSON body of your request: {text} is not a JSON number", code="invalid_json")


class _TooLarge:
    """Where the body holds a number too large to read: refused by `_check_tree`, which knows the field it is in."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, field: str | None) -> ProxyError:
        """The 400 naming the body's top-level field the number is in."""
        where = f"{field} holds a number" if field is not None else "a number"
        shown = self.text if len(self.text) <= 20 else f"{self.text[:12]}..., {len(self.text)} characters"
        return ProxyError(400, f"We could not parse the JSON body of your request: {where} too large to read ({shown})",
                          param=field, code="invalid_json")


def _finite(text: str) -> float | _TooLarge:
    """A JSON number as a float; one past float's range (1e400 would be read as infinity) is _TooLarge."""
    value = float(text)
    return value if math.isfinite(value) else _TooLarge(text)


def _integer(text: str) -> int | _TooLarge:
    """A JSON integer; one with more digits than Python converts (4300) is _TooLarge, not Python's own words."""
    try:
        return int(text)
    except ValueError:
        return _TooLarge(text)


def _check_tree(value: dict[str, Any], limit: int) -> None:
    """400 for arrays and objects nested more than `limit` deep, a number too large to read (naming the body's field it
    is in), or a string (a key too) with a lone surrogate (an unpaired \\ud800 escape): no UTF-8 text holds one, so it
    could be neither sent upstream nor logged nor shown as a metrics label. Walked with a stack, not recursion."""
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, _TooLarge):
            raise item.error(field)
        if isinstance(item, str):
            if not is_utf8(item):
                raise ProxyError(400, f"We could not parse the JSON body of your request: the string {item[:40]!r} holds "
                                 "a lone surrogate, which is not Unicode text", code="invalid_json")
            continue
        if isinstance(item, dict):
            children = [(key, field) for key in item] + [(child, key if field is None else field) for key, child in item.items()]
        elif isinstance(item, list):
            children = [(child, field) for child in item]
        else:
            continue
        if depth > limit:
            raise _too_deep()
        stack.extend((child, depth + 1, name) for child, name in children)


def _too_deep() -> ProxyError:
    """The 400 refusal of a body nested too deep."""
    return ProxyError(400, f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep", code="invalid_json")


@cache
def _accepted(method: Callable[..., Any]) -> frozenset[str]:
    """The keyword arguments an openai `create` takes, without its transport arguments."""
    parameters = inspect.signature(method).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is p.KEYWORD_ONLY) - _TRANSPORT


def call_arguments(body: dict[str, Any], method: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments for the SDK's `create`: openai's own by name, any other field in
    `extra_body` (sent upstream as given); 400 for a field naming an SDK option or a transport argument."""
    reserved = sorted(set(body) & _RESERVED)
    if reserved:
        raise ProxyError(400, f"Unrecognized request argument supplied: {reserved[0]}", param=reserved[0], code="unknown_parameter")
    accepted = _accepted(method)
    arguments = {name: value for name, value in body.items() if name in accepted}
    extra = {name: value for name, value in body.items() if name not in accepted}
    if extra:
        arguments["extra_body"] = extra
    return arguments


def required(body: dict[str, Any], *names: str) -> None:
    """400 naming the first required field the body lacks."""
    for name in names:
        if name not in body:
            raise ProxyError(400, f"you must provide a {name} parameter", param=name, code="missing_required_parameter")
