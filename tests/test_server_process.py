"""The servers that tests, benchmarks and examples start (llama.cpp's here): one that dies under a run is
named as the cause, where the client alone would only see a connection refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import openai
import pytest

from blackbox_sdk import BackendError
from blackbox_sdk.local import LlamaServer


def test_a_server_that_dies_during_the_block_is_named_as_the_cause(gguf_path: Path) -> None:
    server = LlamaServer(gguf_path)
    with pytest.raises(BackendError) as caught:
        with server as base_url:
            assert server._process is not None
            os.killpg(os.getpgid(server._process.pid), signal.SIGSEGV)  # as llama.cpp built for another CPU does
            server._process.wait(timeout=30)
            openai.OpenAI(base_url=base_url, api_key="local", max_retries=0).models.list()
    message = str(caught.value)
    assert "died during the run" in message and "SIGSEGV" in message and "another CPU" in message
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)


def test_a_block_that_fails_while_the_server_runs_keeps_its_own_error(gguf_path: Path) -> None:
    server = LlamaServer(gguf_path)
    with pytest.raises(KeyError, match="the caller's own"):
        with server:
            raise KeyError("the caller's own")
    assert server._process is not None and server._process.poll() is not None  # stopped all the same
    assert not server._log.parent.exists()


def test_a_stopped_server_leaves_no_temp_folder_and_starts_again(gguf_path: Path) -> None:
    server = LlamaServer(gguf_path)
    folder = server._log.parent
    for _ in range(2):  # started again after a stop
        with server as base_url:
            assert folder.is_dir() and openai.OpenAI(base_url=base_url, api_key="local", max_retries=0).models.list().data
        assert not folder.exists()
