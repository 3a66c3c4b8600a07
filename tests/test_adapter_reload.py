"""Hot reload of a served adapter's folder: a damaged revision, a failed load, a save landing mid-reload."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from blackbox_sdk import OpenAI
from blackbox_sdk.adapter import Adapter, AdapterConfig, _lora, _model

SHIPPED = Path(__file__).resolve().parents[1] / "adapters" / "comparison"
QUESTION, ANSWERS = "Which number is larger, 43 or 84?", ["84 is larger.", "43 is larger."]


@pytest.fixture(scope="module")
def writers() -> tuple[Adapter, Adapter]:
    """Two revisions of the shipped adapter on bases of their own: A as shipped, B with another head and negated deltas."""
    torch.set_num_threads(1)
    first, second = Adapter.load(SHIPPED, device="cpu", shared=False), Adapter.load(SHIPPED, device="cpu", shared=False)
    with torch.no_grad():
        second.model.head.bias += 10.0
        for name, param in second.model.named_parameters():
            if ".lora_B." in name:
                param.mul_(-1.0)
    return first, second


def _new_revision(folder: Path) -> str:
    """Give the folder's config a new revision in place (as a careless deploy does); returns it."""
    path = folder / "adapter_config.json"
    revision = uuid.uuid4().hex
    path.write_text(json.dumps({**json.loads(path.read_text()), "revision": revision}))
    return revision


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders `Adapter.load` reads from now on, one entry per read."""
    reads: list[Path] = []
    original = _model.read_config

    def counting(folder: Path) -> object:
        reads.append(folder)
        return original(folder)

    monkeypatch.setattr(_model, "read_config", counting)
    return reads


def test_a_damaged_revision_keeps_the_loaded_one_warns_once_and_is_tried_again_when_the_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    torch.set_num_threads(1)
    live = Path(shutil.copytree(SHIPPED, tmp_path / "live"))
    client = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(live))
    reranker = client.options.reranker
    adapter = reranker.__self__
    adapter.reload_interval = 0.0
    before, loaded = reranker(QUESTION, ANSWERS), adapter.revision
    deltas = live / "lora" / "adapter_model.safetensors"
    deltas.write_bytes(deltas.read_bytes()[:300])  # a half-copied file ...
    revision = _new_revision(live)  # ... under a new revision
    reads = _counting_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert [reranker(QUESTION, ANSWERS) for _ in range(3)] == [before] * 3
    assert adapter.revision == loaded and len(reads) == 1  # tried once, not on every call
    warned = [r.getMessage() for r in caplog.records if str(live) in r.getMessage()]
    assert len(warned) == 1 and f"revision {loaded} keeps scoring: can't read {deltas}" in warned[0]
    shutil.copy(SHIPPED / "lora" / "adapter_model.safetensors", deltas)  # the copy completes: the folder changed again
    assert reranker(QUESTION, ANSWERS) == before and adapter.revision == revision and len(reads) == 2
    client.close()


def test_a_swapped_in_revision_with_some_deltas_missing_keeps_the_loaded_one_not_half_untrained_deltas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder swapped in whole whose deltas file is readable but holds only some deltas: peft would load
    those and leave the rest as initialised, a different adapter under a new revision."""
    torch.set_num_threads(1)
    live = Path(shutil.copytree(SHIPPED, tmp_path / "live"))
    adapter = Adapter.load(live, device="cpu")
    adapter.reload_interval, before, loaded = 0.0, adapter.score(QUESTION, ANSWERS), adapter.revision
    new = Path(shutil.copytree(live, tmp_path / ".live.new"))
    deltas = new / "lora" / "adapter_model.safetensors"
    save_file(dict(list(load_file(str(deltas)).items())[:2]), str(deltas))
    _new_revision(new)
    live.rename(tmp_path / ".live.old")
    new.rename(live)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        assert adapter.score(QUESTION, ANSWERS) == before and adapter.revision == loaded
    assert any("holds 2 of the 72 deltas its config makes" in r.getMessage() for r in caplog.records)


def test_a_revision_that_fails_after_attaching_its_deltas_leaves_none_on_the_shared_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    live = Path(shutil.copytree(SHIPPED, tmp_path / "live"))
    adapter = Adapter.load(live, device="cpu")
    adapter.reload_interval = 0.0
    assert adapter.base is not None and adapter.base.peft is not None
    attached = set(adapter.base.peft.peft_config)
    head = load_file(str(live / "adapter.safetensors"))
    save_file({**head, "extra": torch.zeros(1)}, str(live / "adapter.safetensors"))  # refused after the deltas were loaded
    _new_revision(live)
    reads = _counting_reads(monkeypatch)
    for _ in range(5):
        adapter.score(QUESTION, ANSWERS)
    assert set(adapter.base.peft.peft_config) == attached and len(reads) == 1
    with pytest.raises(Exception, match="holds 3 tensors"):
        Adapter.load(live, device="cpu")
    assert set(adapter.base.peft.peft_config) == attached


