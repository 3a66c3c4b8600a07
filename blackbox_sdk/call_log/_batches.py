"""A background writer: records wait in memory and a thread writes them in batches, off the caller's path.

The thread takes up to ``batch_size`` records at a time, waiting at most ``interval`` seconds for
a batch to fill (no wait when someone flushes or closes), hands them to ``write`` (one transaction)
and only then drops them from memory, so a failed write loses nothing: it is retried with
backoff while new records keep queueing. Past ``max_pending`` records waiting, ``put`` raises
StoreUnavailableError rather than drop one. ``flush`` waits for everything put so far; ``close``
flushes, then stops the thread and returns whatever could not be written.

After ``os.fork()`` the child's writer starts empty, its thread started by its first ``put``: the
records the parent had queued are the parent's to write (written once, by it), and the parent's
thread, which is not in the child, may have held the old lock at the fork. A child that
multiprocessing forked leaves by ``os._exit`` once its task returns, skipping ``atexit``: its
writer writes what waits then, through multiprocessing's own exit finalizers.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar
from weakref import WeakSet

from .._exceptions import CallLogError, StoreUnavailableError
from .._logging import logger
from .._redact import redact_text

T = TypeVar("T")

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0


class BatchWriter(Generic[T]):
    """Records queued by any thread, written in batches by one daemon thread; see the module docstring."""

    def __init__(
        self, write: Callable[[list[T]], None], *, where: str, batch_size: int, interval: float, max_pending: int, exit_wait: float,
    ) -> None:
        """A writer whose thread starts with the first record; ``where`` names the store in messages (never with a
        password); ``exit_wait`` bounds the write at a multiprocessing child's exit."""
        self._write, self._where, self._exit_wait = write, where, exit_wait
        self._batch_size, self._interval, self._max_pending = batch_size, interval, max_pending
        self._closed = False  # no more puts; write what is left at once
        self.forget()
        _writers.add(self)

    def forget(self) -> None:
        """Nothing queued and no thread: a new writer, or this one in a forked child (see the module docstring)."""
        self._cond = threading.Condition()
        self._pending: deque[T] = deque()
        self._queued = 0  # records ever put
        self._written = 0  # records ever written (or skipped as already there): the first _queued - _written are pending
        self._flush_to = 0  # write without waiting for a batch to fill until this many are written
        self._error: Exception | None = None  # the last failed write, None once one succeeds
        self._stopped = False  # the thread gives up: close() ran out of time
        self._thread: threading.Thread | None = None  # started by the first put

    @property
    def pending(self) -> int:
        """How many records wait to be written."""
        return len(self._pending)

    def put(self, item: T, wait: float) -> None:
        """Queue one record; when ``max_pending`` wait, wait up to ``wait`` s for room, or raise at once while writes fail."""
        with self._cond:
            if self._closed:
                raise CallLogError(f"the call log {self._where} is closed")
            if len(self._pending) >= self._max_pending:
                if self._error is None:
                    self._cond.wait_for(self._room_or_failing, timeout=wait)
                if len(self._pending) >= self._max_pending or self._closed:
                    raise StoreUnavailableError(
                        f"the call log {self._where} has {len(self._pending)} records waiting to be written"
                        f"{self._because()}; refusing this one rather than dropping it"
                    )
            if self._thread is None:
                self._start()
            self._pending.append(item)
            self._queued += 1
            if len(self._pending) in (1, self._batch_size):
                self._cond.notify_all()

    def flush(self, timeout: float) -> None:
        """Wait until every record put before this call is written; StoreUnavailableError after ``timeout`` s."""
        with self._cond:
            target = self._queued
            if self._written >= target:
                return
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._written >= target or self._stopped, timeout=timeout)
            if self._written < target:
                raise StoreUnavailableError(
                    f"the call log {self._where} could not write {target - self._written} records"
                    f" within {timeout:g} s{self._because()}; they are kept and retried"
                )

    def close(self, timeout: float) -> list[T]:
        """Refuse new records, write what waits (up to ``timeout`` s), stop the thread; returns what was not written."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self.flush(timeout)
        except StoreUnavailableError:
            pass
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))
        with self._cond:
            return list(self._pending)

    def _start(self) -> None:
        """Start the thread (under the lock); in a multiprocessing child, also write what waits when its task returns."""
        self._thread = threading.Thread(target=self._run, name=f"blackbox-call-log-writer {self._where}", daemon=True)
        self._thread.start()
        processes = sys.modules.get("multiprocessing.process")  # loaded in any process multiprocessing started
        if processes is not None and processes.parent_process() is not None:
            from multiprocessing import util

            util.Finalize(None, _flush_at_exit, args=(self,), exitpriority=0)

    def _room_or_failing(self) -> bool:
        """Whether ``put`` can stop waiting: room in the queue, a failing store, or a closed writer."""
        return len(self._pending) < self._max_pending or self._error is not None or self._closed

    def _because(self) -> str:
        """The last write error, for a message."""
        return f" (last error: {redact_text(str(self._error))})" if self._error is not None else ""

    def _run(self) -> None:
        """The thread: take a batch, write it, drop it from memory; on failure keep it and retry with backoff."""
        delay = 0.0
        while (batch := self._next_batch(delay)) is not None:
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - any failure: the batch stays queued and is retried
                delay = min(max(2 * delay, FIRST_RETRY_S), MAX_RETRY_S)
                self._failed(exc, len(batch))
            else:
                delay = 0.0
                self._done(len(batch))

    def _next_batch(self, delay: float) -> list[T] | None:
        """The next batch (the oldest records, still queued), after ``delay`` s and at most ``interval`` s of filling; None to stop."""
        with self._cond:
            if delay:
                self._cond.wait_for(lambda: self._stopped, timeout=delay)
            self._cond.wait_for(lambda: self._pending or self._stopped)
            deadline = time.monotonic() + self._interval
            while not self._stopped and not self._ready() and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            if self._stopped:
                return None
            return list(itertools.islice(self._pending, self._batch_size))

    def _ready(self) -> bool:
        """Whether to write now rather than wait for the batch to fill."""
        return len(self._pending) >= self._batch_size or self._written < self._flush_to or self._closed

    def _done(self, count: int) -> None:
        """A batch is written: drop it from memory and wake whoever waits for it."""
        with self._cond:
            for _ in range(count):
                self._pending.popleft()
            self._written += count
            if self._error is not None:
                logger.warning("call log: writing to %s again; %d records waiting", self._where, len(self._pending))
            self._error = None
            self._cond.notify_all()

    def _failed(self, exc: Exception, count: int) -> None:
        """A batch failed: keep it, note the error (a warning once per outage), wake putters waiting for room."""
        with self._cond:
            if self._error is None:
                logger.warning(
                    "call log: can't write %d records to %s (%s: %s); keeping %d in memory and retrying",
                    count, self._where, type(exc).__name__, exc, len(self._pending),
                )
            self._error = exc
            self._cond.notify_all()


_writers: WeakSet[BatchWriter[Any]] = WeakSet()


def _flush_at_exit(writer: BatchWriter[Any]) -> None:
    """Write what a multiprocessing child's writer holds as the child leaves; what can't be written is logged."""
    try:
        writer.flush(writer._exit_wait)
    except StoreUnavailableError as exc:
        logger.error("call log: %s", exc)


def _forget_all() -> None:
    """In a forked child: every writer starts empty."""
    for writer in list(_writers):
        writer.forget()


os.register_at_fork(after_in_child=_forget_all)


def when_collected(shut_down: Callable[[], None], where: str) -> None:
    """A log dropped unclosed: ``shut_down`` (write what waits, stop the writer, close the store) on the main thread
    (at exit too), else in a thread of its own. A collection can run on any thread, the log's own writer included,
    which can't wait for itself, or another writer mid-transaction, which the shutdown's writes would wait for."""
    if threading.current_thread() is threading.main_thread():
        shut_down()
        return
    threading.Thread(target=shut_down, name=f"blackbox-call-log-closer {where}", daemon=True).start()
