"""The SDK's own errors, rooted in one class; the openai package's errors pass through unchanged.

BlackBoxError
 ├── ConfigError                 bad SDK option or argument, raised before any work is spent
 │    ├── InvalidRequestError    a malformed request; also an openai.BadRequestError
 │    ├── PriceMissingError      a model has no price while a hard budget is set
 │    ├── MissingDependencyError  an optional package a call needs is not installed; also an ImportError
 │    └── ReservationNotHeldError  a second settle of a reservation (charged once already), or one no hold can charge
 ├── BudgetExceededError         a call would cross a cap (carries spent, reserved, limit)
 ├── RateLimitExceededError      a call would cross a requests/tokens-per-minute limit (carries retry_after)
 ├── StoreUnavailableError       a shared store (Redis, PostgreSQL), or the tokenize route counts need, can't be reached: budgets fail closed
 ├── CacheError                  the cache folder is locked, read-only or unusable
 ├── CallLogError                the call log can't be opened or written
 ├── BackendError                a local model can't be loaded or run
 │    └── EmbeddingsNotSupportedError  the endpoint does not take input embeddings
 ├── AdapterError                a reranker adapter can't be trained, saved, loaded or score
 │    └── RerankerError          a reranker gave other than one number per answer; also a ConfigError
 └── TuningError                 black-box tuning got bad data or options

MissingDependencyError, ReservationNotHeldError and RerankerError are ConfigErrors only as they were before
(code that catches ConfigError still does): raised while a call runs, they are the environment's fault, not
the request's, and the proxy answers them with a 500, never a 400 (`serve/_errors.py`).
"""

from __future__ import annotations

import sys
from typing import Any

import openai


class BlackBoxError(Exception):
    """Root of every error the SDK raises itself."""


class ConfigError(BlackBoxError, ValueError):
    """An SDK option or argument is invalid; nothing was spent."""


class PriceMissingError(ConfigError):
    """A model has no price, so a hard budget can't be enforced for it."""


class MissingDependencyError(ConfigError, ImportError):
    """An optional package a call needs (torch for prompt_embeds, a tiktoken encoding) is not installed: the
    environment's fault, not the request's; an ImportError, and a ConfigError as it was before."""


class ReservationNotHeldError(ConfigError):
    """A settle of a budget reservation settled already (charged once), or one a ledger neither holds nor was told
    the call of (a store's settle given no hold); a released one is charged all the same: its answer was paid."""


class BudgetExceededError(BlackBoxError):
    """A call would cross a budget cap; raised before the call is sent."""

    def __init__(self, message: str, *, spent: float, reserved: float, limit: float, scope: str) -> None:
        super().__init__(message)
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.scope = scope


class RateLimitExceededError(BlackBoxError):
    """A call would cross a rate limit (requests or tokens per minute); raised before it is sent."""

    def __init__(self, message: str, *, limit: float, scope: str, retry_after: float, unit: str = "requests") -> None:
        super().__init__(message)
        self.limit = limit
        self.scope = scope
        self.retry_after = retry_after  # seconds until the window has room again
        self.unit = unit  # what the binding limit counts: "requests" or "tokens" (the type of OpenAI's 429 error)


class StoreUnavailableError(BlackBoxError):
    """A shared store (a Redis ledger, rate window or cache; a PostgreSQL log), or the endpoint's tokenize route the
    SDK counts with, can't be reached or answered wrongly."""


class CacheError(BlackBoxError):
    """The response cache can't be opened or written."""


class CallLogError(BlackBoxError):
    """The call log can't be opened or written."""


class BackendError(BlackBoxError):
    """A local model can't be loaded or run."""


class EmbeddingsNotSupportedError(BackendError):
    """The endpoint can't take input embeddings, so embedding-based tuning can't run on it."""


class AdapterError(BlackBoxError):
    """A reranker adapter can't be trained, saved, loaded or score."""


class RerankerError(AdapterError, ConfigError):
    """A reranker (an adapter or any scorer) gave other than one number per answer; a ConfigError as it was before."""


class TuningError(BlackBoxError):
    """Black-box tuning got bad data or options."""


def _bad_request_response(message: str, param: str | None) -> Any:
    """A 400 httpx2 response with OpenAI's error body, for errors raised before anything is sent."""
    import httpx2

    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return httpx2.Response(400, json=body, request=httpx2.Request("POST", "blackbox-sdk://validation"))


class InvalidRequestError(openai.BadRequestError, ConfigError):
    """A request the SDK refuses before sending; an `openai.BadRequestError`, as the server's 400 would be."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        response = _bad_request_response(message, param)
        super().__init__(message, response=response, body=response.json()["error"])
        self.param = param


def add_note(error: BaseException, note: str) -> None:
    """`error.add_note(note)` on Python 3.10 too, which has no add_note: the note joins `__notes__` (PEP 678)."""
    if sys.version_info >= (3, 11):
        error.add_note(note)
    else:
        setattr(error, "__notes__", [*getattr(error, "__notes__", ()), note])  # 3.10 BaseException types no __notes__
