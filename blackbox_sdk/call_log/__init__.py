"""The call log: every call with its candidates, cost and outcome, feedback on it, and a JSONL export.

``CallLog`` keeps it in one SQLite file (the default); ``PostgresCallLog`` in a PostgreSQL database
a fleet shares; ``open_call_log`` picks one by its target (a ``postgresql://`` URL or a path).
``repair_log`` writes the records of calls the budget ledger charged but whose process ended before logging them.
"""

from ._export import EXPORT_FORMAT
from ._log import CallLog
from ._open import open_call_log
from ._postgres import PostgresCallLog
from ._records import CallRecord, Feedback, new_call_id
from ._repair import RepairableLog, repair_log
from ._store import CallLogStore
from ._tables import SCHEMA_VERSION
from ._urls import is_postgres_url, url_without_password

__all__ = [
    "CallLog",
    "CallLogStore",
    "CallRecord",
    "EXPORT_FORMAT",
    "Feedback",
    "PostgresCallLog",
    "RepairableLog",
    "SCHEMA_VERSION",
    "is_postgres_url",
    "new_call_id",
    "open_call_log",
    "repair_log",
    "url_without_password",
]
