"""The call log: every call with its candidates, cost and outcome, feedback on it, and a JSONL export."""

from ._export import EXPORT_FORMAT
from ._log import CallLog
from ._records import CallRecord, Feedback, new_call_id
from ._store import CallLogStore
from ._tables import SCHEMA_VERSION

__all__ = [
    "CallLog",
    "CallLogStore",
    "CallRecord",
    "EXPORT_FORMAT",
    "Feedback",
    "SCHEMA_VERSION",
    "new_call_id",
]
