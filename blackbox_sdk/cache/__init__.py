"""The response cache: hashed keys, JSON values, buckets of sampled candidates, modes and TTL."""

from ._bucket import CACHE_FORMAT
from ._cache import Cache, CacheMode, CacheStats
from ._keys import KEY_SCHEMA_VERSION, TRANSPORT_KEYS, canonical_params, with_default_query, with_headers
from ._store import CacheStore

__all__ = [
    "CACHE_FORMAT",
    "Cache",
    "CacheMode",
    "CacheStats",
    "CacheStore",
    "KEY_SCHEMA_VERSION",
    "TRANSPORT_KEYS",
    "canonical_params",
    "with_default_query",
    "with_headers",
]
