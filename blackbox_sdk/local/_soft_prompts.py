"""The soft prompts a local backend serves by name. A caller's own names hold what it registered until it registers
again; the names the SDK's client sends, a name plus a digest of its values (`name#3f2a...`, one for every candidate a
tuning run sends), are kept for the most recent SERVED_KEPT only: each is registered again from the caller's name or
`soft_prompt=` option whenever a request sends it, so dropping the others bounds the memory a long run holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .._embeds import digest_name

SERVED_KEPT = 256  # soft prompts kept under digest names, the least recently used dropped (~[L, H] each)


def is_digest_name(name: str, embeds: torch.Tensor) -> bool:
    """Whether `name` is the digest name of these values (`digest_name` of its part before the last `#`)."""
    base, mark, _ = name.rpartition("#")
    return bool(mark) and digest_name(base, embeds) == name


class SoftPrompts:
    """Soft prompts [L, H] by name: a caller's names kept until replaced, digest names the `kept` most recently used."""

    def __init__(self, kept: int = SERVED_KEPT) -> None:
        self._kept = kept
        self._named: dict[str, torch.Tensor] = {}
        self._served: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many soft prompts are held, under either kind of name."""
        with self._lock:
            return len(self._named) + len(self._served)

    def put(self, name: str, embeds: torch.Tensor, tensor: torch.Tensor) -> None:
        """Hold `tensor` (the model's copy of `embeds`) under `name`: among the digest names when it is that of `embeds`."""
        digested = is_digest_name(name, embeds)
        with self._lock:
            if digested:
                self._keep(name, tensor)
            else:
                self._named[name] = tensor

    def get(self, name: str) -> torch.Tensor | None:
        """The soft prompt held under `name` (a digest name counts as used now), or None."""
        with self._lock:
            if name in self._named:
                return self._named[name]
            tensor = self._served.get(name)
            if tensor is not None:
                self._served.move_to_end(name)
            return tensor

    def served(self, name: str) -> str:
        """The digest name of what a caller's `name` holds now, held (again) as used now; a name the caller did not
        register stays as it is (a digest name held is used now; one dropped or never held gets its request's 400)."""
        with self._lock:
            tensor = self._named.get(name)
        if tensor is None:
            self.get(name)
            return name
        served = digest_name(name, tensor)
        with self._lock:
            self._keep(served, self._served.get(served, tensor))
        return served

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        """Hold a digest name as the most recently used, dropping the least recently used past `kept` (lock held)."""
        self._served[name] = tensor
        self._served.move_to_end(name)
        while len(self._served) > self._kept:
            self._served.popitem(last=False)
