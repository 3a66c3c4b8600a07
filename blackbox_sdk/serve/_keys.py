"""The proxy's virtual keys: what a key allows (KeyRecord), and the rules every key store keeps.

    secret, record = store.create("team-a", budget_usd=50, per_day_usd=5, rpm=600)  # the secret is shown once
    store.lookup(request_bearer)   # the KeyRecord, or None for an unknown, revoked or malformed key
    store.revoke(record.key_id)

A secret is ``bb-`` and 32 random bytes (URL-safe base64). A store keeps only its HMAC-SHA256
under a random pepper of the store's own, looks a presented key up by that digest and compares
digests with ``hmac.compare_digest``; the clear key is never stored, logged, raised or shown by
``repr``. The stores (SQLite, Redis) implement five small primitives behind :class:`KeyStoreBase`,
which holds every decision once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol, TypeGuard

from .._closing import Closing
from .._exceptions import ConfigError
from .._text import is_utf8
from ..budget._policy import is_count

KEY_PREFIX = "bb-"
KEY_BYTES = 32
KEY_LENGTH = len(KEY_PREFIX) + math.ceil(KEY_BYTES * 4 / 3)  # 46: what token_urlsafe(32) gives, unpadded
MIN_ADMIN_KEY = 16
ADMIN_KEY_ENV = "BLACKBOX_ADMIN_KEY"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a name is a ledger file name and a Redis key part
_SHOWN = KEY_PREFIX + "…"


class SecretKey(str):
    """A key in clear: a ``str`` for printing once and sending, whose ``repr`` never shows it."""

    __slots__ = ()

    def __repr__(self) -> str:
        """The key's shape, never its value."""
        return f"SecretKey('{_SHOWN}')"


@dataclass(frozen=True)
class KeyRecord:
    """What one virtual key (a tenant) may do; None for a limit means the proxy's default."""

    key_id: str  # the short public id: shown, listed, revoked by; never the secret
    name: str  # the tenant: its budget key in the ledger and the call log
    budget_usd: float | None = None  # lifetime spend cap of the tenant
    per_day_usd: float | None = None  # spend cap per UTC day
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    models: tuple[str, ...] = ()  # model names or shell patterns ("gpt-4o*"); empty: every model
    reranker: str | None = None  # a BBox-Adapter folder scoring this tenant's candidates
    cache_namespace: str = ""  # tenants in one namespace share cached answers
    created_at: float = field(default_factory=time.time)  # epoch seconds
    revoked: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (models as a list): what the admin routes and the CLI show."""
        data = asdict(self)
        data["models"] = list(self.models)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        """A record from ``to_json``'s data (unknown fields ignored, so older readers accept newer rows)."""
        known = {spec.name for spec in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["models"] = tuple(values.get("models") or ())
        values["revoked"] = bool(values.get("revoked", False))
        return cls(**values)


class KeyStore(Protocol):
    """Where the proxy's keys live: an SQLite file (one host) or Redis (every replica)."""

    def create(self, name: str, **limits: Any) -> tuple[SecretKey, KeyRecord]:
        """A new key for ``name``: its secret (shown once) and its record."""

    def lookup(self, presented: str | None) -> KeyRecord | None:
        """The record of a live key; None for anything else. StoreUnavailableError when the store is down."""

    def find(self, key_id_or_name: str) -> KeyRecord | None:
        """A record by its id, or the newest with that name (revoked ones included)."""

    def list(self) -> list[KeyRecord]:
        """Every record, oldest first, revoked ones included."""

    def revoke(self, key_id_or_name: str) -> KeyRecord:
        """Revoke a key by id, or the live key of a name; ConfigError when there is none."""

    def is_admin(self, presented: str | None) -> bool:
        """Whether ``presented`` is the admin key."""

    def close(self) -> None:
        """Release the store's connections."""


def new_secret() -> SecretKey:
    """A fresh key in clear: ``bb-`` and 32 random bytes."""
    return SecretKey(KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES))


def new_key_id() -> str:
    """A short public id (48 random bits) naming a key in lists, logs and revocations."""
    return "key_" + secrets.token_hex(6)


def new_pepper() -> str:
    """A store's HMAC pepper, made once when the store is created."""
    return secrets.token_hex(32)


def digest(pepper: str, presented: str) -> str:
    """HMAC-SHA256 of a key under the store's pepper, hex: the only form a store keeps."""
    return hmac.new(bytes.fromhex(pepper), presented.encode(), hashlib.sha256).hexdigest()


def plausible(presented: object) -> TypeGuard[str]:
    """Whether ``presented`` has a key's shape; anything else (None, bytes, long, non-ASCII) is refused unhashed."""
    return (
        isinstance(presented, str)
        and len(presented) == KEY_LENGTH
        and presented.isascii()
        and presented.startswith(KEY_PREFIX)
    )


def same_digest(stored: str, computed: str) -> bool:
    """Constant-time equality of two digests."""
    return hmac.compare_digest(stored.encode(), computed.encode())


