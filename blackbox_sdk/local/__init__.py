"""Local models: the HuggingFace backend that answers OpenAI routes in-process, its httpx2
transport, the packaged model files, and the llama.cpp server launcher.

`HFBackend` and `load_backend` need the [hf] extra and load on first use. `LocalRequestError` is
what the backend raises for a request that breaks OpenAI's rules (the transport answers it with 400).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attributes
from ._llama_server import LlamaServer
from ._packaged import (
    DEFAULT_ENCODER_PACKAGE,
    DEFAULT_LOCAL_MODEL,
    MPNET_ENCODER,
    MPNET_PACKAGES,
    default_encoder_path,
    default_gguf_path,
    mpnet_encoder_path,
    sha256_files,
)
from ._requests import LocalRequestError
from ._server_process import ServerProcess, free_port
from ._prompts import chat_template_tokens
from ._transport import AsyncHFTransport, HFTransport, local_async_http_client, local_http_client

if TYPE_CHECKING:  # loaded on first use (torch): a type checker sees them as they are
    from ._backend import HFBackend, load_backend

__all__ = [
    "AsyncHFTransport",
    "DEFAULT_ENCODER_PACKAGE",
    "DEFAULT_LOCAL_MODEL",
    "HFBackend",
    "HFTransport",
    "LlamaServer",
    "LocalRequestError",
    "MPNET_ENCODER",
    "MPNET_PACKAGES",
    "ServerProcess",
    "chat_template_tokens",
    "default_encoder_path",
    "default_gguf_path",
    "free_port",
    "load_backend",
    "local_async_http_client",
    "local_http_client",
    "mpnet_encoder_path",
    "sha256_files",
]

_lazy = lazy_attributes(__name__, {"HFBackend": "._backend", "load_backend": "._backend"})


def __getattr__(name: str) -> Any:
    """Load the names that need torch on first use; `InvalidRequest` is LocalRequestError's old, documented name."""
    if name == "InvalidRequest":
        warnings.warn("InvalidRequest is now blackbox_sdk.local.LocalRequestError", DeprecationWarning, stacklevel=2)
        return LocalRequestError
    return _lazy(name)
