"""The seam between a Cache and where its buckets live: a small protocol a second backend implements.

Today's implementation is :class:`~blackbox_sdk.cache._disk.DiskStore` (diskcache: SQLite plus
files). A store keeps text by key with an expiry and runs a Cache's read-modify-write under its
write lock; the Cache does the rest (keys, the bucket format, modes, TTL checks, counters).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from .._exceptions import CacheError


class ForeignValueError(CacheError):
    """A stored row is not JSON text this cache wrote (a pickle, bytes, a path outside the cache)."""


@runtime_checkable
class CacheStore(Protocol):
    """What a Cache needs from its backing store; every failure is raised as CacheError."""

    def get(self, key: str) -> str | None:
        """The text stored at ``key``, None on a miss; ForeignValueError for a row the store did not write."""
        ...

    def set(self, key: str, text: str, *, expire: float | None) -> None:
        """Store ``text`` at ``key`` for ``expire`` seconds (None: until evicted); called inside ``transaction``."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` if it is stored; called inside ``transaction``."""
        ...

    def clear(self) -> None:
        """Remove every key; called inside ``transaction``."""
        ...

    def transaction(self, action: str) -> AbstractContextManager[None]:
        """The store's write lock held for one read-modify-write; CacheError naming ``action`` if it fails."""
        ...

    def size(self) -> tuple[int, int]:
        """How many keys are stored, and their estimated size in bytes."""
        ...

    def close(self) -> None:
        """Release connections; a later use reopens them."""
        ...
