"""The path every call takes: validate, cache lookup, budget reserve, send with retries and
fan-out, settle, store, rerank, log. Every decision is made once, in flows that the sync and
async cores drive; the two cores differ only in how they do I/O.
"""

from ._async import AsyncCore, before_sending, offloaded
from ._call import Call
from ._core import Core, build
from ._meter import Meter
from ._streams import BlackBoxAsyncStream, BlackBoxStream
from ._sync import SyncCore

__all__ = ["AsyncCore", "BlackBoxAsyncStream", "BlackBoxStream", "Call", "Core", "Meter", "SyncCore", "before_sending", "build", "offloaded"]
