"""LoRA adapters through peft: training in LoRA form, folders under 5 MB, one shared base for many adapters, hot reload."""

from __future__ import annotations

import gc
import json
import pickle
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from blackbox_sdk import OpenAI
from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import Adapter, AdapterConfig, RankingGroup, build_groups, evaluate, split_groups, train
from blackbox_sdk.adapter._trainer import TrainConfig

QUESTION = "What is the capital of Kenya?"
ANSWERS = ["The capital of Kenya is Nairobi.", "The capital of Kenya is Mombasa.", "Bananas are yellow.", "Nairobi"]
CAPITALS = {"Kenya": "Nairobi", "France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Chile": "Santiago", "Egypt": "Cairo",
            "Spain": "Madrid", "Italy": "Rome", "Norway": "Oslo", "Cuba": "Havana", "Iran": "Tehran", "Mali": "Bamako",
            "Nepal": "Kathmandu", "Ghana": "Accra", "Laos": "Vientiane", "Iraq": "Baghdad", "Fiji": "Suva", "Oman": "Muscat"}
LORA = AdapterConfig(lora_rank=8, trainable_layers=-1, consensus=0.0)


def _distinct(seed: int) -> Adapter:
    """A LoRA adapter with non-trivial deltas and head (as training leaves them), on a base of its own."""
    adapter = Adapter.create(LORA, seed=seed, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter.model.named_parameters():
            if ".lora_B." in name or name.startswith("head."):
                param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if name.startswith("head.") else 0.05))
    return adapter


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two saved LoRA adapters on all-MiniLM-L6-v2."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lora")
    return _distinct(1).save(root / "a"), _distinct(2).save(root / "b")


def _capital_groups() -> list[RankingGroup]:
    """The right capital of the asked country against other countries' capitals."""
    rng = random.Random(0)
    names = sorted(CAPITALS)
    groups: list[RankingGroup] = []
    for country in names:
        others = rng.sample([n for n in names if n != country], 4)
        groups += build_groups(f"What is the capital of {country}?", [f"The capital of {country} is {CAPITALS[country]}."],
                               [f"The capital of {o} is {CAPITALS[o]}." for o in others])
    return groups


