"""Who holds a reservation in the SQLite ledger: this host, a process id and that process's start time.

A process that dies mid-call leaves its reservations behind; the ledger releases them once the
process is gone. A pid reused by a new process is told apart by its start time (from /proc).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def process_state(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks since boot) from /proc; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields 3.. of proc(5); the command name may hold spaces
    return fields[0], int(fields[19])


def process_alive(pid: int, started: int | None) -> bool:
    """Whether the process that made a reservation still runs (and is not a zombie or a reused pid)."""
    try:
        with contextlib.suppress(PermissionError):  # it exists but belongs to another user
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = process_state(pid)
    if started is None or state is None:
        return True  # no /proc to tell a reused pid apart: keep the reservation, the safe side
    letter, now_started = state
    return letter not in ("Z", "X") and now_started == started


def this_process() -> tuple[str, int, int | None]:
    """This host's name, this process's id and its start time, as recorded on its reservations."""
    pid = os.getpid()
    state = process_state(pid)
    return socket.gethostname(), pid, state[1] if state else None
