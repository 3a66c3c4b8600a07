"""Who may read /metrics and the status page at /.

With a key store, the admin: ``Authorization: Bearer <admin key>`` (a scraper, curl), or a session
cookie a browser gets by POSTing the admin key to /login (a form). The cookie holds a random token
of this process, never the key; the process keeps only the token's SHA-256 and its expiry.
Without tenant keys there is no admin key: only clients on this machine (loopback) are let in,
as anyone who reaches such a proxy can spend through it anyway. A key store without an admin key
(BLACKBOX_ADMIN_KEY unset), or tenant keys checked with no store given to the gate, let nobody in.
A key presented is counted per address (`_attempts`: a wrong key here or at /admin is a failure, a right one costs
nothing); an address with none left is refused with 429. With a key store on SQLite or Redis the count is in the
store, one for every worker, and a key is compared before it is counted there (a right one only checked).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from .._client import is_loopback_host
from ._attempts import admin_attempts
from ._body import read_body
from ._errors import ProxyError
from ._keys import KeyStore
from ._tenants import presented_key

COOKIE = "blackbox_admin"
SESSION_TTL_S = 8 * 3600
MAX_SESSIONS = 1000
MAX_LOGIN_BODY = 4096


def _token_digest(token: str) -> str:
    """What the process keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


class AdminGate:
    """The admin check of the operations pages, and the browser sessions it hands out."""

    def __init__(self, keys: KeyStore | None, *, loopback: bool) -> None:
        self.keys = keys
        self.loopback = loopback and keys is None  # let loopback clients in (only a proxy without tenant keys)
        self.attempts = admin_attempts(keys)  # wrong admin keys per client address (/admin's routes count theirs here too)
        self._sessions: dict[str, float] = {}  # token digest -> expiry (monotonic)
        self._lock = threading.Lock()

    async def allows(self, request: Request) -> bool:
        """Whether the request is the admin's (or, without a key store, from this machine); a key presented is counted
        as an attempt of its address (`_attempts`), refused when none is left (RateLimitExceededError, 429)."""
        if self.keys is None:
            return self.loopback and request.client is not None and is_loopback_host(request.client.host)
        presented = presented_key(request)
        async with self.attempts.guessing(request, presented) as guess:
            if self.keys.is_admin(presented):
                return True
            guess.wrong()
        token = request.cookies.get(COOKIE)
        if not token or len(token) > 128:
            return False
        with self._lock:
            expiry = self._sessions.get(_token_digest(token))
        return expiry is not None and expiry > time.monotonic()

    def refusal(self) -> ProxyError:
        """The error for a request that is not let in (no detail about why)."""
        if self.loopback:
            return ProxyError(403, "Without tenant keys the operations pages answer only clients on this machine.", code="forbidden")
        if self.keys is None:
            return ProxyError(403, "This proxy checks tenant keys but was given no key store for its admin key.", code="forbidden")
        return ProxyError(401, "This page needs the proxy's admin key: send it in the Authorization header as a bearer token, or log in at /login.", code="invalid_api_key")

    async def login(self, request: Request, response: Response, body_timeout_s: float) -> bool:
        """Check a POSTed form's admin key; when it is right, set a new session cookie on `response`. The form is read
        up to MAX_LOGIN_BODY bytes and `body_timeout_s` (ProxyError 413 / 408 past them). The form's key is counted as
        an attempt of the address (`_attempts`), refused when none is left (RateLimitExceededError, 429); only a wrong key is a failure."""
        if self.keys is None:
            return False
        async with self.attempts.guessing(request, "") as guess:  # the form's key, even an empty one, is a guess
            body = await read_body(request, MAX_LOGIN_BODY, body_timeout_s)
            if not self.keys.is_admin(parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0]):
                guess.wrong()
                return False
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {d: e for d, e in self._sessions.items() if e > now}
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(min(self._sessions, key=self._sessions.__getitem__))
            self._sessions[_token_digest(token)] = now + SESSION_TTL_S
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, token, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="lax", secure=secure)
        return True

    def logout(self, request: Request, response: Response) -> None:
        """End the request's session and clear its cookie."""
        token = request.cookies.get(COOKIE)
        if token:
            with self._lock:
                self._sessions.pop(_token_digest(token), None)
        response.delete_cookie(COOKIE, path="/")
