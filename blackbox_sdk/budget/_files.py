"""An upper bound on the prompt tokens of a PDF given inline (chat's `file` part, the Responses API's `input_file`).

OpenAI puts a PDF into the model's context as the text it extracts and an image of each page. Its base64 text is not
what is billed: a 1 MB PDF is ~1.4 M base64 characters, ~700k tokens, where its pages cost a few thousand. The bound,
read from the file's bytes with the standard library alone:

- each page (a `/Type /Page` object, in the file or inside a compressed object stream) as one high-detail image;
- the extracted text as at most one token per byte of the file's streams other than images, Flate streams inflated
  (a token is at least one byte; the text a page shows is drawn by its content streams' string operands).

A file it can't read that way (not a PDF, encrypted, no page found, a stream of another filter than Flate, or
inflating past `MAX_INFLATED_BYTES`) gets None: the caller counts it as before (its JSON), which overcounts.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib

from .._exceptions import BlackBoxError

MAX_INFLATED_BYTES = 64 * 1024 * 1024  # past this, inflating more is refused (a zip bomb): the file is counted as before
MAX_HEADER = 4096  # the most bytes a stream's object header (`N 0 obj <<...>>`) is looked for in, so reading stays linear
PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")  # a page object (not the /Pages tree nodes)
STREAM = re.compile(rb"(?<!end)stream\r?\n")  # where a stream's data begins, after its dictionary
OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")  # where an object begins
IMAGE = re.compile(rb"/Subtype\s*/Image(?![A-Za-z])")
FILTER = re.compile(rb"/Filter\s*\[?\s*/([A-Za-z0-9]+)")
ENDSTREAM = b"endstream"


class Unreadable(BlackBoxError):
    """The file can't be bounded from its bytes: counted as before (never raised past `pdf_bound`)."""


def pdf_bytes(file_data: str) -> bytes | None:
    """A file part's `file_data` (a data URL or bare base64) as the PDF's bytes; None when it is not a PDF."""
    data = file_data.split(",", 1)[1] if file_data.startswith("data:") and "," in file_data else file_data
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    return raw if b"%PDF-" in raw[:1024] else None


def pdf_bound(raw: bytes, image_tokens: int) -> int | None:
    """Prompt tokens a PDF costs at most: its pages at `image_tokens` each, and its text at one token per stream byte;
    None when it can't be read so (the caller falls back)."""
    if re.search(rb"/Encrypt\b", raw):
        return None
    try:
        pages, text = _scan(raw)
    except Unreadable:
        return None
    return pages * image_tokens + text if pages else None


def _scan(raw: bytes) -> tuple[int, int]:
    """The page objects found (in the file and in inflated object streams) and the bytes of its non-image streams."""
    outside, streams = _split(raw)
    pages, text = len(PAGE.findall(outside)), 0
    for header, data in streams:
        if IMAGE.search(header):
            continue
        body = _decoded(header, data, MAX_INFLATED_BYTES - text)
        text += len(body)
        pages += len(PAGE.findall(body)) if b"/ObjStm" in header else 0
    return pages, text


def _split(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The file's bytes outside its streams' data (where uncompressed objects sit), and each stream's object header and
    data, read in one pass: each stream's data is skipped to its `endstream`, so what it holds is never read as objects."""
    outside, streams, at = [], [], 0
    while (found := STREAM.search(raw, at)) is not None:
        window = raw[max(at, found.start() - MAX_HEADER):found.start()]
        if not window.rstrip().endswith(b">>"):  # the word, not a stream's start
            outside.append(raw[at:found.end()])
            at = found.end()
            continue
        header = _header(window)
        end = raw.find(ENDSTREAM, found.end())
        if end < 0:
            raise Unreadable("a stream without its end")
        outside.append(raw[at:found.start()])
        streams.append((header, raw[found.end():end]))
        at = end + len(ENDSTREAM)
    return b"".join(outside) + raw[at:], streams


def _header(window: bytes) -> bytes:
    """A stream's object header: the bytes from its last `N G obj` in `window`; Unreadable when there is none."""
    starts = [found.end() for found in OBJECT.finditer(window)]
    if not starts:
        raise Unreadable("a stream whose object header is too long to read")
    return window[starts[-1]:]


def _decoded(header: bytes, data: bytes, room: int) -> bytes:
    """A stream's data as its reader sees it: inflated when Flate (at most `room` bytes), as it is when unfiltered."""
    kind = FILTER.search(header)
    if kind is None:
        return data
    if kind.group(1) not in (b"FlateDecode", b"Fl") or re.search(rb"/Filter\s*\[\s*/\w+\s*/", header):
        raise Unreadable("a filter other than Flate alone")
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data, max(room, 0) + 1)
    except zlib.error:
        raise Unreadable("a stream that does not inflate") from None
    if len(body) > room:
        raise Unreadable("inflating past the cap")
    return body
