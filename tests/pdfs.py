"""Small PDFs built with the standard library, for the budget's count of a file part: pages whose content draws a line
of text, a large image stream beside them (what makes the base64 text large), pages kept in a compressed object stream,
and a file whose bytes can't be bounded (encrypted, a stream of another filter)."""

from __future__ import annotations

import base64
import os
import zlib

TEXT = b"BT /F1 12 Tf 72 712 Td (The quarterly report, page one.) Tj ET"


def pdf(pages: int, *, image_bytes: int = 0, in_object_stream: bool = False, how: str = "plain") -> bytes:
    """A PDF of `pages` pages drawing TEXT, an image stream of `image_bytes` random bytes (incompressible), its page
    objects in one Flate object stream when `in_object_stream`; `how`: "plain", "encrypted" or "lzw" (a content stream
    of a filter the count can't read)."""
    content = zlib.compress(TEXT)
    page_objects = [b"<< /Type /Page /Parent 2 0 R /Contents 3 0 R >>" for _ in range(pages)]
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count %d >>" % pages]
    filters = b"/Filter /LZWDecode" if how == "lzw" else b"/Filter /FlateDecode"
    objects.append(b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(content), filters, content))
    if in_object_stream:
        packed = zlib.compress(b"\n".join(page_objects))
        objects.append(b"<< /Type /ObjStm /N %d /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (pages, len(packed), packed))
    else:
        objects += page_objects
    if image_bytes:
        pixels = zlib.compress(os.urandom(image_bytes))
        objects.append(b"<< /Type /XObject /Subtype /Image /Width 512 /Height 512 /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(pixels), pixels))
    trailer = b"<< /Root 1 0 R /Encrypt 9 0 R >>" if how == "encrypted" else b"<< /Root 1 0 R >>"
    body = b"".join(b"%d 0 obj\n%s\nendobj\n" % (number, item) for number, item in enumerate(objects, start=1))
    return b"%PDF-1.7\n" + body + b"trailer\n" + trailer + b"\n%%EOF\n"


def data_url(raw: bytes) -> str:
    """A file's bytes as the data URL a file part's `file_data` carries."""
    return "data:application/pdf;base64," + base64.b64encode(raw).decode()
