"""This process's id and its random ids, each read from the OS once per process rather than by a system call per use.

Every call needs a call id, and a miss a claim token and a reservation id; each was ``os.urandom`` (or ``uuid4``), one
system call apiece, and a store checked ``os.getpid()`` on every use to tell a forked child. Here the pid is kept,
and random bytes are drawn from the OS (a cryptographic source, so ids stay unguessable) a block at a time. A forked
child starts afresh at once: its pid is read again and its block dropped, so parent and child never share an id.
"""

from __future__ import annotations

import os
import threading

BLOCK_BYTES = 4096  # random bytes drawn from the OS at a time: 256 ids of 16 bytes per system call


class _Source:
    """The pid and the block of random bytes not yet handed out, under one lock."""

    def __init__(self) -> None:
        """Read the pid now; draw the first block on first use."""
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.block = b""
        self.at = 0


_source = _Source()


def pid() -> int:
    """This process's id, kept current across ``os.fork()``."""
    return _source.pid


def random_hex(size: int) -> str:
    """``size`` random bytes from the OS's cryptographic source, as hex: unique, unguessable ids."""
    source = _source
    with source.lock:
        if source.at + size > len(source.block):
            source.block, source.at = os.urandom(max(BLOCK_BYTES, size)), 0
        start = source.at
        source.at += size
        return source.block[start : start + size].hex()


def _forked() -> None:
    """In a forked child: a source of its own (the parent's lock may have been held at the fork, its bytes are the parent's)."""
    global _source
    _source = _Source()


os.register_at_fork(after_in_child=_forked)
