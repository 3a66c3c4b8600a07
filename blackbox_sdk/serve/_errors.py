"""Errors as OpenAI's JSON error bodies with the right HTTP status: the proxy's own refusals, the
SDK's errors and the upstream's, mapped once here.

    400 invalid_request_error   malformed JSON, bad parameters (InvalidRequestError, a ConfigError of the call's values)
    400 invalid_http_request    bytes that are not HTTP, and 408 request_timeout for headers that stall: answered by
                                the connection itself (`_http`), not by the app
    401 invalid_api_key         a missing or unknown key
    403 host_not_allowed        without tenant keys: a Host header naming no loopback address (DNS rebinding)
    404 model_not_found         a model the key may not use; an unknown route (OpenAI's "Invalid URL")
    404 call_not_found          /v1/feedback on a call the log does not hold (or, for a tenant, another key's)
    413 request_too_large       a body over the proxy's limit, refused before it is read whole
    431 request_headers_too_large  a request line and headers past 64 KiB (`_http`)
    415 unsupported_media_type  a body sent as anything but JSON (text/plain, a form, application/xml), before it is read
    429 insufficient_quota      a budget refusal (OpenAI's status for an exhausted quota; sent with
                                x-should-retry: false, so openai's clients do not retry it)
    429 rate_limit_exceeded     a rate limit, with Retry-After; also an address past its failed admin- or tenant-key attempts (`_attempts`)
    500 key_misconfigured       a key whose options can't be built or applied (its ledger's Redis refusing the password,
                                a missing reranker folder): the operator's fault (`_state`)
    500 server_error            a failure of the proxy itself, also outside the routes (OpenAI's body, not Starlette's text)
    500 reranker_failed,        a call's fault that is the deployment's, never the request's (`_DEPLOYMENT`): the
        missing_dependency,     reranker scoring wrongly, a package the call needs not installed (torch to read
        reservation_not_held    prompt_embeds), a settle the ledger refuses (its hold released meanwhile); logged,
                                sent with x-should-retry: false
    501 feedback_not_enabled    /v1/feedback on a proxy that keeps no call log (the operator's setup)
    502 upstream_invalid_response  an upstream answer or stream event that is not OpenAI's JSON (openai's
                                APIResponseValidationError, a stream's json.JSONDecodeError): its
                                fault, billed as a lost answer, so sent with x-should-retry: false
    502 / 503 / 504             upstream unreachable or refusing the proxy's key / a shared store down (or refusing
                                the password it opened with) or the proxy starting / upstream timeout (also an SDK
                                request of its own to the upstream's host, such as llama.cpp's tokenize route, that
                                fails or times out); a store down or the proxy starting with Retry-After: 1, a proxy
                                whose client could not be built with x-should-retry: false (only a restart mends it)
    upstream status             an upstream error (openai.APIStatusError) passes with its own status and retry
                                headers (x-should-retry included), its error object rebuilt as OpenAI's four fields (strings redacted, anything else dropped)
    404 unknown_url             an upstream with no Responses API (a 404 with no error object on /responses): said so
    502 upstream error event    an upstream stream that sent an error event after its 200 (openai.APIError with
                                the event's error object): passed on the same way, as an error event of the
                                proxy's stream (whose 200 is sent already)

Every error answer carries an `x-request-id`, as OpenAI's do (openai's clients keep it as the error's
`request_id`): an upstream's own when it sent one, else a fresh id in the call ids' form.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx2
import openai
from starlette.responses import JSONResponse

from .._exceptions import (
    AdapterError,
    BlackBoxError,
    BudgetExceededError,
    ConfigError,
    InvalidRequestError,
    MissingDependencyError,
    RateLimitExceededError,
    ReservationNotHeldError,
    StoreUnavailableError,
)
from .._logging import logger
from .._redact import redact_text
from ..limits import WindowSeen
from ..call_log import new_call_id

_PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "x-request-id")  # what openai's clients read
_NO_RETRY = {"x-should-retry": "false"}  # openai's clients then raise at once: retrying can't help
TRANSIENT_RETRY_AFTER_S = 1.0  # what a 503 for a passing state (a store out of reach, the proxy starting) asks a client to wait
_ERROR_FIELDS = ("message", "type", "param", "code")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)  # a URL in a message: redis://..., postgresql://..., unix://...
UNREADABLE = "the upstream answered with a body that is not OpenAI's JSON (the proxy's log has it)"
STORE_UNAVAILABLE = "a store the proxy keeps its state in is unavailable right now (the proxy's log says which); retry later"
_DEPLOYMENT: tuple[tuple[type[BlackBoxError], str], ...] = (  # raised by a call the request did nothing wrong in: 500, not 400
    (AdapterError, "reranker_failed"),  # RerankerError (also a ConfigError): not one number per answer
    (MissingDependencyError, "missing_dependency"),
    (ReservationNotHeldError, "reservation_not_held"),
)


class ProxyError(BlackBoxError):
    """A request the proxy refuses itself (401, 404, 413, 503, ...): nothing sent upstream, nothing charged."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None,
        retry: bool = True, retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.code = code
        self.param = param
        self.retry = retry  # False: sent with `x-should-retry: false` (a 5xx only the operator can mend)
        self.retry_after = retry_after  # seconds worth waiting before a retry (Retry-After), when it can be told


