"""The admin's status page at /: spend per key against its budget, cache hit rate, requests and
errors per minute, and the latest calls with their candidates and the reranker's scores.

    GET  /         the page (the admin's: `_admin_gate`), or 401 with the login form
    GET  /login    the login form;  POST /login  key=<admin key> -> a session cookie, 303 to /
    POST /logout   ends the session

Spend comes from each key's ledger (what its budget enforces, shared by replicas), requests, errors
and cache results from this process's metrics, the latest calls from the call log. All of it is
read when the page is asked for, in Starlette's thread pool, never on the request path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .._redact import redact_text
from .._exceptions import RateLimitExceededError
from ._errors import ProxyError, error_response
from ._keys import KeyRecord
from ._metrics import KeyTally
from ._state import Proxy
from ._status_html import login_page, status_page

LATEST_CALLS = 20
WINDOWS_S = (300, 3600, 86400, None)  # the latest calls are looked for in widening windows (None: the whole log)
PAGE_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


@dataclass
class KeyRow:
    """One key (or the proxy itself, without keys) on the page."""

    name: str
    budget_usd: float | None = None
    per_day_usd: float | None = None
    spent_usd: float | None = None  # the ledger's lifetime spend; None: no ledger (then tally.spend_usd, since start)
    spent_today_usd: float | None = None
    tally: KeyTally = field(default_factory=KeyTally)


@dataclass
class StatusData:
    """Everything the page shows, gathered at once."""

    keys: list[KeyRow]
    timeline: list[tuple[int, int, int]]
    calls: list[Any]  # CallRecords, newest first
    ready: bool
    problems: list[str] = field(default_factory=list)


def today() -> str:
    """The UTC day per-day caps count in."""
    return datetime.now(timezone.utc).date().isoformat()


def _spend(row: KeyRow, budget: Any) -> KeyRow:
    """The row with the ledger's spend of `budget` (lifetime and today) and its caps."""
    if budget is not None:
        row.spent_usd, row.spent_today_usd = budget.spent(), budget.spent(day=today())
        row.budget_usd = row.budget_usd if row.budget_usd is not None else budget.total_usd
        row.per_day_usd = row.per_day_usd if row.per_day_usd is not None else budget.per_day_usd
    return row


def _key_row(proxy: Proxy, record: KeyRecord) -> KeyRow:
    """A tenant's row: its caps from its record, its spend from its own ledger."""
    row = KeyRow(record.name, record.budget_usd, record.per_day_usd)
    if proxy.tenants is None or (record.budget_usd is None and record.per_day_usd is None):
        return row
    return _spend(row, proxy.tenants.options(record).get("budget"))


def key_rows(proxy: Proxy) -> list[KeyRow]:
    """The live keys' rows (or the proxy's own, without a key store), with this process's tallies."""
    if proxy.keys is not None:
        records = proxy.keys.list()
        if proxy.tenants is not None:  # keys revoked elsewhere (the CLI, another replica): what was built for them let go
            proxy.tenants.forget_revoked_among(records)
        rows = [_key_row(proxy, record) for record in records if not record.revoked]
    else:
        budget = proxy.client_for(None).options.budget if proxy.ready else None
        rows = [_spend(KeyRow(""), budget)]
    tallies = proxy.metrics.by_key()
    for row in rows:
        row.tally = tallies.get(row.name, KeyTally())
    return rows


def latest_calls(log: Any, count: int = LATEST_CALLS, now: float | None = None) -> list[Any]:
    """The newest `count` calls of a call log, newest first, read in widening windows of time."""
    flush = getattr(log, "flush", None)
    if flush is not None:
        flush()
    now = time.time() if now is None else now
    found: deque[Any] = deque(maxlen=count)
    for window in WINDOWS_S:
        found = deque(log.calls(since=None if window is None else now - window), maxlen=count)
        if len(found) >= count:
            break
    return list(reversed(found))


def gather(proxy: Proxy) -> StatusData:
    """The page's figures; a part that can't be read (a store down) becomes a line in `problems`."""
    data = StatusData(keys=[], timeline=proxy.metrics.timeline.series(), calls=[], ready=proxy.ready)
    try:
        data.keys = key_rows(proxy)
    except Exception as error:  # noqa: BLE001 - the rest of the page still shows
        data.problems.append(redact_text(f"keys and spend: {type(error).__name__}: {error}"))
    log = proxy.client_for(None).options.log if proxy.ready else None
    if log is None:
        data.problems.append("no call log is configured (set log in the proxy's configuration) so no calls are listed")
        return data
    try:
        data.calls = latest_calls(log)
    except Exception as error:  # noqa: BLE001
        data.problems.append(redact_text(f"call log: {type(error).__name__}: {error}"))
    return data


def _html(body: str, status: int = 200) -> HTMLResponse:
    """An HTML answer that no cache keeps, with no script allowed."""
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


async def status(request: Request) -> Response:
    """GET /: the page for the admin; anyone else gets the login form (401) or 403 off this machine."""
    proxy: Proxy = request.app.state.proxy
    try:
        allowed = await proxy.gate.allows(request)
    except RateLimitExceededError as refused:  # too many wrong keys from this address
        return error_response(refused)
    if not allowed:
        refusal = proxy.gate.refusal()
        return _html(login_page(str(refusal), can_log_in=proxy.keys is not None), refusal.status)
    return _html(status_page(await run_in_threadpool(gather, proxy)))


async def login_form(request: Request) -> Response:
    """GET /login: the form."""
    proxy: Proxy = request.app.state.proxy
    return _html(login_page(None, can_log_in=proxy.keys is not None))


async def login(request: Request) -> Response:
    """POST /login: a session cookie for the admin key, then the page; the form again (401) otherwise,
    or with the refusal's status for a form too large or too slow to arrive; OpenAI's 429 for an address past its
    failed attempts."""
    proxy: Proxy = request.app.state.proxy
    response = RedirectResponse("/", status_code=303, headers=PAGE_HEADERS)
    try:
        if await proxy.gate.login(request, response, proxy.config.body_timeout_s):
            return response
        message, status = "That is not the admin key.", 401
    except RateLimitExceededError as refused:  # too many wrong keys from this address: OpenAI's 429, Retry-After
        return error_response(refused)
    except ProxyError as refusal:
        message, status = str(refusal), refusal.status
    return _html(login_page(message, can_log_in=proxy.keys is not None), status)


async def logout(request: Request) -> Response:
    """POST /logout: end the session, back to the login form."""
    proxy: Proxy = request.app.state.proxy
    response = RedirectResponse("/login", status_code=303, headers=PAGE_HEADERS)
    proxy.gate.logout(request, response)
    return response


def status_routes() -> Iterable[Route]:
    """The page's routes."""
    return [
        Route("/", status, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
