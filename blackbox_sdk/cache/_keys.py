"""Cache keys: the SHA-256 of the canonical JSON of what decides a response, and nothing else.

A key covers the schema version, the namespace, the route, the endpoint and the caller's request
arguments minus transport options and credentials, so the same question asked through another
timeout or API key still hits, and two namespaces sharing a folder never see each other's answers.
The endpoint is keyed without the credentials a URL can carry (``user:password@``, ``?key=...``), and
the client's ``default_query`` is keyed as part of the query the request sends (``with_default_query``), and the
headers that may decide an answer (``with_headers``: a gateway's routing header, not a credential or a tracing id).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import openai
import pydantic

from .._exceptions import ConfigError
from .._redact import is_secret_key, is_secret_query_param

KEY_SCHEMA_VERSION = 1  # bump when the key recipe changes: old entries then simply miss
TRANSPORT_KEYS = frozenset({"extra_headers", "http_client", "max_retries", "timeout"})
UNKEYED_HEADERS = frozenset({  # sent by openai's client itself, or ids that differ per request and change no answer
    "accept", "accept-encoding", "connection", "content-type", "user-agent", "idempotency-key",
    "traceparent", "tracestate", "baggage", "request-id", "x-request-id", "x-correlation-id", "x-trace-id", "x-span-id",
    "x-amzn-trace-id", "x-cloud-trace-context", "uber-trace-id", "sentry-trace",
})
UNKEYED_HEADER_PREFIXES = ("x-stainless-", "x-b3-", "x-datadog-")  # openai's client's own; Zipkin's and Datadog's trace ids
_EMPTY_SENDS_NOTHING = ("extra_body", "extra_query")  # left out when empty (after credentials are dropped)

_KEY_PATTERN = re.compile(r"[0-9a-f]{64}")
_PLAIN = (str, int, bool, type(None))  # exactly these types are their own canonical JSON
Where = str | tuple[Any, str | int]  # a value's place: the root's name, or (its parent's place, key or index)
_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)  # made once: json.dumps with options makes one a call


def cache_key(*, namespace: str, route: str, endpoint: str, params: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of (schema version, namespace, route, endpoint, params), the headers in
    ``extra_headers`` that may decide the answer included (``with_headers``)."""
    return canonical_key(namespace=namespace, route=route, endpoint=endpoint, canonical=with_headers(canonical_params(params), params, {}))


def canonical_key(*, namespace: str, route: str, endpoint: str, canonical: dict[str, Any]) -> str:
    """``cache_key`` for params that are already ``canonical_params``' output (the call path makes them once)."""
    if not isinstance(route, str) or not isinstance(endpoint, str):
        raise ConfigError("cache key: route and endpoint must be strings")
    material = {"v": KEY_SCHEMA_VERSION, "namespace": namespace, "route": route, "endpoint": key_endpoint(endpoint), "params": canonical}
    text = _KEY_JSON.encode(material)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@functools.lru_cache(maxsize=256)
def key_endpoint(endpoint: str) -> str:
    """The endpoint as a key holds it: without its user info (``user:password@``, the URL's form of an API key) or
    query parameters that carry a credential (``?key=...``), so a rotated secret still hits; otherwise unchanged."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint  # not a URL: a local model's hf:/path
    cut = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    hosts = rest[:cut].rpartition("@")[2]
    before, hash_, fragment = rest[cut:].partition("#")
    path, question, query = before.partition("?")
    kept = [part for part in query.split("&") if not is_secret_query_param(unquote_plus(part.partition("=")[0]))]
    query_text = "?" + "&".join(kept) if question and kept else ""
    return f"{scheme}{sep}{hosts}{path}{query_text}{hash_}{fragment}"


def with_default_query(canonical: dict[str, Any], params: Mapping[str, Any], default_query: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical params with ``extra_query`` as the request sends it: the client's ``default_query`` under the
    call's, merged as openai merges them (the call's value wins, its ``omit`` removes a default), credentials left out."""
    if not default_query:
        return canonical
    raw_call, call_query = params.get("extra_query"), canonical.get("extra_query")
    if call_query is not None and not isinstance(call_query, dict):
        return canonical  # not a mapping: openai can't send it either, and the key keeps it as given
    overridden = raw_call if isinstance(raw_call, Mapping) else {}
    defaults = _canonical_mapping({k: v for k, v in default_query.items() if k not in overridden}, "default_query")
    merged = {**defaults, **(call_query or {})}
    query = {name: value for name, value in merged.items() if not is_secret_query_param(name)}
    result = {name: value for name, value in canonical.items() if name != "extra_query"}
    if query:
        result["extra_query"] = query
    return result