def error_body(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _upstream(exc: openai.APIStatusError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An upstream's error: its status, its own error object (as OpenAI's four fields, redacted), its retry headers.
    The upstream refusing the proxy's own key is the proxy's fault, not the client's: 502 (not to be
    retried, as OpenAI's 401 is not), and the upstream's message (which may quote part of that key) stays here."""
    if exc.status_code in (401, 403):
        logger.error("proxy: the upstream refused the proxy's credentials (%d)", exc.status_code)
        return 502, error_body("the upstream refused the proxy's credentials", "upstream_error", code="upstream_auth_failed"), dict(_NO_RETRY)
    body = exc.body if isinstance(exc.body, dict) and "message" in exc.body else None
    error = _passed_on(body, exc.status_code) if body else _unexplained(exc)
    headers = {name: exc.response.headers[name] for name in _PASSED_HEADERS if name in exc.response.headers}
    return exc.status_code, {"error": error}, headers


def _unexplained(exc: openai.APIStatusError) -> dict[str, str | None]:
    """The error object for an upstream's error that carries none: openai's bare "Error code: 404", except where the
    404 is an upstream with no Responses API route (llama.cpp's servers), which it then says."""
    path = exc.request.url.path
    if exc.status_code == 404 and path.endswith("/responses"):
        message = f"The upstream has no Responses API (it answered 404 to POST {path}): use /v1/chat/completions with it."
        return error_body(message, "invalid_request_error", code="unknown_url")["error"]
    return error_body(redact_text(_upstream_words(exc) or exc.message), "upstream_error")["error"]


def _upstream_words(exc: openai.APIStatusError) -> str | None:
    """An upstream's explanation in a JSON error with no OpenAI error object: text under `error` (Hugging Face TGI's
    `{"error": "..."}`, which openai hands over as the text) or FastAPI's `{"detail": "..."}`; cut to 1000 characters.
    None for a body that is not JSON (a gateway's HTML page), which stays out of the answer."""
    if "json" not in exc.response.headers.get("content-type", ""):
        return None
    body = exc.body
    words = body if isinstance(body, str) else body.get("detail") if isinstance(body, dict) else None
    return words[:1000] if isinstance(words, str) and words.strip() else None


def _passed_on(error: dict[str, Any], status: int) -> dict[str, str | None]:
    """An upstream's error object as OpenAI's four fields, each a redacted string or None; vendor extras dropped
    (an upstream may echo the request, the proxy's own key included, in any field)."""
    passed = {name: _error_field(error.get(name)) for name in _ERROR_FIELDS}
    passed["message"] = passed["message"] or f"the upstream answered {status}"
    return passed


def _error_field(value: object) -> str | None:
    """One field of a passed-on error: a string redacted, an integer (a numeric code) as a string, anything else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return redact_text(value) if isinstance(value, str) else None


def describe(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, OpenAI error body and extra headers for an exception raised while serving a request."""
    message = redact_text(str(exc))
    if isinstance(exc, ProxyError):
        return exc.status, error_body(message, exc.kind, param=exc.param, code=exc.code), _retry_advice(exc)
    if isinstance(exc, InvalidRequestError):
        return 400, error_body(message, "invalid_request_error", param=exc.param), {}
    if isinstance(exc, openai.APIStatusError):
        return _upstream(exc)
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError)):  # the upstream's, billed as lost: no retry
        logger.error("proxy: the upstream's answer could not be read: %s", message)
        return 502, error_body(UNREADABLE, "upstream_error", code="upstream_invalid_response"), dict(_NO_RETRY)
    if type(exc) is openai.APIError and isinstance(exc.body, dict):  # an error event mid-stream: it has no status
        return 502, {"error": _passed_on(exc.body, 502)}, {}
    if isinstance(exc, (openai.APITimeoutError, httpx2.TimeoutException)):
        return 504, error_body("the upstream did not answer in time", "upstream_error", code="upstream_timeout"), {}
    if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
        return 502, error_body("the upstream can't be reached", "upstream_error", code="upstream_unreachable"), {}
    if isinstance(exc, BudgetExceededError):
        return 429, error_body(message, "insufficient_quota", code="insufficient_quota"), dict(_NO_RETRY)
    if isinstance(exc, RateLimitExceededError):
        wait, body = max(exc.retry_after, 0.0), error_body(message, exc.unit, code="rate_limit_exceeded")  # OpenAI: "requests" or "tokens"
        if not math.isfinite(wait):  # a call larger than the limit itself: no wait lets it through, so no retry
            return 429, body, dict(_NO_RETRY)
        return 429, body, retry_headers(wait)
    for kind, code in _DEPLOYMENT:
        if isinstance(exc, kind):
            return _deployment_fault(exc, message, code)
    if isinstance(exc, ConfigError):
        return 400, error_body(message, "invalid_request_error"), {}
    if isinstance(exc, StoreUnavailableError):  # the store's address and the driver's words are the operator's, not the client's
        logger.error("proxy: a shared store is unavailable while serving a request: %s", message)
        return 503, error_body(STORE_UNAVAILABLE, "server_error", code="store_unavailable"), retry_headers(TRANSIENT_RETRY_AFTER_S)
    logger.error("proxy: %s while serving a request: %s", type(exc).__name__, message)
    return 500, error_body("the proxy failed to serve the request", "server_error"), {}


