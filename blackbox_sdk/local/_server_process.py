"""A server process on this machine (llama.cpp's, vLLM's): started on a free loopback port with its
output in a temp log, ready once `GET /models` answers, stopped with its whole process group (and its
temp log removed: what an error needs of it is in the error's message)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx2

from .._exceptions import BackendError


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`with server as base_url:` runs an OpenAI-compatible server process until the block ends.

    Subclasses give `label`, `start_timeout_s` and `command()` (and `environment()` if it differs)."""

    label = "server"
    start_timeout_s = 120.0

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.started_in: float | None = None  # seconds from launch to the first answer
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkdtemp(prefix=f"{self.label.split()[0].replace('.', '')}-server-")) / "server.log"

    def command(self) -> list[str]:
        """The command line that runs the server on `self.port`."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's environment (this process's by default)."""
        return dict(os.environ)

    def start(self) -> str:
        """Start the server in a process group of its own and wait until it answers; returns its /v1 base URL."""
        began = time.monotonic()
        self._log.parent.mkdir(exist_ok=True)  # a server started again after a stop
        with self._log.open("wb") as sink:
            self._process = subprocess.Popen(self.command(), stdout=sink, stderr=subprocess.STDOUT, env=self.environment(), start_new_session=True)
        while time.monotonic() < began + self.start_timeout_s:
            if self._process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise BackendError(f"{self.label} exited with {self._process.returncode}:\n{tail}")
            try:
                if httpx2.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    self.started_in = time.monotonic() - began
                    return self.base_url
            except httpx2.TransportError:
                pass
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise BackendError(f"{self.label} not ready after {self.start_timeout_s:.0f}s:\n{tail}")

    def stop(self) -> None:
        """Stop the server and its children (its process group: terminate, then kill if they linger); remove its temp log."""
        if self._process is not None and self._process.poll() is None:
            group = os.getpgid(self._process.pid)
            os.killpg(group, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self._process.wait()
        shutil.rmtree(self._log.parent, ignore_errors=True)

    def log_tail(self, size: int = 3000) -> str:
        """The end of the server's output, for error messages."""
        return self._log.read_text(errors="replace")[-size:] if self._log.exists() else ""

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        """Stop the server; when the block failed because the server had died under it, say so (a bare
        connection error would hide the cause) with how it ended and the end of its log."""
        code = self._process.poll() if self._process is not None else None
        tail = self.log_tail() if error is not None and code is not None else ""
        self.stop()
        if error is not None and code is not None and isinstance(error, Exception):
            raise BackendError(f"{self.label} died during the run ({_ended(code)}); its log ends:\n{tail}") from error


def _ended(code: int) -> str:
    """How a process ended, from its return code (negative: the signal that killed it)."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = ": a crash in the server itself; a build for another CPU is one cause (README: set-up)" if name in ("SIGSEGV", "SIGILL", "SIGBUS") else ""
    return f"killed by {name}{hint}"
