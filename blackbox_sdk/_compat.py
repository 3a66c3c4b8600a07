"""Import paths from before the package had subpackages, kept because docs and users named them:
each old module name is an alias of the face that now holds its names, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {  # old module -> its new home (a public face)
    "blackbox_sdk.adapter_training": "blackbox_sdk.adapter",
    "blackbox_sdk.bbt": "blackbox_sdk.tuning",
    "blackbox_sdk.beam": "blackbox_sdk.adapter",
    "blackbox_sdk.calllog": "blackbox_sdk.call_log",
    "blackbox_sdk.embeds_endpoint": "blackbox_sdk.tuning",
    "blackbox_sdk.errors": "blackbox_sdk",
    "blackbox_sdk.hf_backend": "blackbox_sdk.local",
    "blackbox_sdk.hf_transport": "blackbox_sdk.local",
    "blackbox_sdk.local_server": "blackbox_sdk.local",
    "blackbox_sdk.models": "blackbox_sdk.local",
    "blackbox_sdk.online": "blackbox_sdk.adapter",
    "blackbox_sdk.soft_prompt": "blackbox_sdk.tuning",
    "blackbox_sdk.tokens": "blackbox_sdk.budget",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names and hands out the new module under them."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved: import from {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new face, already imported."""


def install() -> None:
    """Put the finder on `sys.meta_path` once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
