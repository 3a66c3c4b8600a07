"""The cache's shared store on Redis: JSON text per key under a prefix and the namespace, never unpickled.

Every process and host that opens the same URL and namespace shares the buckets, stored as
``blackbox:cache:<namespace>:<key>`` (claims for single flight as ``...:<key>:claim``). A bucket's
read-modify-write is optimistic: a compare-and-set Lua script writes the new text only while the
bucket still holds what it was computed from, and answers what it holds otherwise (the first try
guesses an absent bucket, as a miss's store finds it: one round trip; then retried, with jitter
after the second, until ``timeout``). The same script drops the writer's claim. A claim is taken by
the Lua script ``_CLAIM`` unless a live claim (one with an expiry) is there, so a value without one is
taken over, and the bucket is read in the same round trip; it is released by a compare-and-delete Lua script, and the TTL is Redis's own expiry.
The URL is checked, shown and made into a client by :class:`~blackbox_sdk._redis_url.RedisURL`
(redis-py is imported only when a ``redis://`` or ``rediss://`` cache is opened). Failures to reach
the server are raised as CacheUnavailableError (the Cache then misses or skips the write) and
tracked by an :class:`~blackbox_sdk.cache._outage.Outage`; no message carries the URL's password. A URL
the server refuses (a wrong password, a database it does not have) is a ConfigError when the store opens.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .._exceptions import CacheError
from .._logging import logger
from .._redis_url import RedisURL
from ._outage import Outage
from ._store import CacheUnavailableError, Change, Claim, ForeignValueError

KEY_PREFIX = "blackbox:cache:"
SOCKET_TIMEOUT_S = 2.0  # connect and read timeouts unless the URL sets its own (?socket_timeout=...)

_KEY_GLOB = "[0-9a-f]" * 64  # a bucket name ends in exactly a SHA-256 hex key; claims end in ":claim"
_BATCH = 500
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: the claim, the bucket. ARGV: the token, PX in ms. Taken unless a live claim is there: every claim has an
# expiry, so a value without one (PTTL -1, planted or left by a foreign writer) is not a claim and is replaced
# rather than holding identical requests back forever. Returns {1 when taken else 0, the bucket's text if it
# holds a string}: the read after the claim in the same round trip.
_CLAIM = """
local taken = 0
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) taken = 1 end
if redis.call('TYPE', KEYS[2])['ok'] == 'string' then return {taken, redis.call('GET', KEYS[2])} end
return {taken}
"""
# KEYS: bucket, claim. ARGV: 1 if a value is expected, the expected bytes, the write (set / del / none),
# the new bytes, PX in ms ('' for none), the claim's token ('' for none). Another Redis type reads as
# absent (SET replaces it). Returns {1} when written, else {0} or {0, what the bucket holds}.
_SWAP = """
local current = false
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then current = redis.call('GET', KEYS[1]) end
if (ARGV[1] == '1' and current ~= ARGV[2]) or (ARGV[1] == '0' and current) then
  if current then return {0, current} end
  return {0}
