"""The JSONL export: one line per call with its candidates and feedback, the format the adapter trainer reads.

Documented field by field in ``docs/call-log.md``. Any call-log store can write it from its
(record, feedback) pairs; a file is written beside the target and renamed, so it is whole or absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .._exceptions import CallLogError
from ._records import CallRecord, Feedback

EXPORT_FORMAT = "blackbox-calllog/1"


def export_jsonl(calls: Iterable[tuple[CallRecord, list[Feedback]]], out: str | Path | TextIO) -> int:
    """Write one JSON line per call to a file path or an open text stream; returns the number of lines."""
    if not isinstance(out, (str, Path)):
        return _write_lines(calls, out)
    target = Path(out)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as sink:
            count = _write_lines(calls, sink)
        partial.replace(target)
    except OSError as exc:
        raise CallLogError(f"can't write the export {target}: {exc}") from exc
    return count


def _write_lines(calls: Iterable[tuple[CallRecord, list[Feedback]]], sink: TextIO) -> int:
    """Write the export lines to an open text stream."""
    count = 0
    for record, feedback in calls:
        line = {
            "format": EXPORT_FORMAT,
            **record.model_dump(mode="json"),
            "feedback": [item.model_dump(mode="json", exclude={"call_id"}) for item in feedback],
        }
        sink.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
        count += 1
    return count