def new_record(name: object, **limits: Any) -> KeyRecord:
    """A checked record for a new key; ConfigError naming the first bad limit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"a key name is 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit); got {name!r}")
    unknown = set(limits) - {"budget_usd", "per_day_usd", "rpm", "tpm", "models", "reranker", "cache_namespace"}
    if unknown:
        raise ConfigError(f"unknown key limits {sorted(unknown)}")
    namespace = limits.get("cache_namespace") or name
    if not isinstance(namespace, str) or not is_utf8(namespace):
        raise ConfigError(f"cache_namespace must be a string of UTF-8 text, got {namespace!r}")
    reranker = limits.get("reranker")
    if reranker is not None and (not isinstance(reranker, str) or not reranker or not is_utf8(reranker)):
        raise ConfigError(f"reranker must be an adapter folder (a non-empty string of UTF-8 text) or None, got {reranker!r}")
    return KeyRecord(
        key_id=new_key_id(),
        name=name,
        budget_usd=_positive("budget_usd", limits.get("budget_usd"), usd=True),
        per_day_usd=_positive("per_day_usd", limits.get("per_day_usd"), usd=True),
        rpm=_positive("rpm", limits.get("rpm"), usd=False),
        tpm=_positive("tpm", limits.get("tpm"), usd=False),
        models=_models(limits.get("models")),
        reranker=reranker,
        cache_namespace=namespace,
    )


def _positive(name: str, value: Any, *, usd: bool) -> Any:
    """None, or a positive finite amount of USD (`usd`) or a positive integer below 2**53 (a bool is neither): a
    larger one no SQLite INTEGER holds, and no window counts so far."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and math.isfinite(value) and value > 0 if usd else is_count(value, 1)
    if isinstance(value, bool) or not ok:
        bound = "number of USD" if usd else "integer below 2**53"
        raise ConfigError(f"{name} must be a positive {bound} or None, got {value!r:.80}")
    return float(value) if usd else value


def _models(value: Any) -> tuple[str, ...]:
    """Model names or patterns from a list or a comma-separated string; empty means every model."""
    if value is None:
        return ()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) and not isinstance(value, str):
        raise ConfigError(f"models must be a list of model names or a comma-separated string, got {value!r}")
    models = tuple(item.strip() if isinstance(item, str) else item for item in items)
    if any(not isinstance(item, str) or not item or not is_utf8(item) for item in models):  # a lone surrogate: no JSON answer holds it
        raise ConfigError(f"models must be non-empty model names of UTF-8 text, got {value!r:.200}")
    return tuple(dict.fromkeys(models))


class _AdminKey:
    """The admin key, kept only as an HMAC under a random salt of this process: never in clear."""

    def __init__(self, admin_key: str | None) -> None:
        if admin_key is not None and (not isinstance(admin_key, str) or len(admin_key) < MIN_ADMIN_KEY or not admin_key.isascii()):
            raise ConfigError(f"the admin key must be an ASCII string of at least {MIN_ADMIN_KEY} characters")
        self._salt = secrets.token_hex(32)
        self._digest = None if admin_key is None else digest(self._salt, admin_key)

    def matches(self, presented: object) -> bool:
        """Whether ``presented`` is the admin key (constant time); False when none is set."""
        if self._digest is None or not isinstance(presented, str) or not presented.isascii() or len(presented) > 4096:
            return False
        return same_digest(self._digest, digest(self._salt, presented))


class KeyStoreBase(Closing):
    """The decisions every key store shares; a backend implements the primitives below them."""

    def __init__(self, admin_key: str | None) -> None:
        self._admin = _AdminKey(admin_key)

    def create(self, name: str, **limits: Any) -> tuple[SecretKey, KeyRecord]:
        """A new key for ``name`` (a live name is refused): its secret, shown once, and its record."""
        record = new_record(name, **limits)
        secret = new_secret()
        self._insert(record, digest(self._pepper(), secret))
        return secret, record

    def lookup(self, presented: str | None) -> KeyRecord | None:
        """The record of a live key; None for an unknown, revoked or malformed one. Never raises for bad input."""
        record = self.match(presented)
        return record if record is not None and not record.revoked else None

    def match(self, presented: str | None) -> KeyRecord | None:
        """The record of the key ``presented`` is, revoked or not (a proxy that finds it revoked lets go of what it
        built for it); None for an unknown or malformed one. Never raises for bad input."""
        if not plausible(presented):
            return None
        computed = digest(self._pepper(), presented)
        found = self._by_digest(computed)
        if found is None:
            return None
        stored, record = found
        return record if same_digest(stored, computed) else None

    def find(self, key_id_or_name: str) -> KeyRecord | None:
        """A record by its id, else the live key of that name, else its newest revoked one."""
        named = [record for record in self.list() if key_id_or_name in (record.key_id, record.name)]
        by_id = [record for record in named if record.key_id == key_id_or_name]
        live = [record for record in named if not record.revoked]
        found = by_id or live or named[-1:]
        return found[0] if found else None

    def revoke(self, key_id_or_name: str) -> KeyRecord:
        """Revoke a key by id or by name (revoking twice is harmless); ConfigError for an unknown one."""
        record = self.find(key_id_or_name)
        if record is None:
            shown = "that (give the key's id, key_..., not the key itself)" if key_id_or_name.startswith(KEY_PREFIX) else repr(key_id_or_name)
            raise ConfigError(f"no key with id or name {shown}")
        if not record.revoked:
            self._mark_revoked(record)
        return replace(record, revoked=True)

    def is_admin(self, presented: str | None) -> bool:
        """Whether ``presented`` is the admin key (compared in constant time)."""
        return self._admin.matches(presented)

    def list(self) -> list[KeyRecord]:
        """Every record, oldest first, revoked ones included."""
        raise NotImplementedError

    def _pepper(self) -> str:
        """The store's HMAC pepper, created with the store."""
        raise NotImplementedError

    def _insert(self, record: KeyRecord, key_digest: str) -> None:
        """Add a record under its digest; ConfigError when the name already has a live key."""
        raise NotImplementedError

    def _by_digest(self, key_digest: str) -> tuple[str, KeyRecord] | None:
        """The stored digest and record indexed under ``key_digest``, if any."""
        raise NotImplementedError

    def _mark_revoked(self, record: KeyRecord) -> None:
        """Mark a record revoked, freeing its name."""
        raise NotImplementedError