def with_headers(canonical: dict[str, Any], params: Mapping[str, Any], default_headers: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical params with the headers the request sends that may decide its answer, under ``extra_headers``:
    the client's ``default_headers`` under the call's ``extra_headers``, merged as openai merges them (the call's
    value wins, its ``omit`` removes a default; names without case), less credentials and what only describes the
    transport (``UNKEYED_HEADERS``: the client's own, tracing ids). A gateway's routing header (Portkey's
    ``x-portkey-config``, ``OpenAI-Project``) picks what answers, so two clients that differ in one share no answers."""
    call = params.get("extra_headers")
    merged = {**_keyed_defaults(default_headers), **(_header_items(call) if isinstance(call, Mapping) else {})}
    headers = {name: value for name, value in merged.items() if isinstance(value, str)}  # an omit removes the header
    if not headers:
        return canonical
    return {**canonical, "extra_headers": headers}


def _keyed_defaults(headers: Mapping[Any, Any]) -> dict[str, Any]:
    """``_header_items`` of a client's default headers, worked out once per set of them (the same dozen, every call).
    The result is shared: never change it. A value that is not a string is keyed as None, which ``with_headers`` drops as
    it drops any value that is not one: openai's client makes a new ``Omit()`` for each unset header each time it lists
    them, which would make each set a new one, and a list can't be hashed."""
    return _keyed_items(tuple((name, value if isinstance(value, str) else None) for name, value in headers.items()))


@functools.lru_cache(maxsize=64)
def _keyed_items(items: tuple[tuple[Any, Any], ...]) -> dict[str, Any]:
    """``_header_items`` of header (name, value) pairs, cached: a key provider's refreshed token makes a new set."""
    return _header_items(dict(items))


def _header_items(headers: Mapping[Any, Any]) -> dict[str, Any]:
    """Header names lower-cased with their values, the unkeyed ones left out."""
    named = ((name.lower(), value) for name, value in headers.items() if isinstance(name, str))
    return {name: value for name, value in named if not _unkeyed_header(name)}


@functools.lru_cache(maxsize=1024)
def _unkeyed_header(name: str) -> bool:
    """Whether a (lower-cased) header is left out of keys: a credential, the client's own, or a tracing id."""
    return name in UNKEYED_HEADERS or name.startswith(UNKEYED_HEADER_PREFIXES) or is_secret_key(name) or name.endswith(("-key", "-token"))


def check_key(key: str) -> None:
    """ConfigError unless the key is a 64-character lowercase hex digest, as ``Cache.key`` makes."""
    if not isinstance(key, str) or _KEY_PATTERN.fullmatch(key) is None:
        raise ConfigError(f"cache key must be a SHA-256 hex digest from Cache.key(); got {key!r}")


def canonical_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The request arguments as plain JSON for keying: unset/None/transport/credential keys gone, models expanded.

    Top level: None, openai ``NOT_GIVEN``/``omit``, transport options (``timeout``,
    ``extra_headers``, ...) and credential-named keys are dropped; inside ``extra_query`` the
    query parameters that carry a credential (``api-key``, ``key``, ``sig``, ...) too, then an empty ``extra_body`` or ``extra_query``. At every depth: ``NOT_GIVEN``/``omit`` are dropped (never sent), a pydantic
    model class becomes its JSON schema, a pydantic instance its ``model_dump(mode="json")``,
    a datetime its ISO text (as openai sends it), tuples become lists. Anything else that isn't JSON raises ConfigError naming where it is.
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"cache key: params must be a mapping, not {type(params).__name__}")
    kept = {name: value for name, value in params.items() if not _is_dropped_top(name, value)}
    result = _canonical_mapping(kept, "params")
    if isinstance(result.get("extra_query"), dict):
        result["extra_query"] = {k: v for k, v in result["extra_query"].items() if not is_secret_query_param(k)}
    for name in _EMPTY_SENDS_NOTHING:
        if result.get(name) == {}:  # merged into the request, an empty one adds nothing: the same request as none
            del result[name]
    return result


def _is_dropped_top(name: Any, value: Any) -> bool:
    """Whether a top-level argument is left out of the key (unset, None, transport-only, or a credential)."""
    if not isinstance(name, str):
        return False
    return value is None or _is_unset(value) or name in TRANSPORT_KEYS or is_secret_key(name)


def _is_unset(value: Any) -> bool:
    """Whether a value is openai's "not given" / "omit" sentinel."""
    return isinstance(value, (openai.NotGiven, openai.Omit))


def _canonical(value: Any, where: Where) -> Any:
    """Plain JSON for one value, recursively; ConfigError naming ``where`` for anything that isn't JSON."""
    kind = type(value)
    if kind in _PLAIN:  # the common leaves, exactly typed: nothing to unwrap
        return value
    if kind is dict:
        return _canonical_mapping(value, where)
    if kind is list:
        return [_canonical(item, (where, i)) for i, item in enumerate(value) if not _is_unset(item)]
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cache key: {_render(where)} is {value!r}, which JSON can't hold")
        return int(value) if value.is_integer() and abs(value) < 2**53 else float(value)  # 1.0 is the number 1 JSON sends
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        schema: dict[str, Any] = value.model_json_schema()
        return schema
    if isinstance(value, pydantic.BaseModel):
        return _canonical(value.model_dump(mode="json"), where)
    if isinstance(value, datetime):  # as openai's JSON encoder sends it
        return value.isoformat()
    if isinstance(value, Mapping):
        return _canonical_mapping(value, where)
    if isinstance(value, (list, tuple)):
        return [_canonical(item, (where, i)) for i, item in enumerate(value) if not _is_unset(item)]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray, set, frozenset)):
        raise ConfigError(f"cache key: {_render(where)} is a one-shot {type(value).__name__}; pass a list so it can be keyed and sent")
    raise ConfigError(f"cache key: {_render(where)} is a {type(value).__name__}, which is not JSON; pass JSON-able values")


def _canonical_mapping(value: Mapping[Any, Any], where: Where) -> dict[str, Any]:
    """A mapping with string keys and canonical values, openai sentinels dropped."""
    out: dict[str, Any] = {}
    for name, item in value.items():
        key = _json_key(name, where)
        if key is not name and key in value:
            raise ConfigError(f"cache key: {_render(where)} has the key {key!r} twice (as {name!r} and as {key!r}); JSON would send both")
        if not _is_unset(item):
            out[key] = _canonical(item, (where, key))
    return out


def _json_key(name: Any, where: Where) -> str:
    """A mapping key as JSON sends it: a string as it is, an integer as its digits (``logit_bias={50256: -100}``
    goes out as ``{"50256": -100}``); ConfigError naming ``where`` for any other key."""
    if isinstance(name, str):
        return name
    if isinstance(name, int) and not isinstance(name, bool):
        return int.__repr__(name)
    raise ConfigError(f"cache key: {_render(where)} has a key {name!r}; JSON keys must be strings (or integers, sent as strings)")


def _render(where: Where) -> str:
    """Where a value sits, as text (``params['messages'][0]``): built only for an error message."""
    if isinstance(where, str):
        return where
    parent, step = where
    return f"{_render(parent)}[{step!r}]"
