"""Rate limits beside budgets: requests and tokens per minute in a sliding window, per key, model or client,
kept in this process, an SQLite file (one host) or Redis (a fleet), refusing or waiting by policy."""

from .._redis_url import redact_url
from ._limits import Per, RateLimits, open_store
from ._memory import MemoryWindow
from ._policy import Admission, Policy
from ._redis import RedisWindow
from ._seen import WindowSeen, watching_windows
from ._sqlite_window import SQLiteWindow
from ._store import WindowStore
from ._window import Verdict, Window, judge

__all__ = [
    "Admission",
    "MemoryWindow",
    "Per",
    "Policy",
    "RateLimits",
    "RedisWindow",
    "SQLiteWindow",
    "Verdict",
    "Window",
    "WindowSeen",
    "WindowStore",
    "judge",
    "open_store",
    "redact_url",
    "watching_windows",
]
