"""The call log: every call with its candidates, cost and outcome, feedback on it, and a JSONL export.

``CallLog`` keeps it in one SQLite file (the default); ``PostgresCallLog`` in a PostgreSQL database
a fleet shares; ``open_call_log`` picks one by its target (a ``postgresql://`` URL or a path).
"""

from ._export import EXPORT_FORMAT
from ._log import CallLog
from ._open import open_call_log
from ._postgres import PostgresCallLog
from ._records import CallRecord, Feedback, new_call_id
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
    "SCHEMA_VERSION",
    "is_postgres_url",
    "new_call_id",
    "open_call_log",
    "url_without_password",
]