def test_a_save_landing_during_a_reload_never_leaves_a_mix_of_two_revisions(
    writers: tuple[Adapter, Adapter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = writers
    expected = [first.score(QUESTION, ANSWERS), second.score(QUESTION, ANSWERS)]
    live = first.save(tmp_path / "live")
    reader = Adapter.load(live, device="cpu")
    reader.reload_interval = 0.0
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected[0], abs=1e-4)
    second.save(live)  # deploy B ...
    original, fired = _lora.SharedBase.load, []

    def then_roll_back(self: _lora.SharedBase, folder: Path, name: str, config: AdapterConfig) -> None:
        original(self, folder, name, config)
        if not fired:
            fired.append(name)
            first.save(live)  # ... and roll back to A while the reader has read B's deltas but not its head

    monkeypatch.setattr(_lora.SharedBase, "load", then_roll_back)
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected[0], abs=1e-4) and fired
    assert reader.revision == json.loads((live / "adapter_config.json").read_text())["revision"]
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected[0], abs=1e-4)


def test_a_copy_caught_after_its_config_reloads_again_when_the_rest_of_its_weights_land(writers: tuple[Adapter, Adapter], tmp_path: Path) -> None:
    """`cp -r new/. live/` writes adapter.safetensors, then adapter_config.json, then lora/: a reload between the last
    two loads B's head and config with A's deltas (they fit), and B's deltas landing under the same revision were
    never loaded before: the reader kept that mix for good."""
    first, second = writers
    expected = second.score(QUESTION, ANSWERS)
    live, new = first.save(tmp_path / "live"), second.save(tmp_path / "new")
    reader = Adapter.load(live, device="cpu")
    reader.reload_interval = 0.0
    for name in ("adapter.safetensors", "adapter_config.json"):
        shutil.copyfile(new / name, live / name)
    mixed = reader.score(QUESTION, ANSWERS)  # what a reload in the middle of the copy holds
    assert mixed != pytest.approx(expected, abs=1e-4)
    shutil.copyfile(new / "lora" / "adapter_model.safetensors", live / "lora" / "adapter_model.safetensors")
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected, abs=1e-4)


def test_an_adapter_loaded_from_a_relative_path_reloads_its_folder_retrained_in_place(
    writers: tuple[Adapter, Adapter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader started inside its folder (`reranker="."`): the swap renames the working directory away, and a source
    kept relative pointed into the removed folder from then on, so the new revision never loaded."""
    first, second = writers
    live = first.save(tmp_path / "live")
    monkeypatch.chdir(live)
    reader = Adapter.load(".", device="cpu")
    reader.reload_interval = 0.0
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(first.score(QUESTION, ANSWERS), abs=1e-4)
    second.save(".")  # `adapter train --out .` from the same folder
    assert reader.score(QUESTION, ANSWERS) == pytest.approx(second.score(QUESTION, ANSWERS), abs=1e-4)


def _trained(lora_rank: int, trainable_layers: int, seed: int) -> Adapter:
    """A fresh adapter on a base of its own with every trainable tensor moved by seeded noise (as training would)."""
    adapter = Adapter.create(AdapterConfig(lora_rank=lora_rank, trainable_layers=trainable_layers), device="cpu")
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.5)
    return adapter


def test_adapters_on_one_shared_base_keep_their_own_deltas_through_reloads_of_other_kinds_and_layers(tmp_path: Path) -> None:
    """A LoRA on the top layer, re-trained whole-layer, then LoRA on all layers twice: dropping the revision before
    the last left the top layer on the first LoRA's deltas (peft picks a new active adapter per layer, the first it
    holds there) while peft's model said the new one was active, so it was never set: the reader scored with a mix."""
    torch.set_num_threads(1)
    revisions = [_trained(4, 1, 1), _trained(0, 1, 2), _trained(4, -1, 3), _trained(4, -1, 4), _trained(4, 1, 5)]
    expected = [adapter.score(QUESTION, ANSWERS) for adapter in revisions]
    other = Adapter.load(revisions[0].save(tmp_path / "other"), device="cpu")  # a second reader on the same shared base, never changed
    reader = Adapter.load(revisions[0].save(tmp_path / "live"), device="cpu")
    reader.reload_interval = 0.0
    for number, revision in enumerate(revisions):
        revision.save(tmp_path / "live")
        assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected[number], abs=1e-4), f"revision {number}"
        assert other.score(QUESTION, ANSWERS) == pytest.approx(expected[0], abs=1e-4), f"the other adapter after revision {number}"
        assert reader.score(QUESTION, ANSWERS) == pytest.approx(expected[number], abs=1e-4)  # active when the next reload drops it
    lone = Adapter.load(revisions[0].save(tmp_path / "lone"), device="cpu", shared=False)  # the only adapter on its base
    lone.reload_interval = 0.0
    for number in (1, 2, 3):
        revisions[number].save(tmp_path / "lone")
        assert lone.score(QUESTION, ANSWERS) == pytest.approx(expected[number], abs=1e-4), f"alone, revision {number}"
