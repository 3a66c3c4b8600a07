"""Secret removal for anything the SDK writes down: call-log rows, cache keys' inputs, log lines.

Two rules, applied together. A mapping key that names a credential (``api_key``,
``Authorization``, ``x-api-key``, ``password``, ``token``, ...; matched case-insensitively with
``-`` and ``_`` treated alike) has its whole value replaced by ``[REDACTED]``; count-like names
such as ``max_tokens`` or ``prompt_tokens`` are not credentials and are kept. Inside every string,
substrings shaped like keys (``sk-...``, ``Bearer ...``, Hugging Face ``hf_...``, GitHub
``ghp_...``, AWS ``AKIA...``, Google ``AIza...``) are replaced by ``[REDACTED]``, so a key pasted into a prompt
does not survive either; a URL's password (``postgresql://user:SECRET@host``) becomes ``***``, as the SDK shows URLs. And every client's actual API key is remembered (`remember_secret`)
and redacted wherever it appears, whatever its shape: a short or custom key echoed back in a
server's error body matches no pattern, but it is the one secret the SDK knows for sure.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Whole names (after lower-casing and mapping "-" to "_") that always hold a credential.
_SECRET_NAMES = frozenset({
    "access_token", "api_key", "api_token", "apikey", "auth", "auth_token", "authorization",
    "bearer", "bearer_token", "client_secret", "cookie", "credentials", "id_token",
    "openai_api_key", "passwd", "password", "private_key", "proxy_authorization",
    "refresh_token", "secret", "secret_key", "session_token", "set_cookie", "token",
    "x_api_key", "x_auth_token",
})
# Name endings that mark a credential: "azure_api_key", "db_password", "client_secret", ...
_SECRET_SUFFIXES = ("_api_key", "_apikey", "_password", "_secret", "_subscription_key")
# Besides those, the names a URL's query carries a credential under: Google's `?key=`, Azure's SAS `sig`, API Management's
# `subscription-key`. Only for queries: as mapping keys elsewhere ("key" in a tool's arguments) they are ordinary words.
_SECRET_QUERY_NAMES = frozenset({"key", "sig", "signature", "subscription_key"})

_SECRET_PATTERN = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{16,}"                  # OpenAI / Anthropic-style keys
    r"|\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}"       # HTTP bearer credentials
    r"|\bhf_[A-Za-z0-9]{20,}"                    # Hugging Face tokens
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"             # GitHub tokens
    r"|\bAKIA[0-9A-Z]{16}\b"                     # AWS access key ids
    r"|\bAIza[0-9A-Za-z_\-]{35}"                 # Google API keys (Gemini's OpenAI-compatible endpoint takes them)
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"  # JWTs (Entra ID / OAuth access tokens)
    r"|\bbb-[A-Za-z0-9_\-]{40,}",                # the proxy's tenant keys (call ids are shorter)
    re.IGNORECASE,
)
# A URL's password (``postgresql://user:SECRET@host``): masked as the SDK shows URLs, user and host kept. A pass of its own,
# run only on a text holding "://": led by that literal, it is a fast scan, where one more alternative in _SECRET_PATTERN
# made every text's pass 3 to 6 times slower.
_URL_PASSWORD = re.compile(r"(?P<userinfo>://[^\s:/?#@]*:)[^\s/@]+@")
URL_MARK = "://"


SHORTEST_SHAPED = 15  # "Bearer " and 8 characters: no shorter text holds a match of _SECRET_PATTERN
_LEAVES = frozenset({int, float, bool, type(None)})
MIN_REMEMBERED_SECRET = 6  # shorter strings would redact ordinary words
_remembered: frozenset[str] = frozenset()
_remembered_pattern: re.Pattern[str] | None = None
_remember_lock = threading.Lock()


def remember_secret(value: object) -> None:
    """Redact this exact string everywhere from now on (a client's API key, whatever its shape)."""
    global _remembered, _remembered_pattern
    if not isinstance(value, str) or len(value) < MIN_REMEMBERED_SECRET or value in _remembered:
        return
    with _remember_lock:
        _remembered = _remembered | {value}
        longest_first = sorted(_remembered, key=len, reverse=True)
        _remembered_pattern = re.compile("|".join(re.escape(secret) for secret in longest_first))


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Whether a mapping key names a credential (``Authorization`` yes, ``max_tokens`` no); cached: the same few names, every record."""
    normal = name.strip().lower().replace("-", "_")
    return normal in _SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES)


@functools.lru_cache(maxsize=4096)
def is_secret_query_param(name: str) -> bool:
    """Whether a URL query parameter carries a credential (``api-key``, ``key``, ``sig`` yes; ``api-version`` no)."""
    return is_secret_key(name) or name.strip().lower().replace("-", "_") in _SECRET_QUERY_NAMES


def redact_text(text: str) -> str:
    """The text with every remembered secret and every key-shaped substring replaced by ``[REDACTED]``, and a URL's password
    by ``***`` (a text too short to hold any, a role or a model's name, is returned as it is, unsearched)."""
    if len(text) < MIN_REMEMBERED_SECRET:
        return text
    remembered = _remembered_pattern
    if remembered is not None:
        text = remembered.sub(REDACTED, text)
    if URL_MARK in text:  # "***" as the password: the SDK's own shown URLs stay as they are (idempotent)
        text = _URL_PASSWORD.sub(r"\g<userinfo>***@", text)
    return text if len(text) < SHORTEST_SHAPED else _SECRET_PATTERN.sub(REDACTED, text)


def mask_secret(text: str, secret: str, mask: str = "***") -> str:
    """``text`` with ``secret`` as ``mask`` wherever it stands as a token of its own, not where a short one is only a piece of a
    longer run of letters and digits: a one-letter password would otherwise garble every word of a driver's message
    ("f***iled"). A secret of 8 characters or more is masked wherever it stands, inside a word too."""
    if not secret:
        return text
    if len(secret) >= 8:
        return text.replace(secret, mask)
    head = r"(?<![^\W_])" if secret[0].isalnum() else ""  # a letter or digit before an alphanumeric start: another word
    tail = r"(?![^\W_])" if secret[-1].isalnum() else ""
    return re.sub(head + re.escape(secret) + tail, lambda _: mask, text)


def url_without_password(url: str) -> str:
    """The URL as ``scheme://user@host:port/path``: no password, query or fragment (either may hold one); never raises."""
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    at = credentials_end(rest)
    user, after = rest[:max(at, 0)].partition(":")[0], rest[at + 1:]
    cut = min((found for found in map(after.find, "/?#") if found >= 0), default=len(after))
    path = re.split("[?#]", after[cut:], maxsplit=1)[0]
    return f"{scheme.lower()}{sep}{user + '@' if user else ''}{after[:cut]}{path}"


def credentials_end(rest: str) -> int:
    """Where the user info of a URL's part after ``scheme://`` ends: the index of its ``@``, -1 for none.

    A password pasted without percent-encoding may hold ``/``, ``?``, ``#`` or ``@``, which a URL parser takes for the
    start of the path, query or fragment, so the password would be shown as a host, a port or a path. When an ``@``
    comes after that start, after a ``:``, the user info runs to the last such ``@`` that is not a ``name=value`` query
    value (``?application_name=me@corp``), or when there is none and the host part's port is not a number, to the first
    one that is: a shown URL may hide more, never the password.
    """
    cut = min((found for found in map(rest.find, "/?#") if found >= 0), default=len(rest))
    end = rest.rfind("@", 0, cut)
    later = [i for i in range(cut, len(rest)) if rest[i] == "@" and ":" in rest[:i]]
    plain = [i for i in later if not _in_query_value(rest, i)]
    if plain:
        return plain[-1]
    broken = any(not _port_of(host).isdigit() for host in rest[end + 1:cut].split(",") if _port_of(host))
    return later[0] if later and broken else end


def pasted_password(url: str) -> str:
    """A URL's password as written in its user info (percent-encoded or not, pasted raw), "" when it has none."""
    rest = url.partition("://")[2]
    return rest[:max(credentials_end(rest), 0)].partition(":")[2]


def _port_of(host: str) -> str:
    """The port written after a host (``h:5432``, ``[::1]:5432``), "" when none."""
    return host.rpartition("]")[2].partition(":")[2] if host.startswith("[") else host.partition(":")[2]


def _in_query_value(rest: str, at: int) -> bool:
    """Whether position ``at`` of a URL's rest lies in a ``name=value`` pair of a query (after a ``?``)."""
    query = rest.rfind("?", 0, at)
    return query >= 0 and "=" in re.split("[&;]", rest[query + 1:at])[-1]


def redact(obj: Any) -> Any:
    """A copy of a JSON-like object with credential-named keys' values and key-shaped strings (names too) redacted.

    Mappings, lists and tuples are rebuilt all the way down (mappings as dicts); other leaves
    (numbers, booleans, None: immutable in JSON) are returned as they are, never deep-copied,
    so the logging filter can pass arbitrary objects through safely.
    """
    kind = type(obj)
    if kind in _LEAVES:  # the common leaves, exactly typed: nothing to look into
        return obj
    if kind is str or isinstance(obj, str):
        return redact_text(obj)
    if kind is dict or isinstance(obj, Mapping):  # a key-shaped name is redacted too: a client may paste its key where a field's name goes
        return {redact_text(key) if isinstance(key, str) else key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact(value)
                for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(redact(item) for item in obj)
    if isinstance(obj, list):
        return [redact(item) for item in obj]
    return obj


class SecretFilter(logging.Filter):
    """A logging filter that redacts a record's arguments, its rendered message and its traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message with redacted arguments, then redact the text itself; never drops a record."""
        if record.args:
            record.args = redact(record.args) if isinstance(record.args, Mapping) else tuple(redact(a) for a in record.args)
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True
