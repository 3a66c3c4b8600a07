"""A vLLM OpenAI server that takes prompt embeddings, run from its own virtual environment, for tuning over HTTP.

vLLM pins its own torch, so it lives in a virtual environment of its own (`scripts/vllm_env.sh`
makes `.venv-vllm`) and runs as a subprocess of that environment's Python. `export_hf_folder`
writes a GGUF (the packaged SmolLM2) out as the safetensors folder vLLM serves, tokenizer included.
On a machine without CUDA the server runs on the CPU (`VLLM_TARGET_DEVICE=cpu`, a 1 GiB KV cache).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..local import ServerProcess

START_TIMEOUT_S = 900.0  # the CPU build compiles the model first: about 2.5 minutes on 2 shared cores


def export_hf_folder(gguf: str | Path, folder: str | Path) -> Path:
    """Write a GGUF model as a dequantised float32 safetensors folder with its tokenizer; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, target = Path(gguf), Path(folder)
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained; a fresh one doesn't
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent if target.parent.exists() else None))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))  # config.json appears only with the whole folder
    return target


class VLLMServer(ServerProcess):
    """`with VLLMServer(folder, python=...) as base_url:` runs vLLM's OpenAI server with --enable-prompt-embeds."""

    label = "vLLM"
    start_timeout_s = START_TIMEOUT_S

    def __init__(
        self,
        model: str | Path,
        *,
        python: str | Path,
        name: str = "smollm2",
        max_model_len: int = 512,
        dtype: str = "float32",
        device: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = Path(model)
        self.python = str(python)
        self.name = name
        self.command_line = [
            self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
            "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port),
            "--enable-prompt-embeds", "--max-model-len", str(max_model_len), "--dtype", dtype, *extra_args,
        ]  # fmt: skip
        self.device = device or ("cuda" if shutil.which("nvidia-smi") else "cpu")

    def command(self) -> list[str]:
        """vLLM's OpenAI server (the venv's Python: its torch pin differs from ours), loopback only."""
        return self.command_line

    def environment(self) -> dict[str, str]:
        """The server's environment: this one, plus vLLM's CPU settings when it runs on the CPU."""
        env = dict(os.environ)
        if self.device == "cpu":
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        return env
