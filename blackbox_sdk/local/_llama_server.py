"""A real OpenAI-compatible server on this machine: llama.cpp's (`llama-cpp-python[server]`) on a
GGUF file, started on a free loopback port and stopped on exit. Tests, benchmarks and the
examples use it as the black box when no API key is at hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._server_process import ServerProcess


class LlamaServer(ServerProcess):
    """`with LlamaServer() as base_url:` runs llama.cpp's OpenAI-compatible server until the block ends."""

    label = "llama.cpp server"

    def __init__(self, model: str | Path | None = None, *, alias: str = "smollm2", n_ctx: int = 2048, threads: int = 2) -> None:
        from ._packaged import default_gguf_path

        self.model = Path(model) if model is not None else default_gguf_path()
        self.alias = alias
        self.n_ctx = n_ctx
        self.threads = threads
        super().__init__()

    def command(self) -> list[str]:
        """llama-cpp-python's server on the GGUF, loopback only."""
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
        ]  # fmt: skip
