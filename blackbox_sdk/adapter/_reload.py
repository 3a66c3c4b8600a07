"""Hot reload: a loaded adapter picks up a re-trained folder swapped in under the same path, without a restart.

`reload_if_changed` is called before each scoring: at most once per `reload_interval` seconds it
stats the folder's config and weights files; only when they changed does it read the JSON, and a new
`revision` there, or weights files that changed under the same one (a copy that wrote the config
before the last weights: a reload between them held the new head with the old deltas), loads the
folder again (on the same shared base, as the same kind: fast or not).
A folder caught mid-swap (absent) keeps the loaded weights until the next check. A revision that
fails to load (damaged, half-copied) keeps them too, with one warning; it is tried again only when
the folder changes again. The load is stamped before it reads and checked unchanged after, so a save
landing during it never leaves a mix of two revisions.
"""

from __future__ import annotations

import time
from typing import Any

from .._logging import logger
from ._folder import read_document, stamp

_SWAPPED = ("config", "model", "tokenizer", "base_sha256", "metadata", "base", "lora_name", "revision", "_scorer", "_stamp", "_attachment")


def reload_if_changed(adapter: Any) -> bool:
    """Load the adapter's source folder again into it when the folder holds a new revision; whether it did."""
    now = time.monotonic()
    if adapter.source is None or now - adapter._checked < adapter.reload_interval:
        return False
    adapter._checked = now
    current = stamp(adapter.source)
    if current is None or current == adapter._stamp:
        return False
    try:
        same_weights = adapter._stamp is not None and current[1:] == adapter._stamp[1:]
        if same_weights and read_document(adapter.source).get("revision") == adapter.revision:
            adapter._stamp = current  # the config rewritten as it was
            return False
        fresh = type(adapter).load(adapter.source, device=str(adapter.device), shared=adapter.shared, fast=adapter.fast, precision=adapter.precision)
    except Exception as exc:  # a serving adapter never fails its calls for its folder: it keeps the loaded revision
        adapter._stamp = current  # not tried again until the folder changes again
        if stamp(adapter.source) == current:  # a bad revision, not a swap caught mid-way: say so once
            logger.warning("adapter %s: its new revision can't be loaded, revision %s keeps scoring: %s", adapter.source, adapter.revision, exc)
        return False
    with adapter._lock:
        old_base, old_name = adapter.base, adapter.lora_name
        for name in _SWAPPED:
            setattr(adapter, name, getattr(fresh, name))
    if old_base is not None and old_name is not None:
        old_base.discard(old_name)  # the old deltas; the base stays for the new ones, or goes when nothing else is on it
    return True
