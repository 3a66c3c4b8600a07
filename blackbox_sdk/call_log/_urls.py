"""What a call-log target names: a PostgreSQL URL (``postgresql://`` or ``postgres://``, any case) or, otherwise, a file.

A URL may carry a password; :func:`url_without_password` is the form messages, reprs and
adapter cards show, and :func:`scrub` takes the password out of a driver's message about the URL.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .._redact import mask_secret, pasted_password, url_without_password
from .._text import is_url_of

_SCHEMES = ("postgresql", "postgres")
_SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` is a PostgreSQL connection URL rather than a file path; ConfigError for ``postgresql:`` without
    its ``//`` (``postgresql:/host/db``), which would make a log file under a folder named ``postgresql:``."""
    return is_url_of(target, _SCHEMES, "user@host:5432/db")


def address_id(conninfo: dict[str, Any]) -> str:
    """The id a PostgreSQL log's calls are settled under until it has read its own from the database (it opened during
    an outage): made from what names the log in its parsed URL (host, port, database, user, options such as a
    search_path; never the password), so every process configured alike makes the same one, and a hash, so the ledger
    keeps nothing of where the log is."""
    parts = [str(conninfo.get(name) or "") for name in ("host", "hostaddr", "port", "dbname", "user", "options")]
    parts[2] = parts[2] or "5432"
    return "pg-" + hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def other_url_scheme(target: str | Path) -> str | None:
    """How to name a URL that is not PostgreSQL's (``'a mysql:// URL'``, credentials never shown); None for a path."""
    if not isinstance(target, str) or "://" not in target or is_postgres_url(target):
        return None
    scheme = target.partition("://")[0]
    return f"a {scheme}:// URL" if _SCHEME_NAME.fullmatch(scheme) else "a URL of an unknown kind"


def libpq_url(url: str) -> str:
    """The URL with its scheme in lower case, the only spelling libpq accepts (``POSTGRESQL://`` works like ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() + sep + rest


_REFUSALS = (  # libpq's words (client side, or the server's FATAL) for a URL that no retry mends, and what they mean
    (("password authentication failed", "no password supplied"), "the server refused the URL's user name or password"),
    (('FATAL:  database "', 'FATAL:  role "'), "the server has no such database or role, or refuses it connections (the URL's path names the database, its user the role)"),
    (("no pg_hba.conf entry", "permission denied for database"), "the server does not let the URL's user connect to that database from here"),
    (("server does not support SSL",),  # before the certificates' entry: no CA mends a server without TLS
     "its TLS settings do not fit the server (the server takes no TLS connections, which its sslmode=require, verify-ca or "
     "verify-full asks for: turn TLS on at the server, or use sslmode=prefer)"),
    (("certificate verify failed", "root certificate file", "server certificate for"),
     "its TLS settings do not fit the server (sslmode=verify-ca or verify-full needs sslrootcert=PATH, the CA that signed the server's certificate)"),
)
_BAD_SETTING = re.compile(  # libpq's (and psycopg's) words for a URL setting it can't use, found only when it connects
    r"invalid [\w ]+ value: |invalid port number|invalid integer value|could not parse network address|could not match \d+|bad value for "
    r"|definition of service \"[^\"]*\" not found|may not be used with sslrootcert"
)


def refusal(detail: str) -> str | None:
    """What a connection error means when it is the URL's fault (a password, a TLS setting, a port or option libpq can't
    use), not an outage; None otherwise."""
    for phrases, meaning in _REFUSALS:
        if any(phrase in detail for phrase in phrases):
            return meaning
    if _BAD_SETTING.search(detail):
        return "libpq can't use one of its settings (its port, or an option in its query)"
    return None


def unusable_host(parsed: dict[str, str]) -> str | None:
    """A host name in libpq's reading of a URL that no DNS lookup takes (an empty label, as in ``db..internal``, or one
    past 63 characters: Python's resolver raises a bare UnicodeError for it); None when each can be looked up."""
    if "hostaddr" in parsed:  # the addresses are given: the names are not looked up
        return None
    for host in parsed.get("host", "").split(","):
        if host and not host.startswith(("/", "@")):  # a Unix socket's folder, an abstract socket
            try:
                host.encode("idna")
            except UnicodeError:
                return host
    return None


def misread_password(url: str, parsed: dict[str, str]) -> bool:
    """Whether libpq (``parsed``: its reading of ``url``) takes the URL's password for something else than was written, as
    for an ``@`` or ``/`` pasted without percent-encoding: it would try a "host" made of the password's rest, and show it."""
    pasted = pasted_password(url)
    return bool(pasted) and parsed.get("password") != unquote(pasted)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with ``url`` shown without its password, and the password itself, as written or decoded, as ``***``."""
    text = text.replace(url, url_without_password(url))
    pasted = pasted_password(url)
    passwords = [pasted, *re.findall(r"(?:^|&)password=([^&#]*)", url.partition("?")[2])]
    for secret in sorted({form for raw in passwords for form in (raw, unquote(raw)) if form}, key=len, reverse=True):
        text = mask_secret(text, secret)
    for at in (i for i, mark in enumerate(pasted) if mark == "@"):  # libpq ends a password at its first "@": the rest is a "host"
        text = text.replace(pasted[at + 1:] + "@", "***@")
    return text
