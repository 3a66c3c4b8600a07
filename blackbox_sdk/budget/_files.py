"""An upper bound on the prompt tokens of a PDF given inline (chat's `file` part, the Responses API's `input_file`).

OpenAI puts a PDF into the model's context as the text it extracts and an image of each page. Its base64 text is not
what is billed (about one token per byte of the file, millions for a scan of a few pages). The bound, read from the
file's bytes with the standard library alone:

- each page (a `/Type /Page` object, in the file or inside a compressed object stream) as one high-detail image;
- the text: only string operands show text, so every string in the file is counted (in its streams, Flate streams
  inflated, and in its objects), each byte as a character code showing at most `widest` characters (the longest
  mapping of the file's `ToUnicode` maps, 1 without them), each character at most 3 bytes of UTF-8 and each token at
  least one byte; plus `GAP_TOKENS` per string for the spaces and line ends an extractor puts between them. Image
  streams, font programs and cross-reference streams show no text and are skipped.

A file it can't read that way (not a PDF, encrypted, no page found, a stream of another filter than Flate, or
inflating past `MAX_INFLATED_BYTES`) gets None: the caller counts it as before (its JSON).
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib

from .._exceptions import BlackBoxError

MAX_INFLATED_BYTES = 64 * 1024 * 1024  # past this, inflating more is refused (a zip bomb): the file is counted as before
MAX_HEADER = 4096  # the most bytes a stream's object header (`N 0 obj <<...>>`) is looked for in, so reading stays linear
UTF8_BYTES = 3  # the most UTF-8 bytes of one UTF-16 unit (a surrogate pair is 4 bytes for 2 units)
GAP_TOKENS = 2  # a space and a line end an extractor may put beside each string
PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")  # a page object (not the /Pages tree nodes)
STREAM = re.compile(rb"(?<!end)stream\r?\n")  # where a stream's data begins, after its dictionary
OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")  # where an object begins
SHOWS_NO_TEXT = re.compile(rb"/Subtype\s*/(Image|Type1C|CIDFontType0C|OpenType)(?![A-Za-z])|/Length[123]\b|/Type\s*/XRef\b")
FILTER = re.compile(rb"/Filter\s*\[?\s*/([A-Za-z0-9]+)")
STRING_TOKEN = re.compile(rb"\\.|[()]|<<|<[0-9A-Fa-f\s]*>", re.S)  # an escape, a literal's parenthesis, a hex string
HEX = re.compile(rb"<[0-9A-Fa-f\s]*>")
BFCHAR = re.compile(rb"beginbfchar(.*?)endbfchar", re.S)
BFRANGE = re.compile(rb"beginbfrange(.*?)endbfrange", re.S)
RANGE_TARGET = re.compile(rb"<[0-9A-Fa-f\s]*>\s*<[0-9A-Fa-f\s]*>\s*(<[0-9A-Fa-f\s]*>|\[[^\]]*\])")  # lo, hi, then its target(s)
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
    """Prompt tokens a PDF costs at most: its pages at `image_tokens` each and the text its strings can show; None when
    it can't be read so (the caller falls back)."""
    if re.search(rb"/Encrypt\b", raw):
        return None
    try:
        pages, text = _scan(raw)
    except Unreadable:
        return None
    return pages * image_tokens + text if pages else None


def _scan(raw: bytes) -> tuple[int, int]:
    """The page objects found (in the file and in inflated object streams) and the tokens its strings can show."""
    outside, streams = _split(raw)
    pages, (size, count), widest, inflated = len(PAGE.findall(outside)), _strings(outside), 1, 0
    for header, data in streams:
        if SHOWS_NO_TEXT.search(header):
            continue
        body = _decoded(header, data, MAX_INFLATED_BYTES - inflated)
        inflated += len(body)
        pages += len(PAGE.findall(body)) if b"/ObjStm" in header else 0
        widest = max(widest, _widest(body)) if b"begincmap" in body else widest
        more, strings = _strings(body)
        size, count = size + more, count + strings
    return pages, UTF8_BYTES * widest * size + GAP_TOKENS * count


def _strings(data: bytes) -> tuple[int, int]:
    """The bytes and number of the strings in `data`: literal `(...)` (nested, escapes kept as written) and hex `<...>`;
    one left open runs to the end."""
    size = count = depth = start = 0
    for found in STRING_TOKEN.finditer(data):
        token = found.group()
        if depth:
            depth += 1 if token == b"(" else -1 if token == b")" else 0
            if not depth:
                size, count = size + found.start() - start, count + 1
        elif token == b"(":
            depth, start = 1, found.end()
        elif token.startswith(b"<") and token != b"<<":
            size, count = size + (len(token) - 1) // 2, count + 1
    return (size + len(data) - start, count + 1) if depth else (size, count)


def _widest(cmap: bytes) -> int:
    """The most UTF-16 units one code maps to in a `ToUnicode` map's `bfchar` and `bfrange` entries (at least 1)."""
    targets = [target for block in BFCHAR.findall(cmap) for target in HEX.findall(block)[1::2]]
    targets += [target for block in BFRANGE.findall(cmap) for entry in RANGE_TARGET.findall(block) for target in HEX.findall(entry)]
    return max([1] + [-(-len(re.sub(rb"[^0-9A-Fa-f]", b"", target)) // 4) for target in targets])


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
