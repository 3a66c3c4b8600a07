"""``blackbox-sdk keys``: create, list and revoke the proxy's virtual keys, straight in the key store.

    blackbox-sdk keys create --name team-a --budget-usd 50 --per-day-usd 5 --rpm 600 --reranker adapters/capitals --store keys.db
    blackbox-sdk keys list --store redis://host:6379/0 [--json]
    blackbox-sdk keys revoke key_3f9a1c2b7d4e --store keys.db

``create`` prints the new key alone on stdout (it is shown once and stored only hashed) and what it
allows on stderr. ``--store`` defaults to the environment's ``BLACKBOX_KEY_STORE``. Whoever can
write the store is an admin already, so these commands take no admin key.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from ._key_stores import open_key_store
from ._keys import KeyRecord, KeyStore, SecretKey

STORE_ENV = "BLACKBOX_KEY_STORE"
_LIMITS = ("budget_usd", "per_day_usd", "rpm", "tpm", "models", "reranker", "cache_namespace")


def add_keys_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keys create / list / revoke`` to a parser's subcommands (``parser.add_subparsers()``)."""
    keys = subparsers.add_parser("keys", help="create, list and revoke the proxy's virtual keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", default=os.environ.get(STORE_ENV), help=f"an SQLite file or a redis:// URL (default: ${STORE_ENV})")

    create = actions.add_parser("create", parents=[store], help="create a key; it is printed once")
    create.add_argument("--name", required=True, help="the tenant: its budget key, and its cache namespace unless given")
    create.add_argument("--budget-usd", type=float, help="lifetime spend cap in USD")
    create.add_argument("--per-day-usd", type=float, help="spend cap per UTC day in USD")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--models", help="the models the key may use, comma-separated (default: all)")
    create.add_argument("--reranker", help="a BBox-Adapter folder reranking this key's candidates")
    create.add_argument("--cache-namespace", help="share cached answers with the keys of this namespace (default: the name)")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.set_defaults(run=_create)

    listing = actions.add_parser("list", parents=[store], help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(run=_list)

    revoke = actions.add_parser("revoke", parents=[store], help="revoke a key by its id (or its tenant's name)")
    revoke.add_argument("key", metavar="ID", help="the key id (key_...) or the tenant name")
    revoke.set_defaults(run=_revoke)
    return keys


def _store(options: argparse.Namespace, *, create: bool) -> contextlib.closing[KeyStore]:
    """The key store named by --store; a missing SQLite file is created only by ``create``."""
    where = options.store
    if not where:
        raise ConfigError(f"name the key store: --store keys.db or --store redis://host:6379/0 (or set {STORE_ENV})")
    if not create and "://" not in where and not Path(where).expanduser().exists():  # a folder: open_key_store says so
        raise ConfigError(f"no key store at {where}")
    return contextlib.closing(open_key_store(where))


def _create(options: argparse.Namespace) -> int:
    """``keys create``: the key on stdout, what it allows on stderr."""
    limits = {name: getattr(options, name) for name in _LIMITS if getattr(options, name) is not None}
    with _store(options, create=True) as store:
        secret, record = store.create(options.name, **limits)
        try:
            _show(secret, record, as_json=options.json)
        except OSError as exc:  # stdout full or gone: a key nobody saw is revoked, so it neither lives on unknown nor holds its name
            store.revoke(record.key_id)
            if isinstance(exc, BrokenPipeError):
                raise  # the reader went away: the command ends quietly
            raise OSError(exc.errno, f"{exc.strerror}; the new key {record.key_id} was shown nowhere, so it is revoked") from exc
    return 0


def _show(secret: SecretKey, record: KeyRecord, *, as_json: bool) -> None:
    """The new key on stdout, flushed so that a failed write shows while the key can still be revoked; what it allows on stderr."""
    if as_json:
        print(json.dumps({"key": str(secret), **record.to_json()}, indent=2))
    else:
        print(str(secret))
    sys.stdout.flush()
    if not as_json:
        print(f"created {record.key_id} for {record.name}: {_limits(record)}. The key is shown only now.", file=sys.stderr)


def _list(options: argparse.Namespace) -> int:
    """``keys list``: a table, or JSON."""
    with _store(options, create=False) as store:
        records = store.list()
    if options.json:
        print(json.dumps([record.to_json() for record in records], indent=2))
        return 0
    if not records:
        print("  (no keys)")
    for record in records:
        state = "revoked" if record.revoked else "live"
        print(f"{record.key_id}  {record.name:<20} {state:<8} {_limits(record)}")
    return 0


def _revoke(options: argparse.Namespace) -> int:
    """``keys revoke``: revoke one key."""
    with _store(options, create=False) as store:
        record = store.revoke(options.key)
    print(f"revoked {record.key_id} ({record.name})")
    return 0


def _limits(record: KeyRecord) -> str:
    """What a key allows, in a few words."""
    parts = [
        f"budget ${record.budget_usd:g}" if record.budget_usd is not None else "",
        f"${record.per_day_usd:g}/day" if record.per_day_usd is not None else "",
        f"{record.rpm} rpm" if record.rpm is not None else "",
        f"{record.tpm} tpm" if record.tpm is not None else "",
        f"models {','.join(record.models)}" if record.models else "",
        f"reranker {record.reranker}" if record.reranker else "",
        f"cache namespace {record.cache_namespace}" if record.cache_namespace != record.name else "",
    ]
    return ", ".join(part for part in parts if part) or "no limits"
