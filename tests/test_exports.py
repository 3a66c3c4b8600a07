"""The public surface: one sorted `__all__`, every openai name re-exported, ours swapped in."""

from __future__ import annotations

import subprocess
import sys

import openai

import blackbox_sdk


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert blackbox_sdk.__all__ == sorted(blackbox_sdk.__all__)
    for name in blackbox_sdk.__all__:
        if name not in ("Adapter", "SoftPrompt", "Tuner"):  # need the [adapter]/[bbt] extras: checked below
            assert getattr(blackbox_sdk, name) is not None, name


def test_every_public_openai_name_is_re_exported() -> None:
    missing = [name for name in openai.__all__ if not name.startswith("__") and name not in blackbox_sdk.__all__]
    assert missing == []
    assert blackbox_sdk.APIStatusError is openai.APIStatusError
    assert blackbox_sdk.types is openai.types


def test_clients_are_ours_and_errors_are_openais() -> None:
    assert blackbox_sdk.OpenAI is not openai.OpenAI and blackbox_sdk.Client is blackbox_sdk.OpenAI
    assert blackbox_sdk.AsyncClient is blackbox_sdk.AsyncOpenAI
    assert issubclass(blackbox_sdk.InvalidRequestError, openai.BadRequestError)


def test_core_imports_without_torch() -> None:
    code = (
        "import sys; import blackbox_sdk, blackbox_sdk.cache, blackbox_sdk.budget, blackbox_sdk.call_log, "
        "blackbox_sdk._retry, blackbox_sdk._pipeline, blackbox_sdk.resources; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_names_load_their_modules() -> None:
    assert blackbox_sdk.Adapter.__name__ == "Adapter"
    assert blackbox_sdk.Tuner.__name__ == "Tuner"
    assert blackbox_sdk.SoftPrompt.__name__ == "SoftPrompt"
