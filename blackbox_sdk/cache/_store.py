"""The seam between a Cache and where its buckets live: a small protocol each backend implements.

:class:`~blackbox_sdk.cache._disk.DiskStore` (diskcache: SQLite plus files, one machine) and
:class:`~blackbox_sdk.cache._redis.RedisStore` (Redis, shared by many hosts) implement it. A store
keeps text by key with an expiry, applies a Cache's read-modify-write atomically, and adds or
discards the short-lived claims that single flight uses; the Cache does the rest (keys, the
bucket format, modes, TTL checks, counters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .._exceptions import CacheError, StoreUnavailableError

Change = Callable[[str | None], str | None]  # current text (None: absent) -> new text (None: delete)
Claim = tuple[str, str]  # (claim's key, the token its holder stored there)


class ForeignValueError(CacheError):
    """A stored value is not JSON text this cache wrote (a pickle, bytes, invalid UTF-8, another type)."""


class CacheUnavailableError(CacheError, StoreUnavailableError):
    """A shared store can't be reached now: the Cache reads it as a miss and skips the write."""


@runtime_checkable
class CacheStore(Protocol):
    """What a Cache needs from its backing store; every failure is raised as CacheError."""

    location: str  # where the store is, safe to print (a folder, or a URL without its password)

    def get(self, key: str) -> str | None:
        """The text stored at ``key``, None on a miss; ForeignValueError for a value the store did not write."""
        ...

    def update(self, key: str, change: Change, *, expire: float | None, action: str, discard: Claim | None = None) -> None:
        """Replace the text at ``key`` by ``change(current)`` atomically across processes and hosts.

        ``change`` may run more than once (optimistic retries); returning the current text writes
        nothing, None deletes the key, any other text is stored for ``expire`` seconds (None: until
        evicted). An unreadable current value is passed as None. ``discard``, a (key, token) claim,
        is removed in the same transaction while it still holds that token, so that a winner's
        answer and the end of its claim are seen together. CacheError names ``action``.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if it is stored."""
        ...

    def claim(self, key: str, token: str, *, expire: float, bucket: str) -> tuple[bool, str | None]:
        """Store ``token`` at the claim ``key`` for ``expire`` seconds only if it holds nothing live (a value without an
        expiry is not live: claims always lapse, so it is replaced), then read the text at ``bucket``, in one step (one
        transaction, one round trip): whether the claim was taken, and the bucket's text (None: absent, or a value the
        store did not write, which the lookup before a claim drops)."""
        ...

    def discard(self, key: str, text: str) -> None:
        """Remove ``key`` only while it still holds ``text`` (a claim this caller made, not a later one)."""
        ...

    def clear(self) -> None:
        """Remove every bucket of this store (for a shared store: of this namespace)."""
        ...

    def size(self) -> tuple[int, int]:
        """How many keys are stored, and their estimated size in bytes."""
        ...

    def close(self) -> None:
        """Release connections; a later use reopens them."""
        ...
