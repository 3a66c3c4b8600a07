"""The seam between the SDK and a call log's storage: a small protocol a second backend implements.

Two implement it: :class:`~blackbox_sdk.call_log.CallLog` (one SQLite file) and
:class:`~blackbox_sdk.call_log.PostgresCallLog` (a database a fleet shares). The client records
every call and its feedback through it; the readers (``blackbox-sdk stats``, ``log export`` and
``adapter train``) use ``stats()`` and the JSONL export (``_export.export_jsonl`` writes that
format from any store's calls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

from ._records import CallRecord, Label


@runtime_checkable
class CallLogStore(Protocol):
    """What the SDK needs from a call log: write calls and feedback, export and summarise them, close."""

    def record(self, rec: CallRecord) -> None:
        """Write one call with its candidates, all or nothing, secrets redacted."""
        ...

    def feedback(
        self, call_id: str, *, reward: float | None = None, label: Label | None = None,
        preferred: int | None = None, reference: str | None = None, note: str | None = None,
    ) -> None:
        """Attach feedback to a logged call; ConfigError for an unknown call or a bad index."""
        ...

    def export_jsonl(self, out: str | Path | TextIO, *, replace: bool = False) -> int:
        """Write every call with its feedback as JSON lines (the trainer's input); the number of lines; an existing file
        is replaced only with ``replace=True`` (else ConfigError)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Calls, errors, cache hits, spend and feedback: in total, by model, by UTC day (``_stats.summary``'s form)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