def test_training_in_lora_form_moves_only_the_deltas_and_head_and_saves_a_small_peft_folder(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    adapter = Adapter.create(LORA, seed=0, device="cpu")
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    train_part, held = split_groups(_capital_groups(), 0.34, seed=0)
    untrained = evaluate(adapter, held)
    train(adapter, train_part, TrainConfig(epochs=3, lr=2e-3, groups_per_batch=4, warmup_steps=1, progress=False))
    changed = {n for n, p in adapter.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(adapter.trainable_names()) and any(".lora_B." in n for n in changed)
    assert evaluate(adapter, held).pair_accuracy >= untrained.pair_accuracy + 0.2
    folder = adapter.save(tmp_path / "capitals")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 5_000_000 and json.loads((folder / "adapter_config.json").read_text())["version"] == 2
    assert sorted(p.name for p in (folder / "lora").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert Adapter.load(folder, device="cpu", shared=False).score(QUESTION, ANSWERS) == adapter.score(QUESTION, ANSWERS)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft's own loader, called here directly
def test_the_lora_folder_is_peft_s_own_format(folders: tuple[Path, Path]) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    plain = Adapter.load(folders[0], device="cpu", shared=False)
    base = AutoModel.from_pretrained(AdapterConfig().base_path(), use_safetensors=True)
    peft_model = PeftModel.from_pretrained(base, str(folders[0] / "lora")).eval()
    batch = plain.encode([LORA.render(QUESTION, ANSWERS[0])])
    with torch.no_grad(), plain.active():
        ours = plain.model.encoder(**batch).last_hidden_state
    assert torch.allclose(peft_model(**batch).last_hidden_state, ours, atol=1e-5)


def test_two_adapters_loaded_by_path_share_one_base_and_score_each_as_alone(folders: tuple[Path, Path]) -> None:
    alone = [Adapter.load(f, device="cpu", shared=False).score(QUESTION, ANSWERS) for f in folders]
    first, second = Adapter.load(folders[0], device="cpu"), Adapter.load(folders[1], device="cpu")
    assert first.base is second.base and first.model.encoder is second.model.encoder
    assert first.base.plain is first.base.peft.get_base_model()
    assert alone[0] != alone[1]
    for _ in range(2):  # interleaved: switching the active adapter leaves each one's scores exact
        assert first.score(QUESTION, ANSWERS) == alone[0]
        assert second.score(QUESTION, ANSWERS) == alone[1]
    clients = [OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(f)) for f in folders]
    scorers = [c.options.reranker.__self__ for c in clients]
    assert scorers[0].base is scorers[1].base is first.base  # two clients' rerankers: still one base in memory
    assert [s.score(QUESTION, ANSWERS) for s in scorers] == alone


def test_adapters_dropped_from_a_shared_base_leave_it_at_its_next_load_not_one_delta_per_client(folders: tuple[Path, Path]) -> None:
    kept = Adapter.load(folders[0], device="cpu")
    base, alone = kept.base, Adapter.load(folders[0], device="cpu", shared=False).score(QUESTION, ANSWERS)
    assert base is not None and base.peft is not None
    for _ in range(3):  # a client per job (or a proxy key's reranker replaced): each loads the folder onto the base, then goes
        client = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(folders[1]))
        client.close()
        del client
        Adapter.load(folders[1], device="cpu")  # an adapter loaded and dropped at once
    gc.collect()
    latest = Adapter.load(folders[1], device="cpu")
    assert latest.base is base and set(base.peft.peft_config) == {kept.lora_name, latest.lora_name}
    assert kept.score(QUESTION, ANSWERS) == alone


def test_adapters_on_one_shared_base_score_exactly_from_threads_at_once_while_one_of_them_reloads(folders: tuple[Path, Path], tmp_path: Path) -> None:
    alone = [Adapter.load(f, device="cpu", shared=False) for f in folders]
    expected = [adapter.score(QUESTION, ANSWERS) for adapter in alone]
    live = Adapter.load(alone[0].save(tmp_path / "live"), device="cpu")
    other = Adapter.load(folders[1], device="cpu")
    live.reload_interval = 0.0  # a new revision (the same weights) is loaded on the shared base while `other` scores
    assert live.base is other.base

    def scores(adapter: Adapter, saves: int) -> list[list[float]]:
        found = []
        for _ in range(24):
            if saves:
                alone[0].save(tmp_path / "live")
            found.append(adapter.score(QUESTION, ANSWERS))
        return found

    with ThreadPoolExecutor(3) as pool:  # a proxy's worker threads scoring two keys' rerankers
        runs = [pool.submit(scores, live, 1), pool.submit(scores, other, 0), pool.submit(scores, other, 0)]
        found = [run.result() for run in runs]
    assert found[0] == [expected[0]] * 24 and found[1] == found[2] == [expected[1]] * 24


def test_loading_a_lora_adapter_never_unpickles(folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = Adapter.load(folders[0], device="cpu", shared=False).score(QUESTION, ANSWERS)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("something was unpickled")

    for target, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")]:
        monkeypatch.setattr(target, name, refuse)
    assert Adapter.load(folders[0], device="cpu", shared=False).score(QUESTION, ANSWERS) == expected


def test_a_full_weight_folder_still_loads_on_a_base_of_its_own(tmp_path: Path) -> None:
    full = Adapter.create(AdapterConfig(trainable_layers=1), seed=0, device="cpu")
    folder = full.save(tmp_path / "full")
    assert json.loads((folder / "adapter_config.json").read_text())["version"] == 1
    loaded = Adapter.load(folder, device="cpu")
    assert loaded.base is None and loaded.score(QUESTION, ANSWERS) == full.score(QUESTION, ANSWERS)


def test_a_lora_folder_without_its_deltas_is_refused_by_name(folders: tuple[Path, Path], tmp_path: Path) -> None:
    broken = Path(shutil.copytree(folders[0], tmp_path / "broken"))
    (broken / "lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="lora/adapter_model.safetensors"):
        Adapter.load(broken, device="cpu")


def test_a_client_picks_up_a_retrained_folder_swapped_in_without_restarting(folders: tuple[Path, Path], tmp_path: Path) -> None:
    live = Path(shutil.copytree(folders[0], tmp_path / "live"))
    (live / "curve.png").write_bytes(b"not an adapter file")  # what training writes beside the adapter
    client = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(live))
    reranker = client.options.reranker
    before = reranker(QUESTION, ANSWERS)
    reranker.__self__.reload_interval = 3600.0  # checked at most once an hour: no look until then
    retrained = Adapter.load(folders[1], device="cpu", shared=False)
    retrained.save(live)  # written beside, renamed into place
    assert (live / "curve.png").read_bytes() == b"not an adapter file"
    assert reranker(QUESTION, ANSWERS) == before
    reranker.__self__.reload_interval = 0.0
    assert reranker(QUESTION, ANSWERS) == retrained.score(QUESTION, ANSWERS) != before
    revision = reranker.__self__.revision
    assert revision == json.loads((live / "adapter_config.json").read_text())["revision"]
    assert reranker.__self__.refresh() is False  # same revision: nothing reloads
    shutil.rmtree(live)  # a folder mid-swap: the loaded weights stay
    assert reranker(QUESTION, ANSWERS) == retrained.score(QUESTION, ANSWERS)
    client.close()


def test_a_lora_adapter_without_peft_installed_says_which_extra(folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    with pytest.raises(AdapterError, match=r"peft: pip install 'blackbox-sdk\[adapter\]'"):
        Adapter.load(folders[0], device="cpu", shared=False)