end
if ARGV[3] == 'set' and ARGV[5] == '' then redis.call('SET', KEYS[1], ARGV[4])
elseif ARGV[3] == 'set' then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
elseif ARGV[3] == 'del' then redis.call('DEL', KEYS[1]) end
if ARGV[6] ~= '' and redis.pcall('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
return {1}
"""
_T = TypeVar("_T")


def _milliseconds(seconds: float | None) -> int | None:
    """A Redis PX expiry (at least 1 ms) for an expiry in seconds, None for no expiry."""
    return None if seconds is None else max(1, math.ceil(seconds * 1000))


def _text(raw: bytes | None) -> str | None:
    """Stored bytes as text; ForeignValueError for bytes that are not UTF-8."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ForeignValueError(f"stored value is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _decoded(raw: bytes | None) -> str | None:
    """Stored bytes as text, None for bytes that are not UTF-8 (a SET replaces them)."""
    try:
        return _text(raw)
    except ForeignValueError:
        return None


class RedisStore:
    """A namespace on a Redis server as a :class:`~blackbox_sdk.cache.CacheStore` that many hosts share."""

    def __init__(self, url: str, *, namespace: str, timeout: float, writes: bool = True) -> None:
        """Prepare a client for ``url``, the URL tried with one PING (``RedisURL.check``); ``timeout`` bounds a contended write.
        A cache opened to write has its user's right to run scripts on its keys tried too; one opened to read only (a
        read-only ACL user, a replica) does not need it."""
        self._url = RedisURL(url, "cache")
        self.location = self._url.shown
        self._prefix = f"{KEY_PREFIX}{namespace}:"
        self._pattern = "".join(f"\\{c}" if c in "*?[]\\^" else c for c in self._prefix) + _KEY_GLOB
        self._timeout = timeout
        wait = min(timeout, SOCKET_TIMEOUT_S)
        # one immediate retry: a pooled connection to a restarted server fails once, then reconnects
        self._client = self._url.client(retries=1, socket_timeout=wait, socket_connect_timeout=wait)
        self._url.check(wait, prefix=self._prefix if writes else None)  # a wrong password, database or ACL: ConfigError now, not a cache that always misses
        from redis import exceptions  # installed: client() refused to go on without it

        self._errors = exceptions
        self._release = self._client.register_script(_RELEASE)
        self._claim = self._client.register_script(_CLAIM)
        self._swap_script = self._client.register_script(_SWAP)
        self._outage = Outage(self.location)
        self._refusals: set[str] = set()  # kinds of refusal (the error's type) warned of already

    def get(self, key: str) -> str | None:
        """The text stored at ``key``, None on a miss; ForeignValueError for another type or non-UTF-8 bytes."""
        return _text(self._run("read the cache", lambda: self._client.get(self._prefix + key)))

    def update(self, key: str, change: Change, *, expire: float | None, action: str, discard: Claim | None = None) -> None:
        """Apply ``change`` (and drop the ``discard`` claim) by compare-and-set, retrying while other writers win the race."""
        name = self._prefix + key
        claim = (name, "") if discard is None else (self._prefix + discard[0], discard[1])
        deadline = time.monotonic() + self._timeout
        seen: list[bytes | None] = [None]  # what the bucket held at the last look; first guess: absent
        for attempt in itertools.count():
            if self._run(action, lambda: self._swap(name, change, expire, claim, seen)):
                return
            if attempt and time.monotonic() >= deadline:
                raise CacheError(
                    f"can't {action}: the bucket at {self.location} kept changing under other writers for "
                    f"{self._timeout}s; retry later or raise Cache(timeout=...)"
                )
            if attempt:  # the first miss only corrected the guess; later ones are contention
                time.sleep(random.uniform(0.0, 0.005))

    def delete(self, key: str) -> None:
        """Remove ``key`` if it is stored."""
        self._run("delete a bucket", lambda: self._client.delete(self._prefix + key))

    def claim(self, key: str, token: str, *, expire: float, bucket: str) -> tuple[bool, str | None]:
        """Store ``token`` for ``expire`` seconds unless ``key`` holds a live claim (one with an expiry), then read
        ``bucket``, in one Lua script (one round trip); bytes that are not UTF-8 read as absent."""
        names, expiry = [self._prefix + key, self._prefix + bucket], _milliseconds(expire)
        reply = self._run("take a claim", lambda: self._claim(keys=names, args=[token.encode("utf-8"), expiry]))
        return reply[0] == 1, _decoded(reply[1]) if len(reply) > 1 else None

    def discard(self, key: str, text: str) -> None:
        """Remove ``key`` only while it still holds ``text``, in one Lua script."""
        name = self._prefix + key
        self._run("release a claim", lambda: self._release(keys=[name], args=[text.encode("utf-8")]))

    def clear(self) -> None:
        """Remove every bucket of this namespace (other namespaces and claims stay)."""

        def wipe() -> None:
            for batch in self._batches():
                self._client.delete(*batch)

        self._run("clear the cache", wipe)

    def size(self) -> tuple[int, int]:
        """How many buckets this namespace holds, and the bytes of their values (a value of another Redis type counts none)."""

        def measure() -> tuple[int, int]:
            keys = volume = 0
            for batch in self._batches():
                pipe = self._client.pipeline(transaction=False)
                for name in batch:
                    pipe.strlen(name)
                lengths = pipe.execute(raise_on_error=False)  # a value of another type (planted) has no length: not a refusal
                keys, volume = keys + len(batch), volume + sum(n for n in lengths if isinstance(n, int))
            return keys, volume

        return self._run("measure the cache", measure)

    def close(self) -> None:
        """Close the client's connections; a later use reconnects."""
        self._client.close()

    def _swap(self, name: str, change: Change, expire: float | None, claim: tuple[str, str], seen: list[bytes | None]) -> bool:
        """One compare-and-set from ``seen[0]`` (dropping the claim if it still holds its token); on a
        mismatch, False with ``seen[0]`` set to what the bucket holds now."""
        expected = seen[0]
        current = _decoded(expected)  # not UTF-8: None, and a SET replaces it
        new = change(current)
        write = "none" if new == current else "del" if new is None else "set"
        args = [
            "0" if expected is None else "1", b"" if expected is None else expected, write,
            b"" if new is None else new.encode("utf-8"), "" if expire is None else str(_milliseconds(expire)), claim[1],
        ]
        reply = self._swap_script(keys=[name, claim[0]], args=args)
        if reply[0] == 1:
            return True
        seen[0] = reply[1] if len(reply) > 1 else None
        return False

    def _batches(self) -> Iterator[list[bytes]]:
        """This namespace's bucket names, a few hundred at a time (SCAN: no blocking KEYS)."""
        batch: list[bytes] = []
        for name in self._client.scan_iter(match=self._pattern, count=_BATCH):
            batch.append(name)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _refused(self, action: str, kind: str, reason: str) -> CacheUnavailableError:
        """A command the server refused (out of memory under noeviction, a read-only replica): this write is
        skipped, warned of once per kind of refusal, and the store is not taken for down, so lookups still hit."""
        if kind not in self._refusals:
            self._refusals.add(kind)
            logger.warning("cache: the Redis at %s refused to %s (%s); answers are not stored while it refuses", self.location, action, reason)
        return CacheUnavailableError(f"can't {action}: the cache's Redis at {self.location} refused it ({reason})")

    def _run(self, action: str, operation: Callable[[], _T]) -> _T:
        """Run one Redis operation; a wrong-type value is foreign, any other Redis failure is an outage,
        text that can't be encoded as UTF-8 a CacheError."""
        self._outage.check(action)
        try:
            result = operation()
        except self._errors.RedisError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise ForeignValueError("stored value is another Redis type, not JSON text") from None
            reason = self._url.reason(exc)
            if isinstance(exc, self._errors.ResponseError):  # it answered (full, read-only): reads go on
                raise self._refused(action, type(exc).__name__, reason) from None
            self._outage.failed(reason)
            raise CacheUnavailableError(f"can't {action}: the cache's Redis at {self.location} is unreachable ({reason})") from None
        except UnicodeEncodeError as exc:  # values go as UTF-8: a lone surrogate can't be sent
            raise CacheError(f"can't {action} in the cache's Redis at {self.location}: its text is not valid Unicode ({exc.reason})") from None
        self._outage.recovered()
        return result
