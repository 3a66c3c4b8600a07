"""A GGUF is converted once: the next load of the same file (or a copy of it) reads the converted folder in the
SDK's cache, never the GGUF again, and answers exactly as the GGUF did; a damaged conversion falls back to the GGUF, says so and is converted again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import modeling_gguf_pytorch_utils

from blackbox_sdk.local import HFBackend, default_gguf_path
from blackbox_sdk.local import _converted
from blackbox_sdk.local._converted import COMPLETE, converted_folder

GREEDY = {"messages": [{"role": "user", "content": "Count from 1 to 10."}], "max_tokens": 8, "temperature": 0}


@pytest.fixture
def gguf_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The GGUF files transformers reads from here on (its one reader, wrapped to note each call)."""
    reads: list[str] = []
    reader = modeling_gguf_pytorch_utils.load_gguf_checkpoint

    def noted(gguf_path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(str(gguf_path))
        return reader(gguf_path, *args, **kwargs)

    monkeypatch.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", noted)
    return reads


def facts(backend: HFBackend) -> tuple[str, ...]:
    """What a load must keep: the weights' digest, the token facts, the chat template's ids and a greedy reply."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backend.model.state_dict().items()):
        digest.update(name.encode() + tensor.to(torch.float32).numpy().tobytes())
    lm = backend._lm
    template = backend.tokenizer.apply_chat_template(GREEDY["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
    reply = backend.chat_completion(dict(GREEDY))["choices"][0]["message"]["content"]
    return digest.hexdigest(), str((lm.context_length, lm.eos_ids, lm.pad_id, backend.model_id)), str(template), reply


def test_a_gguf_is_converted_once_and_a_copy_loads_from_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gguf_reads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = facts(HFBackend(default_gguf_path(), device="cpu"))
    assert gguf_reads, "the first load reads the GGUF"
    (converted,) = (tmp_path / "cache" / "blackbox-sdk" / "models").iterdir()
    assert (converted / COMPLETE).is_file() and (converted / "model.safetensors").is_file()
    copy = tmp_path / "copy" / default_gguf_path().name
    copy.parent.mkdir()
    shutil.copyfile(default_gguf_path(), copy)
    gguf_reads.clear()
    os.utime(converted / COMPLETE, (1.0, 1.0))  # last used in 1970
    assert facts(HFBackend(copy, device="cpu")) == first
    assert gguf_reads == [], "the copy's load should read the conversion, not the GGUF"
    assert (converted / COMPLETE).stat().st_mtime > time.time() - 600, "a load marks the conversion used, so that pruning keeps it"
    (converted / "config.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert facts(HFBackend(copy, device="cpu")) == first, "a damaged conversion falls back to the GGUF"
    assert gguf_reads and str(converted) in caplog.text, "the fallback is said, naming the folder"
    assert json.loads((converted / "config.json").read_text()) and (converted / COMPLETE).is_file(), "and converted again"


def test_a_gguf_over_the_limit_is_not_kept_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    path = default_gguf_path()
    assert converted_folder(path, torch.float32) is not None
    monkeypatch.setattr(_converted, "CONVERT_AT_MOST", path.stat().st_size - 1)
    assert converted_folder(path, torch.float32) is None


def test_a_new_conversion_removes_those_no_load_used_for_a_month_and_work_a_killed_one_left(tmp_path: Path) -> None:
    def made(name: str, days_old: float, complete: bool = True) -> Path:
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        marker = folder / COMPLETE if complete else folder
        marker.touch()
        os.utime(marker, (time.time() - days_old * 86400, time.time() - days_old * 86400))
        return folder

    kept = made(f"{'a' * 32}-float32-transformers-5.1.0", 0)
    made(f"{'a' * 32}-float32-transformers-4.57.0", 40)  # another transformers', unused for 40 days
    made(f"{'b' * 32}-bfloat16-transformers-5.1.0", 40)  # a GGUF since replaced
    used = made(f"{'c' * 32}-float32-transformers-4.57.0", 3)  # another environment's, still in use
    made(".converting-killed", 2, complete=False)
    running = made(".converting-running", 0.01, complete=False)  # another process converting now
    foreign = made("notes", 400, complete=False)  # not the SDK's
    _converted.prune_converted(kept)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(p.name for p in (kept, used, running, foreign))
