"""RedisWindow: sliding windows in Redis, shared by every process and host using the same URL.

Admission, correction and release are each one Lua script (``_lua``), so they are atomic and take
one round trip. By default the script reads the server's clock, so hosts agree on the window
whatever their own clocks say. A scope's keys expire a little after their window, so idle scopes vanish (the one ``epoch`` key stays).
An unreachable or failing server raises StoreUnavailableError, with the URL's password redacted:
a rate limit fails closed, it is never silently off; nor is it silently reset: a server that lost its data
under a process (its ``epoch`` key gone) refuses every admission for one window, the counts it forgot. The URL is checked, shown and made into
clients by ``RedisURL``, which imports redis-py only then; one the server refuses (a wrong password,
a database it does not have) is a ConfigError when the store opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from .._closing import Closing
from .._exceptions import StoreUnavailableError
from .._process import random_hex
from .._redis_url import REDIS_OR_UNIX, RedisURL
from ._lua import ADMIT, CORRECT, RELEASE
from ._store import Clock
from ._window import Verdict, Window

KEY_PREFIX = "blackbox:rate"
SOCKET_TIMEOUT_S = 5.0
RETRIES, BACKOFF_S = 2, (0.02, 0.25)  # both clients' retries of a dropped connection (scripts are idempotent), their wait: (base, cap)
_T = TypeVar("_T")


class RedisWindow(Closing):
    """Sliding windows in the Redis server at ``url`` (redis://, rediss:// or unix://)."""

    def __init__(self, url: str, *, prefix: str = KEY_PREFIX, timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        """Check ``url`` (ConfigError for a bad one or one the server refuses, its password never shown) and prepare the scripts."""
        self._url = RedisURL(url, "rate-limit store", schemes=REDIS_OR_UNIX)
        self.url, self._prefix, self._timeout_s = self._url.shown, prefix, timeout_s
        self._client = self._url.client(
            retries=RETRIES, backoff=BACKOFF_S, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        )
        self._epoch = ""  # the store's epoch as this process last saw it ('' before its first admission)
        self._url.check(timeout_s, prefix=f"{prefix}:")  # a wrong password, database or ACL: ConfigError now, not at the first call
        self._scripts = {name: self._client.register_script(source) for name, source in (("admit", ADMIT), ("correct", CORRECT), ("release", RELEASE))}
        # per event loop (threads may each run one): its asyncio client's scripts, and what closes the client as that loop shuts down
        self._async: dict[asyncio.AbstractEventLoop, tuple[dict[str, Any], AsyncGenerator[None, None]]] = {}
        self._pid = os.getpid()  # a forked child's loops are its own: those it inherited run in no thread of it

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        """Redis and socket errors as StoreUnavailableError, password redacted, the driver's error not chained."""
        import redis

        try:
            yield
        except (redis.RedisError, OSError, ValueError) as exc:
            detail = self._url.reason(exc)
            raise StoreUnavailableError(f"the rate-limit store {self.url} can't {action}: {detail}") from None

    def _keys(self, scope: str) -> list[str]:
        """A scope's sorted set and hash; one hash tag, so a cluster keeps them on one node."""
        tag = hashlib.sha256(scope.encode()).hexdigest()[:32]
        return [f"{self._prefix}:{{{tag}}}:z", f"{self._prefix}:{{{tag}}}:h"]

    def _admit_args(self, event_id: str, tokens: int, window: Window, clock: Clock | None) -> list[str | int]:
        """The admission script's ARGV, with the store's epoch as this process last saw it (a loss of data shows as its change)."""
        now = "" if clock is None else repr(float(clock()))
        ttl_ms = math.ceil(window.window_s * 1000) + 1000
        limit = [-1 if value is None else value for value in (window.rpm, window.tpm)]
        return [event_id, tokens, repr(float(window.window_s)), *limit, now, ttl_ms, f"{self._prefix}:epoch", self._epoch, random_hex(16)]

    def _verdict(self, reply: Any, window: Window) -> Verdict:
        """The admission script's reply as a Verdict; StoreUnavailableError when it is not one, or while the store is
        refusing for one window after it lost its data (its counts gone, a call admitted then could pass the limit)."""
        try:
            if reply[0] == -1:
                self._epoch = reply[2]
                raise StoreUnavailableError(
                    f"the rate-limit store {self.url} lost its data (a restart without persistence or a FLUSHALL), and with it "
                    f"the counts of its windows: calls are refused for {int(reply[1]) / 1000:.1f} s more, until what it "
                    "forgot would have left the window (run that Redis with appendonly yes: docs/fleet.md)"
                )
            self._epoch, reply = reply[-1], reply[:-1]
            if reply[0] == 1:
                if len(reply) == 2:  # an id already in: the window not read
                    return Verdict(True, float(reply[1]))
                at, before = float(reply[1]), (float(reply[4]) if reply[4] else None)
                reset_without_s = 0.0 if before is None else max(0.0, before + window.window_s - at)
                return Verdict(True, at, requests=int(reply[2]), tokens=int(reply[3]), reset_s=window.window_s, reset_without_s=reset_without_s)
            if reply[0] == 0 and reply[3] in ("rpm", "tpm"):
                at, reset_s = float(reply[1]), max(0.0, float(reply[6]) + window.window_s - float(reply[1]))
                return Verdict(False, at, float(reply[2]), reply[3], requests=int(reply[4]), tokens=int(reply[5]), reset_s=reset_s)
        except (TypeError, IndexError, ValueError):
            pass
        raise StoreUnavailableError(f"the rate-limit store {self.url} answered an admission with {reply!r}")

    def try_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """Admit and record the event if it fits: one script, one round trip."""
        args = self._admit_args(event_id, tokens, window, clock)
        with self._unavailable("admit a call"):
            reply = self._scripts["admit"](keys=self._keys(scope), args=args)
        return self._verdict(reply, window)

    def correct(self, scope: str, event_id: str, tokens: int) -> bool:
        """Replace a live event's token amount: one script."""
        with self._unavailable("correct a call's tokens"):
            return bool(self._scripts["correct"](keys=self._keys(scope), args=[event_id, tokens]))

    def release(self, scope: str, event_id: str) -> bool:
        """Drop a live event: one script."""
        with self._unavailable("release a call"):
            return bool(self._scripts["release"](keys=self._keys(scope), args=[event_id]))

    async def _async_scripts(self) -> dict[str, Any]:
        """The scripts on redis-py's asyncio client for the running loop (a client belongs to one loop; each loop has its
        own), closed as that loop shuts down (``asyncio.run``'s end), never left open when the loop is gone."""
        loop = asyncio.get_running_loop()
        held = self._async.get(loop)
        if held is None:
            for gone in [other for other in list(self._async) if other.is_closed()]:  # closed without shutting down its generators:
                self._async.pop(gone, None)  # nothing can close its client now
            # a pooled connection that a restarted server closed is retried on a new one, as the sync client's is
            # (every script is idempotent by event id)
            client = self._url.async_client(
                retries=RETRIES, backoff=BACKOFF_S, decode_responses=True, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s,
            )
            scripts = {name: client.register_script(script.script) for name, script in self._scripts.items()}
            closer = _closed_with_loop(client, lambda: self._forget(loop, closer))
            await closer.__anext__()  # the loop now knows it: its shutdown_asyncgens closes the client
            held = self._async[loop] = (scripts, closer)
        return held[0]

    async def _arun(self, action: str, call: Callable[[dict[str, Any]], Awaitable[_T]]) -> _T:
        """Await one script on the asyncio client, its errors worded as StoreUnavailableError."""
        with self._unavailable(action):
            return await call(await self._async_scripts())

    async def atry_admit(self, scope: str, event_id: str, tokens: int, window: Window, clock: Clock | None) -> Verdict:
        """``try_admit`` on the asyncio client."""
        args = self._admit_args(event_id, tokens, window, clock)
        reply = await self._arun("admit a call", lambda scripts: scripts["admit"](keys=self._keys(scope), args=args))
        return self._verdict(reply, window)

    async def acorrect(self, scope: str, event_id: str, tokens: int) -> bool:
        """``correct`` on the asyncio client."""
        return bool(await self._arun("correct a call's tokens", lambda scripts: scripts["correct"](keys=self._keys(scope), args=[event_id, tokens])))

    async def arelease(self, scope: str, event_id: str) -> bool:
        """``release`` on the asyncio client."""
        return bool(await self._arun("release a call", lambda scripts: scripts["release"](keys=self._keys(scope), args=[event_id])))

    def _forget(self, loop: asyncio.AbstractEventLoop, closer: AsyncGenerator[None, None]) -> None:
        """Drop ``loop``'s entry once its client is closed, unless the loop has a newer client by then."""
        held = self._async.get(loop)
        if held is not None and held[1] is closer:
            del self._async[loop]

    def close(self) -> None:
        """Close the connections: the sync client's, and each asyncio client on its own loop, waited for on a loop
        that runs in another thread (at most the socket timeout). What can't be closed safely from here is left to
        its loop's shutdown (``asyncio.run``'s end): the client of a loop not running now, and that of the loop this is
        called on, whose closing is scheduled but not awaited (``aclose`` awaits it)."""
        self._client.close()
        if self._pid != os.getpid():  # a forked child: the parent's loops (and their clients) are none of its to close
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        running = [(loop, closer) for loop, (_, closer) in list(self._async.items()) if loop.is_running() and not loop.is_closed()]
        closing = [(loop, asyncio.run_coroutine_threadsafe(_ended(closer), loop)) for loop, closer in running]  # each on its own loop
        for loop, done in closing:
            if loop is not here:
                with contextlib.suppress(Exception):  # a client that fails to close, a loop that does not answer in time
                    done.result(self._timeout_s)

    async def aclose(self) -> None:
        """``close``, awaiting this loop's asyncio client first; another running loop's is closed on that loop, waited
        for in a worker thread (never blocking this loop)."""
        held = self._async.get(asyncio.get_running_loop())
        if held is not None:
            await held[1].aclose()
        await asyncio.to_thread(self.close)


async def _closed_with_loop(client: Any, forget: Callable[[], object]) -> AsyncGenerator[None, None]:
    """Yields once and stays suspended: the loop that started it closes it at its shutdown (``shutdown_asyncgens``,
    which ``asyncio.run`` calls), and the asyncio client's connections with it, while that loop can still await them;
    then ``forget`` drops the loop's entry, so a finished loop is not kept."""
    try:
        yield
    finally:
        forget()
        await client.aclose()


async def _ended(closer: AsyncGenerator[None, None]) -> None:
    """A loop's ``_closed_with_loop`` closed (its client with it), as a coroutine another thread can hand that loop."""
    await closer.aclose()
