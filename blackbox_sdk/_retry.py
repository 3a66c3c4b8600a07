"""Retries around the inner openai client (which runs with max_retries=0), built on tenacity.

The policy mirrors the openai client's own: retry 408, 409, 429, 5xx, timeouts and dropped
connections (and whatever `x-should-retry` says), never other 4xx; back off 0.5 s doubling to 8 s
with up to 25% jitter, or wait what `retry-after-ms` / `retry-after` asks when it is at most 120 s (as openai 3.x does).
When the retries run out the last openai error is raised unchanged. `sleep` is injectable so
tests assert the waits without sleeping. Each retry sends its number in `x-stainless-retry-count`, as openai's do.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
import tenacity

from ._exceptions import ConfigError

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER_DELAY = 120.0  # as openai 3.x: honour server delays up to two minutes
RETRY_STATUSES = frozenset({408, 409, 429})
_INFINITY = ("inf", "+inf", "infinity", "+infinity")  # the spellings of infinity itself, which openai lets through

T = TypeVar("T")
RETRIES_TAKEN: ContextVar[int] = ContextVar("blackbox_sdk_retries_taken", default=0)  # the retry a request being sent is


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, then `retry-after` as seconds or a date)."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if delay == math.inf and value.strip().lower() not in _INFINITY:
            return MAX_RETRY_AFTER_DELAY + 1  # as openai: a number past a float's range is a long delay, not "no hint"
        return delay / divisor
    try:
        parsed = email.utils.parsedate_tz(headers.get("retry-after") or "")
        return None if parsed is None else float(email.utils.mktime_tz(parsed) - time.time())
    except (TypeError, ValueError, OverflowError, OSError):  # as openai: a date no clock holds (year 99999, or one the platform's mktime refuses) is no hint
        return None


def should_retry(error: BaseException) -> bool:
    """Whether an error from the openai client is worth another attempt."""
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if not isinstance(error, openai.APIStatusError):
        return False
    wait = retry_after(error)
    if wait is not None and math.isfinite(wait) and wait > MAX_RETRY_AFTER_DELAY:
        return False
    hint = error.response.headers.get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return error.status_code in RETRY_STATUSES or error.status_code >= 500


def _backoff(attempt: int, error: BaseException | None, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry number `attempt` (1-based)."""
    wait = retry_after(error) if error is not None else None
    if wait is not None and math.isfinite(wait) and 0 < wait <= MAX_RETRY_AFTER_DELAY:
        return wait
    delay = min(INITIAL_RETRY_DELAY * 2.0 ** (attempt - 1), MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * rand())


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how to wait; `sleep`/`async_sleep` are injectable for tests."""

    max_retries: int = 2
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        """ConfigError (a ValueError) for a max_retries that is not an integer >= 0."""
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative integer, got {self.max_retries!r}")

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Tenacity wait hook: backoff from the attempt number and the last error."""
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        return _backoff(state.attempt_number, error, self.rand)

    def _options(self) -> dict[str, Any]:
        """Tenacity arguments shared by the sync and async retry loops."""
        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(should_retry),
            "reraise": True,
        }

    def call(self, fn: Callable[[], T], on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Run `fn` with retries; `on_retry(error)` runs before each retry with the error that asked for it (what it raises ends the retries)."""
        hook = None if on_retry is None else lambda state: on_retry(_error(state))
        retrying = tenacity.Retrying(sleep=self.sleep, before_sleep=hook, **self._options())
        return retrying(fn)

    async def acall(self, fn: Callable[[], Awaitable[T]], on_retry: Callable[[BaseException], Awaitable[None]] | None = None) -> T:
        """Await `fn` with retries; `on_retry(error)` is awaited before each retry, as `call`'s is run."""

        async def hook(state: tenacity.RetryCallState) -> None:
            if on_retry is not None:
                await on_retry(_error(state))

        retrying = tenacity.AsyncRetrying(sleep=self.async_sleep, before_sleep=hook, **self._options())

        async def attempt() -> T:
            return await fn()

        return await retrying(attempt)


class _CountedHeaders:
    """An inner openai client's `_build_headers` told the retry number the SDK's policy is on (the inner client
    runs with max_retries=0, so its own count is always 0); a caller's own header is kept, as openai keeps it."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build

    def __call__(self, options: Any, *, retries_taken: int = 0) -> Any:
        """openai's headers, with `retries_taken` the SDK's retry number."""
        return self.build(options, retries_taken=retries_taken or RETRIES_TAKEN.get())


def counting_retries(inner: Any) -> None:
    """Have an inner openai client's requests carry the SDK's retry number in `x-stainless-retry-count` (once)."""
    if not isinstance(inner._build_headers, _CountedHeaders):
        inner._build_headers = _CountedHeaders(inner._build_headers)


def _error(state: tenacity.RetryCallState) -> BaseException:
    """The error of the attempt a retry follows (tenacity retries on errors only here)."""
    error = state.outcome.exception() if state.outcome is not None else None
    if error is None:
        raise RuntimeError("a retry with no failed attempt before it")
    return error
