"""A real OpenAI-compatible server on this machine: llama.cpp's (`llama-cpp-python[server]`) on a
GGUF file, started on a free loopback port and stopped on exit. Tests, benchmarks and the
examples use it as the black box when no API key is at hand.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx2

from .._exceptions import BackendError


START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """`with LlamaServer() as base_url:` runs llama.cpp's OpenAI-compatible server until the block ends."""

    def __init__(self, model: str | Path | None = None, *, alias: str = "smollm2", n_ctx: int = 2048, threads: int = 2) -> None:
        from ._packaged import default_gguf_path

        self.model = Path(model) if model is not None else default_gguf_path()
        self.alias = alias
        self.n_ctx = n_ctx
        self.threads = threads
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkdtemp(prefix="llama-server-")) / "server.log"

    def start(self) -> str:
        """Start the server and wait until it answers; returns its /v1 base URL."""
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
        ]
        with self._log.open("wb") as sink:
            self._process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BackendError(f"llama.cpp server exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                if httpx2.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return self.base_url
            except httpx2.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise BackendError(f"llama.cpp server not ready after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (terminate, then kill if it lingers)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def log_tail(self, size: int = 3000) -> str:
        """The end of the server's output, for error messages."""
        return self._log.read_text(errors="replace")[-size:] if self._log.exists() else ""

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
