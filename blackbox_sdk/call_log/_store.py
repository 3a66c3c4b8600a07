"""The seam between the SDK and a call log's storage: a small protocol a second backend implements.

Today's implementation is :class:`~blackbox_sdk.call_log.CallLog` (one SQLite file). The client
records every call and its feedback through it, and the adapter trainer reads the log back
through its JSONL export (``_export.export_jsonl`` writes that format from any store's calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

from ._records import CallRecord, Label


@runtime_checkable
class CallLogStore(Protocol):
    """What the SDK needs from a call log: write calls and feedback, export them for training, close."""

    def record(self, rec: CallRecord) -> None:
        """Write one call with its candidates, all or nothing, secrets redacted."""
        ...

    def feedback(
        self, call_id: str, *, reward: float | None = None, label: Label | None = None,
        preferred: int | None = None, reference: str | None = None, note: str | None = None,
    ) -> None:
        """Attach feedback to a logged call; ConfigError for an unknown call or a bad index."""
        ...

    def export_jsonl(self, out: str | Path | TextIO) -> int:
        """Write every call with its feedback as JSON lines (the trainer's input); returns the number of lines."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
