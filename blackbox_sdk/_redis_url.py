"""Redis URLs as every store takes them: checked once, shown without the password, and made into clients.

The cache, the budget ledger, the rate-limit store and the proxy's key store each open a Redis URL
given by a user, and each must refuse the same bad URLs with a ConfigError (a malformed one at once,
one the server refuses, for its password or database, or whose TLS certificate the URL does not trust, with one
PING at open), show the URL the same way in reprs and messages (``redis://user:***@host:port/db``, a ``password=``
query value as ``***`` too), keep the password out of every error text the driver writes, say in words when a
certificate was not trusted, retry only what their clients are told to (a dropped connection; never a timeout,
never a password the server refuses or a certificate the client refuses once open: each fails at its first try and is
said so, ``no_retry_mends``). Those decisions live here, once. redis-py is imported only when a client is made, so the core imports without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from ._exceptions import ConfigError
from ._logging import logger
from ._redact import credentials_end, mask_secret, pasted_password, url_without_password
from ._text import is_url_of

REDIS_SCHEMES = ("redis", "rediss")
REDIS_OR_UNIX = ("redis", "rediss", "unix")
INSTALL_HINT = "pip install 'blackbox-sdk[redis]'"
MASK = "***"
_PROBE = "redis.call('SET', KEYS[1], '1', 'PX', 60000) return redis.call('DEL', KEYS[1])"  # what a store's user must be let do
UNTRUSTED = "the server's TLS certificate is not one the URL trusts (give the CA that signed it as ?ssl_ca_certs=PATH)"


def is_redis_url(value: object) -> bool:
    """Whether a store option names a Redis server (``redis://`` or ``rediss://``) rather than a file; ConfigError for
    ``redis:`` without its ``//`` (``redis:/host``), which would open a folder named ``redis:`` in the working folder."""
    return is_url_of(value, REDIS_SCHEMES, "host:6379/0")


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or a ``password=`` query) shown as ``***``; never raises."""
    scheme, sep, rest = url.partition("://")
    at = credentials_end(rest) if sep else -1
    if any(mark in rest[:max(at, 0)] for mark in "/?#"):  # a password not percent-encoded: urllib would show part of it
        return f"{scheme}://{rest[:at].partition(':')[0]}:{MASK}@" + redact_url(f"{scheme}://{rest[at + 1:]}").partition("://")[2]
    try:
        parts = urlsplit(url)
    except ValueError:  # urllib can't split it (an unclosed IPv6 bracket): keep what url_without_password keeps
        return url_without_password(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rpartition('@')[2]}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(name, MASK if name == "password" else value) for name, value in pairs])
    # a fragment means nothing to a store: beside a password it is the tail of one pasted with a raw "#"
    fragment = MASK if parts.fragment and (netloc, query) != (parts.netloc, parts.query) else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return _joined(parts._replace(netloc=netloc, query=query, fragment=fragment), url)


def _joined(parts: SplitResult, url: str) -> str:
    """``parts`` as a URL again, keeping the ``//`` of a URL without a host (``unix:///path``) that urlunsplit drops."""
    text = urlunsplit(parts)
    head = f"{parts.scheme}:"
    if not parts.netloc and url.lower().startswith(head + "//") and not text.startswith(head + "//"):
        text = head + "//" + text[len(head):]
    return text


def _denied(error: BaseException) -> bool:
    """Whether a server's error is its ACL refusing the URL's user a command or a key (NOPERM, or the same inside a script)."""
    from redis.exceptions import NoPermissionError  # a driver's error: redis-py is installed

    text = str(error)
    return isinstance(error, NoPermissionError) or "can't access" in text or "can't run this command" in text


def _untrusted(error: BaseException) -> bool:
    """Whether a driver's error is a server certificate the client refused (no CA it trusts, another host's name)."""
    import ssl

    return isinstance(error.__cause__, ssl.SSLCertVerificationError)


