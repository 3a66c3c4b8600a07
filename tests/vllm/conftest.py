"""Fixtures for the tests against a real vLLM server (run by scripts/vllm_check.sh, not by the plain suite).

vLLM pins its own torch, so it lives in a virtual environment of its own; BLACKBOX_VLLM_PYTHON names
that environment's Python (scripts/vllm_env.sh makes .venv-vllm). Without it this folder is not
collected at all: nothing here can skip itself green. BLACKBOX_VLLM_MODEL_DIR, if set, is where the
packaged SmolLM2 GGUF is written out as the safetensors folder vLLM serves (kept between runs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackbox_sdk.tuning import VLLMServer, export_hf_folder

VLLM_PYTHON = os.environ.get("BLACKBOX_VLLM_PYTHON", "")  # read at import: tests/conftest.py clears BLACKBOX_* per test
MODEL_DIR = os.environ.get("BLACKBOX_VLLM_MODEL_DIR", "")

collect_ignore_glob = [] if VLLM_PYTHON else ["test_*.py"]


@pytest.fixture(scope="session")
def served_folder(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 as a float32 safetensors folder with its tokenizer."""
    target = Path(MODEL_DIR) if MODEL_DIR else tmp_path_factory.mktemp("vllm-model") / "smollm2"
    return export_hf_folder(gguf_path, target)


@pytest.fixture(scope="session")
def vllm_server(served_folder: Path) -> Iterator[VLLMServer]:
    """A real vLLM OpenAI server with --enable-prompt-embeds on a free loopback port, for the session."""
    server = VLLMServer(served_folder, python=VLLM_PYTHON, name="smollm2")
    server.start()
    print(f"\nvLLM answered after {server.started_in:.0f} s on {server.device}: {' '.join(server.command()[1:])}")
    yield server
    server.stop()
