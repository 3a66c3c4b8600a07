"""RateLimits: requests and tokens per minute (a sliding window) per key, per model or per client.

    limits = RateLimits(rpm=600, tpm=100_000, per="key", store="redis://host:6379/0")
    admission = limits.admit(key="team-a", model="gpt-4o", tokens=estimate)  # before sending
    limits.correct(admission, used)        # after the response: tpm counts what was really used
    limits.release(admission)              # instead, when the call was never sent

The policy (refuse or wait) is decided once in ``_policy``; the window lives in a store: this
process's memory, an SQLite file shared by the processes of a host, or Redis shared by hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._closing import Closing
from .._exceptions import ConfigError, StoreUnavailableError
from .._process import pid as this_pid
from .._process import random_hex
from .._redis_url import redact_url
from .._shielded import to_the_end
from . import _checks as check
from ._memory import MemoryWindow
from ._policy import Admission, Policy, Request, admission_flow, run_async, run_sync
from ._redis import RedisWindow
from ._seen import given_back
from ._sqlite_window import SQLiteWindow
from ._store import WindowStore
from ._window import Window

Per = Literal["key", "model", "client"]


def open_store(store: str | Path | None) -> WindowStore:
    """The store an option names: None -> this process's memory, a redis:// URL -> Redis, a path -> SQLite."""
    if store is None:
        return MemoryWindow()
    if isinstance(store, str) and check.is_url(store):
        return RedisWindow(store)
    return SQLiteWindow(Path(store))


class _Opened:
    """A RateLimits' store, opened on first use and again in a forked child (connections don't cross a fork)."""

    def __init__(self, store: WindowStore | None) -> None:
        self.lock = threading.Lock()
        self.store = store
        self.pid = this_pid()

    def ready(self) -> WindowStore | None:
        """The store if it is open in this process; None when it must be opened (first use, or a forked child)."""
        store = self.store
        return store if store is not None and self.pid == this_pid() else None