def no_retry_mends(error: BaseException) -> bool:
    """Whether a failed connection is one no retry mends (a password the server refused, a certificate the client refused)
    rather than a dropped one: the one place that says which connection failures every Redis store retries."""
    from redis.exceptions import AuthenticationError  # a driver's error: redis-py is installed

    return isinstance(error, AuthenticationError) or _untrusted(error)


def _secrets(url: str, parts: SplitResult) -> list[str]:
    """The URL's password and ``password=`` query values, as written and decoded, longest first (a whole before its pieces)."""
    found = {parts.password or "", unquote(parts.password or "")}
    pasted = pasted_password(url)  # a password not percent-encoded, as written
    found |= {pasted, unquote(pasted)}
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote_plus(name) == "password":
            found |= {value, unquote(value), unquote_plus(value)}  # redis-py reads a query as parse_qs does: '+' is a space
    return sorted(filter(None, found), key=len, reverse=True)


class _Refused(Exception):
    """A failure no retry mends carried past redis-py's retry loop, which would retry it as the ConnectionError it is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@cache
def _retry_kinds() -> tuple[type[Any], type[Any]]:
    """redis-py's sync and asyncio Retry, each raising what ``no_retry_mends`` (a password changed on the server, an ACL
    user removed, a server certificate the URL no longer trusts) at its first try: redis-py counts it a ConnectionError."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.retry import Retry

    class FailFast(Retry):
        """A Retry that lets a failure no retry mends through at once."""

        def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            """redis-py's loop around ``do``, a failure no retry mends passed out of it unretried."""

            def once() -> Any:
                try:
                    return do()
                except Exception as error:
                    if no_retry_mends(error):
                        raise _Refused(error) from None
                    raise

            try:
                return super().call_with_retry(once, fail, *args, **kwargs)
            except _Refused as refused:
                raise refused.error from refused.error.__cause__  # the certificate's error kept: ``reason`` words it

    class AsyncFailFast(AsyncRetry):
        """The asyncio Retry that lets a failure no retry mends through at once."""

        async def call_with_retry(self, do: Callable[[], Awaitable[Any]], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            """redis-py's loop around ``do``, a failure no retry mends passed out of it unretried."""

            async def once() -> Any:
                try:
                    return await do()
                except Exception as error:
                    if no_retry_mends(error):
                        raise _Refused(error) from None
                    raise

            try:
                return await super().call_with_retry(once, fail, *args, **kwargs)
            except _Refused as refused:
                raise refused.error from refused.error.__cause__

    return FailFast, AsyncFailFast


def _schemes(schemes: tuple[str, ...]) -> str:
    """``redis://, rediss:// or unix://``."""
    names = [f"{scheme}://" for scheme in schemes]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


class RedisURL:
    """A Redis URL a store was given, checked at construction (ConfigError naming the store, never the password)."""

    def __init__(self, url: str, what: str, schemes: tuple[str, ...] = REDIS_SCHEMES) -> None:
        """Check ``url`` for the store ``what`` ("cache", "ledger", ...), taking only ``schemes``; nothing connects."""
        self._url, self._what = url, what
        self._hidden: list[str] = []  # the password's forms, longest first: nothing to scrub until the URL splits
        self.shown = redact_url(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket
            raise self._bad(str(exc)) from None
        self._hidden = _secrets(url, parts)
        try:
            port = parts.port  # None when the URL names none
        except ValueError:  # not a number, or above 65535
            port = 0
        if port == 0:
            raise self._bad("the port is not a number from 1 to 65535")
        if parts.scheme not in schemes:
            raise self._bad(f"it must start with {_schemes(schemes)}")
        if parts.scheme == "unix" and not parts.path:
            raise self._bad("it names no socket path")
        if parts.scheme != "unix" and not parts.hostname:
            raise self._bad("it names no host")
        database = parts.path.strip("/")
        if parts.scheme != "unix" and database and not database.isdigit():
            raise self._bad(f"the database after the host must be a number, got {database!r}")

    def __repr__(self) -> str:
        """The URL without its password."""
        return f"RedisURL({self.shown!r}, {self._what!r})"

    def scrub(self, text: str) -> str:
        """``text`` with the URL's password (raw or percent-decoded, in the user part or the query) as ``***``."""
        for secret in self._hidden:
            text = mask_secret(text, secret, MASK)
        return text

    def client(self, *, retries: int = 0, backoff: tuple[float, float] | None = None, **options: Any) -> Any:
        """redis-py's client for the URL with ``options``, nothing connected yet; ``retries`` (none unless given, whatever
        redis-py's version defaults to): how often a command whose connection failed is sent again, at once or after an
        exponential ``backoff`` of (base, cap) seconds (never one that timed out: a stalled server would hold the caller
        a socket timeout per try; never one ``no_retry_mends``: a refused password or certificate)."""
        try:
            import redis
        except ImportError:
            raise self._missing() from None
        options["retry"] = _retry_kinds()[0](self._backoff(backoff), retries, supported_errors=(redis.exceptions.ConnectionError,))
        return self._made(redis.Redis, redis.exceptions.RedisError, options)

    def async_client(self, *, retries: int = 0, backoff: tuple[float, float] | None = None, **options: Any) -> Any:
        """redis-py's asyncio client for the URL, as ``client`` makes the sync one (a dropped connection retried too)."""
        try:
            import redis.asyncio
        except ImportError:
            raise self._missing() from None
        options["retry"] = _retry_kinds()[1](self._backoff(backoff), retries, supported_errors=(redis.exceptions.ConnectionError,))
        options.setdefault("retry_on_error", [redis.exceptions.ConnectionError])  # else the asyncio client raises at once
        return self._made(redis.asyncio.Redis, redis.exceptions.RedisError, options)

    def reason(self, error: BaseException) -> str:
        """A driver's error as a store's message gives it, the password scrubbed; a refused password said so in words."""
        detail = self.scrub(f"{type(error).__name__}: {error}")
        from redis.exceptions import AuthenticationError  # a driver's error: redis-py is installed

        if isinstance(error, AuthenticationError):
            return f"the server refused the URL's user name or password, which no retry mends ({detail})"
        if _untrusted(error):
            return f"{UNTRUSTED}, which no retry mends ({detail})"
        return detail

    def check(self, timeout_s: float, *, forgets: str | None = None, prefix: str | None = None) -> None:
        """One PING on a connection of its own, at most one try: ConfigError (the URL without its password) when the
        server refuses the URL's password, asks for one it lacks, has no such database, shows a TLS certificate the
        URL does not trust, or is a Redis Cluster node; a server out of reach now is left to the store's first use, where an outage is reported as one (a budget's call refused, not run).
        A store that must keep every key says what it would lose (``forgets``), for a warning when the server may evict keys;
        a store that names its key ``prefix`` has a key under it written by a script and deleted: ConfigError when the URL's
        user may not (an ACL without EVALSHA, SCRIPT LOAD, or those keys), rather than a refusal at every call."""
        probe_client = self.client(retries=0, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)  # needs redis-py
        from redis import exceptions

        try:
            probe_client.ping()
            self._refuse_a_cluster(probe_client)
            if forgets is not None:
                self._warn_if_forgetting(probe_client, forgets)
            if prefix is not None:
                probe_client.register_script(_PROBE)(keys=[prefix + "probe"])
        except exceptions.AuthenticationError as exc:
            if not self._hidden:  # none given: the server's words are about HELLO, which helps no one
                raise self._refused("the server asks for a password and the URL gives none") from None
            raise self._refused(f"its user name or password is wrong ({self.scrub(str(exc))})") from None
        except exceptions.ResponseError as exc:
            if "DB index" in str(exc) or "not an integer or out of range" in str(exc):  # SELECT at connect: past 15, or past 2^63
                raise self._refused(f"the server has no such database ({exc})") from None
            if isinstance(exc, exceptions.ReadOnlyError):
                raise self._refused(f"it is a read-only replica ({exc}): give the URL of the primary") from None
            if _denied(exc):
                raise self._refused(
                    f"its user may not run what the {self._what} needs ({self.scrub(str(exc))}); give it EVALSHA, SCRIPT LOAD "
                    f"and read and write access to the keys {prefix or ''}*"
                ) from None
        except exceptions.RedisError as exc:
            if _untrusted(exc):  # a server that answered with a certificate the URL does not trust: no outage
                raise self._refused(f"{UNTRUSTED} ({self.scrub(str(exc))})", by="the client") from None
            # else out of reach (or busy): an outage, not a configuration error
        finally:
            probe_client.close()

    def _refuse_a_cluster(self, probe: Any) -> None:
        """ConfigError for a Redis Cluster node: the stores' scripts touch keys a cluster may keep on other nodes, and
        redis-py's plain client follows no redirection. A server whose ACL refuses INFO is not asked."""
        from redis import exceptions

        try:
            cluster = probe.info("cluster")
        except exceptions.ResponseError:
            return
        if cluster.get("cluster_enabled"):
            raise self._refused(
                "it is a Redis Cluster node (cluster_enabled:1), which the SDK's stores do not support: give the URL of a "
                "standalone Redis or of a primary"
            )

    def _warn_if_forgetting(self, probe: Any, forgets: str) -> None:
        """Warn when the server has a memory limit and a policy that evicts keys under it (not ``noeviction``), or keeps no
        append-only file: either could drop this store's keys, and with them ``forgets``. A server that refuses INFO (an
        ACL) is not asked further."""
        from redis import exceptions

        try:
            memory = probe.info("memory")
        except exceptions.ResponseError:
            return
        policy = memory.get("maxmemory_policy", "noeviction")
        if memory.get("maxmemory") and policy != "noeviction":
            logger.warning(
                "the Redis server of the %s %s may evict keys (maxmemory %s bytes, maxmemory-policy %s), and with them %s; "
                "give it maxmemory-policy noeviction (docs/fleet.md)", self._what, self.shown, memory["maxmemory"], policy, forgets,
            )
        if not probe.info("persistence").get("aof_enabled", 1):  # snapshots alone: a restart goes back to the last one
            logger.warning(
                "the Redis server of the %s %s keeps no append-only file (appendonly no): a restart loses what was written "
                "since its last snapshot (all of it, without snapshots), and with it %s; run it with appendonly yes (docs/fleet.md)",
                self._what, self.shown, forgets,
            )

    def _refused(self, reason: str, by: str = "the Redis server") -> ConfigError:
        """The ConfigError for a URL the server refused (or, ``by`` the client, whose certificate check failed)."""
        return ConfigError(f"the {self._what} URL {self.shown} was refused by {by}: {reason}")

    @staticmethod
    def _backoff(backoff: tuple[float, float] | None) -> Any:
        """redis-py's wait between retries: none, or exponential from ``backoff``'s (base, cap) seconds."""
        from redis.backoff import ExponentialBackoff, NoBackoff

        return NoBackoff() if backoff is None else ExponentialBackoff(base=backoff[0], cap=backoff[1])

    def _made(self, kind: Any, redis_error: type[Exception], options: dict[str, Any]) -> Any:
        """``kind.from_url(url, **options)``, its connection settings tried at once so a bad URL option fails here."""
        try:
            made = kind.from_url(self._url, **options)
            pool = made.connection_pool
            pool.connection_class(**pool.connection_kwargs)  # unknown or bad URL options fail here, before any call
        except (ValueError, TypeError, redis_error) as exc:
            raise self._bad(str(exc)) from None
        return made

    def _missing(self) -> ConfigError:
        """The ConfigError for a Redis store without redis-py, naming the extra that installs it."""
        return ConfigError(f"a Redis {self._what} needs the redis package: {INSTALL_HINT}")

    def _bad(self, reason: str) -> ConfigError:
        """The ConfigError for a URL this store can't use, the password scrubbed from ``reason``."""
        return ConfigError(f"the {self._what} URL {self.shown} is not valid: {self.scrub(reason)}")