def _deployment_fault(exc: BaseException, message: str, code: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The 500 for a call's fault that only the operator can mend, logged; sent with x-should-retry: false (a retry
    would fail the same way, a paid upstream answer lost each time). The message is the SDK's own, redacted."""
    logger.error("proxy: %s while serving a request (the deployment's fault, not the request's): %s", type(exc).__name__, message)
    return 500, error_body(f"the proxy can't serve this request: {message}", "server_error", code=code), dict(_NO_RETRY)


def _retry_advice(exc: ProxyError) -> dict[str, str]:
    """The retry headers of a refusal: `x-should-retry: false` when retrying can't help, else its Retry-After when it has one."""
    if not exc.retry:
        return dict(_NO_RETRY)
    return {} if exc.retry_after is None else retry_headers(exc.retry_after)


def retry_headers(wait: float) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) and retry-after-ms (at least 1) for a wait of `wait` seconds, each
    rounded up so a client never comes back before the window has room (and never told 0: a retry at once)."""
    milliseconds = math.ceil(round(wait * 1000, 3))  # round first: 0.3 s is 300.00000000000006 ms as a float
    return {"retry-after": str(max(1, math.ceil(milliseconds / 1000))), "retry-after-ms": str(max(1, milliseconds))}


def ratelimit_headers(seen: Iterable[WindowSeen]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from the windows a request's call was decided in
    (each window's latest decision; of several, the one with the least left), as OpenAI sends them: the reset in Go's
    duration form ("1m0s", "12ms"), the time until the window holds nothing again. None for a unit no window limits."""
    latest = list({window.window: window for window in seen}.values())  # adaptive K admits each round: the last one holds
    headers: dict[str, str] = {}
    for unit, limit_name, used_name in (("requests", "rpm", "requests"), ("tokens", "tpm", "tokens")):
        limited = [(getattr(window, limit_name), getattr(window, used_name), window) for window in latest if getattr(window, limit_name) is not None]
        if limited:
            limit, used, window = min(limited, key=lambda item: item[0] - item[1])
            headers[f"x-ratelimit-limit-{unit}"] = str(limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{unit}"] = go_duration(window.reset_s)
    return headers


def go_duration(seconds: float) -> str:
    """A wait as OpenAI writes it (Go's duration form), rounded up to the millisecond: "0s", "12ms", "1.5s", "6m0s", "1h0m0s"."""
    milliseconds = math.ceil(round(max(seconds, 0.0) * 1000, 3))
    if milliseconds == 0:
        return "0s"
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{hours}h{minutes}m{whole}" if hours else f"{minutes}m{whole}" if minutes else whole


def without_addresses(message: str) -> str:
    """A message shown to clients with each URL in it (a store's: its host and port) left out: the proxy's log has it."""
    return _URL.sub("(its address is in the proxy's log)", message)


def error_json(body: dict[str, Any], status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error answer: `body` with `status` and `headers`, and an `x-request-id` (a fresh one unless given)."""
    return JSONResponse(body, status_code=status, headers={"x-request-id": new_call_id(), **(headers or {})})


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON response for an exception (see `describe`)."""
    status, body, headers = describe(exc)
    return error_json(body, status, headers)