@dataclass(frozen=True, repr=False)
class RateLimits(Closing):
    """At most ``rpm`` requests and ``tpm`` tokens in any ``window_s`` seconds, per key, model or client.

    ``per="key"``: each budget key has its window (calls without a key share one); ``"model"``: each
    model name; ``"client"``: one window for everything. ``policy="raise"`` refuses a call that
    doesn't fit with RateLimitExceededError (``retry_after`` in seconds); ``"wait"`` sleeps until
    it fits, at most ``max_wait_s`` in all, then raises. ``store``: None (this process; pass the same
    object to clients that share a window), an SQLite file path (the processes of a host) or a
    ``redis://`` URL (every host). ``clock`` (seconds) defaults to the store's own: ``time.time``, or
    the Redis server's clock so hosts agree. ``sleep`` / ``asleep`` are injectable for tests.
    ``within``: another RateLimits whose window every call must fit too (a proxy's own, around a key's).
    """

    rpm: int | None = None
    tpm: int | None = None
    per: Per = "client"
    policy: Policy = "raise"
    max_wait_s: float = 60.0
    store: str | Path | None = None
    window_s: float = 60.0
    default_max_output_tokens: int | None = 4096  # None: a call with no output cap is admitted at its prompt alone
    clock: Callable[[], float] | None = field(default=None, compare=False)
    sleep: Callable[[float], Any] = field(default=time.sleep, compare=False)
    asleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, compare=False)
    within: RateLimits | None = None  # admitted here, a call is admitted there too (released here if refused there)
    _opened: _Opened = field(init=False, compare=False)

    def __post_init__(self) -> None:
        values = {
            "rpm": check.limit("rpm", self.rpm),
            "tpm": check.limit("tpm", self.tpm),
            "per": check.choice("per", self.per, ("key", "model", "client")),
            "policy": check.choice("policy", self.policy, ("raise", "wait")),
            "max_wait_s": check.seconds("max_wait_s", self.max_wait_s, zero=True),
            "window_s": check.window(self.window_s),
            "default_max_output_tokens": check.limit("default_max_output_tokens", self.default_max_output_tokens),
            "store": check.store(self.store),
        }
        if values["rpm"] is None and values["tpm"] is None:
            raise ConfigError("RateLimits needs rpm, tpm or both")
        check.callable_or_none("clock", self.clock, optional=True)
        check.callable_or_none("sleep", self.sleep, optional=False)
        check.callable_or_none("asleep", self.asleep, optional=False)
        if self.within is not None and not isinstance(self.within, RateLimits):
            raise ConfigError(f"within must be a RateLimits or None, got {self.within!r}")
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_opened", _Opened(MemoryWindow() if self.store is None else None))

    def __copy__(self) -> RateLimits:
        """The same object: a copied client shares its window (and its store connections)."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RateLimits:
        """The same object, as for ``copy``: options are frozen and the window is meant to be shared."""
        return self

    def __repr__(self) -> str:
        """The options that differ from the defaults; a Redis URL's password redacted."""
        shown = {"rpm": self.rpm, "tpm": self.tpm, "per": self.per, "policy": self.policy, "max_wait_s": self.max_wait_s,
                 "store": redact_url(self.store) if isinstance(self.store, str) else self.store, "window_s": self.window_s}
        defaults = {"rpm": None, "tpm": None, "per": "client", "policy": "raise", "max_wait_s": 60.0, "store": None, "window_s": 60.0}
        return "RateLimits(" + ", ".join(f"{name}={value!r}" for name, value in shown.items() if value != defaults[name]) + ")"

    def inside(self, outer: RateLimits) -> RateLimits:
        """These limits held within ``outer``'s, never loosened by them: a call is admitted in ``outer``'s window too,
        unless that is this very window (``outer`` per key, in the same file or Redis, over as long a window); over as
        long a window each limit is the stricter of the two (a limit only one sets holds). The copy shares this one's window."""
        same_length = outer.window_s == self.window_s
        same_window = same_length and outer.per == "key" and outer.store is not None and outer.store == self.store
        narrowed = dataclasses.replace(
            self,
            rpm=_stricter(self.rpm, outer.rpm) if same_length else self.rpm,
            tpm=_stricter(self.tpm, outer.tpm) if same_length else self.tpm,
            within=None if same_window else outer,
        )
        object.__setattr__(narrowed, "_opened", self._opened)
        return narrowed

    @property
    def counts_tokens(self) -> bool:
        """Whether a tpm holds the call here or in a window it is held ``within``: its admission then counts its worst case."""
        return self.tpm is not None or (self.within is not None and self.within.counts_tokens)

    @property
    def place(self) -> str:
        """The store holding this window, as the ``x-ratelimit-*`` headers tell it from another store's window of the
        same name: its file or URL, or this process's memory of this very window (shared by ``inside`` copies)."""
        return f"memory:{id(self._opened):x}" if self.store is None else f"store:{self.store}"

    @property
    def window(self) -> Window:
        """The limits every scope is held to."""
        return Window(self.rpm, self.tpm, self.window_s)

    def scope(self, *, key: str | None, model: str | None) -> str:
        """The window a call counts in: ``"client"``, ``"key"`` (no key), ``"key:<key>"`` or ``"model:<model>"``."""
        if self.per == "client":
            return "client"
        if self.per == "key":
            key = check.label("key", key, optional=True)
            return "key" if key is None else f"key:{key}"
        return f"model:{check.label('model', model, optional=False)}"

    def _request(self, key: str | None, model: str | None, tokens: int, waited_s: float = 0.0) -> Request:
        """A call's request for room, its arguments checked; ``waited_s`` it waited already (in an inner window) counts in ``max_wait_s``."""
        scope = self.scope(key=key, model=model)
        amount = check.tokens("tokens", tokens)
        bucket = f"{scope}|{self.window_s!r}s"
        return Request(scope, bucket, random_hex(16), amount, self.window, self.policy, max(0.0, self.max_wait_s - waited_s), self.clock,
                       self.place)

    def _store(self) -> WindowStore:
        """The open store (opened now if this is its first use, or the first in a forked child)."""
        opened = self._opened
        with opened.lock:
            store = opened.ready()
            if store is None:
                store = opened.store = open_store(self.store)
                opened.pid = this_pid()
            return store

    async def _astore(self) -> WindowStore:
        """``_store`` for the event loop: opening a file or server store may block (an SQLite file another
        writer holds waits out the busy timeout), so it is opened in a worker thread."""
        store = self._opened.ready()
        return store if store is not None else await asyncio.to_thread(self._store)

    def admit(self, *, key: str | None, model: str | None, tokens: int) -> Admission:
        """Room for one call of ``tokens`` (an estimate: ``correct`` it later), or RateLimitExceededError."""
        return self._admit(key, model, tokens, 0.0)

    def _admit(self, key: str | None, model: str | None, tokens: int, waited_s: float) -> Admission:
        """``admit`` after ``waited_s`` of waiting in inner windows: the wait here and in ``within``'s adds up to ``max_wait_s`` at most."""
        admission = run_sync(admission_flow(self._request(key, model, tokens, waited_s)), self._store(), self.sleep)
        if self.within is None:
            return admission
        try:
            outer = self.within._admit(key, model, tokens, waited_s + admission.waited_s)
        except BaseException:
            with contextlib.suppress(StoreUnavailableError):  # out of reach: the slot leaves with its window
                self.release(admission)
            raise
        return dataclasses.replace(admission, outer=outer, waited_s=admission.waited_s + outer.waited_s)

    async def aadmit(self, *, key: str | None, model: str | None, tokens: int) -> Admission:
        """``admit``, waiting with ``asleep`` and never blocking the event loop."""
        return await self._aadmit(key, model, tokens, 0.0)

    async def _aadmit(self, key: str | None, model: str | None, tokens: int, waited_s: float) -> Admission:
        """``_admit`` for the event loop."""
        admission = await run_async(admission_flow(self._request(key, model, tokens, waited_s)), await self._astore(), self.asleep)
        if self.within is None:
            return admission
        try:
            outer = await self.within._aadmit(key, model, tokens, waited_s + admission.waited_s)
        except BaseException:
            with contextlib.suppress(StoreUnavailableError):
                await to_the_end(self.arelease(admission))
            raise
        return dataclasses.replace(admission, outer=outer, waited_s=admission.waited_s + outer.waited_s)

    def correct(self, admission: Admission, tokens: int) -> bool:
        """Count the tokens the call really used instead of its estimate; False once the store has dropped it (it left the window)."""
        corrected = self._store().correct(admission.bucket, admission.id, check.tokens("tokens", tokens))
        if self.within is not None and admission.outer is not None:
            self.within.correct(admission.outer, tokens)
        return corrected

    async def acorrect(self, admission: Admission, tokens: int) -> bool:
        """``correct`` without blocking the event loop."""
        corrected = await (await self._astore()).acorrect(admission.bucket, admission.id, check.tokens("tokens", tokens))
        if self.within is not None and admission.outer is not None:
            await self.within.acorrect(admission.outer, tokens)
        return corrected

    def release(self, admission: Admission) -> bool:
        """Take back an admission whose call was never sent (refused by a budget, failed before sending)."""
        released = self._store().release(admission.bucket, admission.id)
        if released:
            given_back(self.place, admission.bucket, self.window, admission.tokens, admission.id)  # x-ratelimit-*: the window without it
        if self.within is not None and admission.outer is not None:
            self.within.release(admission.outer)
        return released

    async def arelease(self, admission: Admission) -> bool:
        """``release`` without blocking the event loop."""
        released = await (await self._astore()).arelease(admission.bucket, admission.id)
        if released:
            given_back(self.place, admission.bucket, self.window, admission.tokens, admission.id)
        if self.within is not None and admission.outer is not None:
            await self.within.arelease(admission.outer)
        return released

    def close(self) -> None:
        """Close the store's connections (a file or server store reopens on next use; memory keeps its window)."""
        opened = self._opened
        with opened.lock:
            if opened.store is not None and not isinstance(opened.store, MemoryWindow):
                opened.store.close()
                opened.store = None

    async def aclose(self) -> None:
        """``close``, awaiting the asyncio Redis client's connections."""
        opened = self._opened
        with opened.lock:
            store, opened.store = opened.store, (opened.store if isinstance(opened.store, MemoryWindow) else None)
        if store is not None and not isinstance(store, MemoryWindow):
            await store.aclose()


def _stricter(mine: int | None, theirs: int | None) -> int | None:
    """The stricter of two limits (None: no limit)."""
    return theirs if mine is None else mine if theirs is None else min(mine, theirs)
