"""Adapter folders on disk: where an adapter may be written (never over the user's files), and damaged folders."""

from __future__ import annotations

import json
import math
import shutil
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import Adapter, OnlineConfig, OnlineQuestion, Samples, cli_main, online_train, online_train_auto

SHIPPED = Path(__file__).resolve().parents[1] / "adapters" / "comparison"
QUESTION, ANSWERS = "Which number is larger, 43 or 84?", ["84 is larger.", "43 is larger."]
ITEM = OnlineQuestion(question="What is the capital of Kenya?", gold="Nairobi")


@pytest.fixture(scope="module")
def shipped() -> Adapter:
    """The shipped comparison adapter (LoRA on MiniLM), loaded once, one CPU thread (the machine is shared)."""
    torch.set_num_threads(1)
    return Adapter.load(SHIPPED, device="cpu")


def _listing(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed): a file's text or bytes' length, a link's target, 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        out[key] = f"-> {path.readlink()}" if path.is_symlink() else "dir" if path.is_dir() else str(path.stat().st_size)
    return out


def _never_sampled(question: str, k: int, round_number: int) -> Samples:
    raise AssertionError("sampled before the output folder was checked")


def test_save_refuses_a_file_a_link_and_a_folder_of_other_files_and_moves_nothing(
    shipped: Adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "afile").write_text("x")
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "main.py").write_text("print('hi')\n")
    (project / "data" / "x.csv").write_text("1\n")
    (tmp_path / "current").symlink_to(shutil.copytree(SHIPPED, tmp_path / "v1"))  # adapters/current -> v1
    before = _listing(tmp_path)
    monkeypatch.chdir(project)
    targets = [
        (tmp_path / "afile", "it is a file"),
        (tmp_path / "afile" / "sub", "afile is a file"),
        (".", r"a folder of other files \(data, main.py\)"),
        (tmp_path / "current", "symbolic link"),
    ]
    for target, message in targets:
        with pytest.raises(AdapterError, match=message):
            shipped.save(target)
    assert _listing(tmp_path) == before


def test_save_to_dot_rewrites_the_adapter_folder_it_runs_in_keeping_its_other_files(
    shipped: Adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = Path(shutil.copytree(SHIPPED, tmp_path / "live"))
    (live / "notes.txt").write_text("mine")
    revision = Adapter.load(live, device="cpu").revision
    monkeypatch.chdir(live)
    assert shipped.save(".") == live
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # no hidden leftovers beside it
    assert (live / "notes.txt").read_text() == "mine"
    assert Adapter.load(live, device="cpu").revision != revision


def test_training_refuses_an_output_it_may_not_write_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert cli_main(["--log", str(tmp_path / "no-such-log.db"), "--out", str(tmp_path / "afile"), "--no-progress"]) == 1
    assert "it is a file" in capsys.readouterr().err  # not "no call log": the out path is checked first
    items = [OnlineQuestion(question="What is the capital of Kenya?", gold="Nairobi")]
    for train in (online_train, online_train_auto):
        with pytest.raises(AdapterError, match="it is a file"):
            train(_never_sampled, items, lambda item, answer: True, tmp_path / "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(
    "state",
    [pytest.param(b"{not json", id="not-json"), pytest.param(b"\xff\xfe", id="not-utf8"), pytest.param(b"[1, 2]", id="a-list"),
     pytest.param(b'{"version": 1, "fingerprint": "F", "extra": 1}', id="unknown-key")],
)
def test_a_damaged_online_state_file_is_an_adapter_error_naming_it_before_any_sampling(tmp_path: Path, state: bytes) -> None:
    """A state file that is not the run's JSON object (hand-edited, another tool's) was a raw JSONDecodeError,
    UnicodeDecodeError, AttributeError or TypeError."""
    path = tmp_path / "state.json"
    path.write_bytes(state.replace(b'"F"', json.dumps(OnlineConfig().fingerprint([ITEM])).encode()))
    with pytest.raises(AdapterError, match=f"{path}"):
        online_train(_never_sampled, [ITEM], lambda item, answer: True, tmp_path / "out", state_path=path)


def test_an_online_state_path_naming_a_folder_or_under_a_file_is_refused_before_any_sampling(tmp_path: Path) -> None:
    """The folder was taken for a fresh run: its first save failed with a raw IsADirectoryError after a round's sampling."""
    (tmp_path / "state").mkdir()
    with pytest.raises(AdapterError, match="state .*state is not a file"):
        online_train(_never_sampled, [ITEM], lambda item, answer: True, tmp_path / "out", state_path=tmp_path / "state")
    (tmp_path / "afile").write_text("x")  # a folder that can't be made: FileNotFoundError or NotADirectoryError at that save
    with pytest.raises(AdapterError, match="can't keep the online run's state at .*afile/state.json"):
        online_train(_never_sampled, [ITEM], lambda item, answer: True, tmp_path / "out", state_path=tmp_path / "afile" / "state.json")


def _edit_config(folder: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = folder / "adapter_config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _wrong_head(folder: Path) -> None:
    save_file({"head.weight": torch.zeros(1, 10), "head.bias": torch.zeros(1)}, str(folder / "adapter.safetensors"))


def _retyped(path: Path, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    save_file(change(load_file(str(path))), str(path))


def _all(make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    return lambda tensors: {name: make(tensor) for name, tensor in tensors.items()}


def _lora_config(folder: Path, **changes: object) -> None:
    path = folder / "lora" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


HEAD, DELTAS = "adapter.safetensors", "lora/adapter_model.safetensors"


def _lora_rank(folder: Path) -> None:
    path = folder / "lora" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 4}))


def _tiny_encoder(where: Path) -> Path:
    """A 2-layer BERT of width 32 with MiniLM's tokenizer: another base encoder, LoRA deltas for MiniLM don't fit it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from blackbox_sdk.local import default_encoder_path

    folder = where / "tiny-encoder"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_encoder_path()).save_pretrained(folder)
    return folder


def _cut_base(folder: Path) -> str:
    """A copy of MiniLM inside the adapter folder (so the error names it) with its weights cut short: a base on a full disk."""
    from blackbox_sdk.local import default_encoder_path

    base = Path(shutil.copytree(default_encoder_path(), folder / "encoder", ignore=shutil.ignore_patterns("model.safetensors")))
    (base / "model.safetensors").write_bytes((default_encoder_path() / "model.safetensors").read_bytes()[:300])
    return str(base)


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "config-without-config": (lambda d: _edit_config(d, lambda doc: doc.pop("config")), "'config' must be an object"),
    "config-without-base-sha256": (lambda d: _edit_config(d, lambda doc: doc.pop("base_sha256")), "'base_sha256' must be a string"),
    "base-sha256-null": (lambda d: _edit_config(d, lambda doc: doc.update(base_sha256=None)), "'base_sha256' must be a string"),
    "metadata-a-list": (lambda d: _edit_config(d, lambda doc: doc.update(metadata=[1])), "'metadata' must be an object or null"),
    "config-file-a-list": (lambda d: (d / "adapter_config.json").write_text("[1, 2]"), "is not a blackbox-sdk-adapter"),
    "config-file-not-utf8": (lambda d: (d / "adapter_config.json").write_bytes(b'{"format": "\xff\xfe"}'), "not valid JSON"),
    "max-length-a-string": (lambda d: _edit_config(d, lambda doc: doc["config"].update(max_length="128")), "'max_length' must be int"),
    "template-with-another-field": (
        lambda d: _edit_config(d, lambda doc: doc["config"].update(template="Q: {question}\nA: {answer} ({source})")), "not \\['source'\\]"
    ),
    "config-a-list": (lambda d: _edit_config(d, lambda doc: doc.update(config=[])), "'config' must be an object"),
    "weights-cut-short": (lambda d: _cut(d / "adapter.safetensors", 200), "can't read .*adapter.safetensors"),
    "weights-empty": (lambda d: _cut(d / "adapter.safetensors", 0), "can't read .*adapter.safetensors"),
    "weights-huge-header": (lambda d: (d / "adapter.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}"), "can't read"),
    "weights-wrong-shape": (_wrong_head, r"head.weight has shape \[1, 10\], expected \[1, 384\]"),
    "lora-weights-cut-short": (lambda d: _cut(d / "lora" / "adapter_model.safetensors", 300), "can't read .*lora/adapter_model.safetensors"),
    "lora-config-not-json": (lambda d: (d / "lora" / "adapter_config.json").write_text("{not json"), "can't load the LoRA deltas"),
    "lora-rank-mismatch": (_lora_rank, "can't load the LoRA deltas"),
    # loaded silently before: an int head as zeros, a NaN head scoring NaN, deltas peft could not match left untrained
    "head-of-ints": (lambda d: _retyped(d / HEAD, _all(lambda t: t.to(torch.int64))), "head.bias is int64, not one of float32"),
    "head-of-nan": (lambda d: _retyped(d / HEAD, _all(lambda t: torch.full_like(t, math.nan))), "head.bias holds NaN or infinite"),
    "deltas-of-int8": (lambda d: _retyped(d / DELTAS, _all(lambda t: t.to(torch.int8))), "lora_A.weight is int8"),
    "deltas-of-inf": (lambda d: _retyped(d / DELTAS, _all(lambda t: torch.full_like(t, math.inf))), "holds NaN or infinite"),
    "deltas-missing": (lambda d: _retyped(d / DELTAS, lambda t: dict(list(t.items())[:2])), "holds 2 of the 72 deltas its config makes, lacking"),
    "deltas-renamed": (
        lambda d: _retyped(d / DELTAS, lambda t: {k.replace("lora_A", "lora_X"): v for k, v in t.items()}), "holds 36 of the 72 deltas.*36 it does not make"
    ),
    "deltas-for-fewer-layers": (lambda d: _lora_config(d, layers_to_transform=[0]), "holds 12 of the 12 deltas its config makes, and 60 it does not"),
    # loaded before, scoring otherwise than trained: peft's own config of another scale, or of another rank than the adapter's config says
    "lora-alpha-of-another-config": (lambda d: _lora_config(d, lora_alpha=1.0), r"rank 8 scaled by 0.125.*lora_rank 8 and lora_alpha 16"),
    "lora-alpha-pattern": (lambda d: _lora_config(d, alpha_pattern={"query": 64}), r"rank 8 scaled by 8.*lora_alpha 16"),
    "lora-rslora": (lambda d: _lora_config(d, use_rslora=True), r"rank 8 scaled by 5.66.*lora_alpha 16"),
    "lora-alpha-infinite": (  # both configs agree, and every score was NaN
        lambda d: (_edit_config(d, lambda doc: doc["config"].update(lora_alpha=math.inf)), _lora_config(d, lora_alpha=math.inf)), "lora_alpha > 0"
    ),
    "config-of-another-rank": (lambda d: _edit_config(d, lambda doc: doc["config"].update(lora_rank=4)), r"rank 8 scaled by 2.*lora_rank 4"),
    "base-weights-cut-short": (  # safetensors' own SafetensorError before
        lambda d: _edit_config(d, lambda doc: doc["config"].update(base_model=_cut_base(d))), "can't load base encoder .*encoder: .*header"
    ),
    "another-base": (lambda d: _edit_config(d, lambda doc: doc["config"].update(base_model=str(_tiny_encoder(d.parent)))), "trained on a base encoder with SHA-256"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_is_an_adapter_error_naming_it_and_leaves_nothing_on_the_shared_base(
    shipped: Adapter, tmp_path: Path, damage: str
) -> None:
    make, message = DAMAGES[damage]
    folder = Path(shutil.copytree(SHIPPED, tmp_path / "damaged"))
    make(folder)
    assert shipped.base is not None and shipped.base.peft is not None
    attached = set(shipped.base.peft.peft_config)
    with pytest.raises(AdapterError, match=message) as caught, warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always")
        Adapter.load(folder, device="cpu")
    assert str(folder) in str(caught.value)
    assert [str(note.message) for note in noted] == []  # the error says it all: not peft's warning of the same keys besides
    assert shipped.lora_name in set(shipped.base.peft.peft_config) <= attached  # adapters collected before may have left too
    assert shipped.score(QUESTION, ANSWERS)  # the adapter already on that base still scores


@pytest.mark.parametrize("device", ["cuda:99", "bogus"])
def test_a_device_that_is_not_here_is_an_adapter_error_naming_it(device: str) -> None:
    """An AssertionError (torch without CUDA) or RuntimeError (an invalid ordinal, a name torch does not know) before."""
    with pytest.raises(AdapterError, match=f"device '{device}'"):
        Adapter.load(SHIPPED, device=device)
    with pytest.raises(AdapterError, match=f"device '{device}'"):
        Adapter.create(device=device)


def test_a_client_given_a_symbolic_link_loop_as_its_reranker_says_it_is_no_adapter_folder(tmp_path: Path) -> None:
    from blackbox_sdk import OpenAI

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(AdapterError, match="loop is not an adapter folder"):  # not pathlib's RuntimeError
        OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(tmp_path / "loop"))


def test_a_save_racing_another_writer_is_an_adapter_error_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    """Two writers swapping one folder at once (two training runs on one --out): the one whose rename found the folder
    gone (the other had just moved it away) ended in a bare FileNotFoundError and left its `.live.new-...` folder behind."""
    from blackbox_sdk.adapter._folder import swapped_in

    live = Path(shutil.copytree(SHIPPED, tmp_path / "live"))

    def another_writer_swaps_now(name: str) -> bool:  # called while this writer moves the old folder's entries
        if not (tmp_path / ".live.old-other").exists():
            live.rename(tmp_path / ".live.old-other")  # the other writer's first rename; its second puts its folder in place
        return True

    with pytest.raises(AdapterError, match="at the same time"):
        with swapped_in(live, another_writer_swaps_now) as temp:
            (temp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".live.old-other"]


def test_a_misspelled_adapter_folder_names_the_adapter_folders_it_is_close_to(tmp_path: Path) -> None:
    """`reranker="adapters/capitls"` said only "not an adapter folder": the shipped folder beside it is suggested."""
    from blackbox_sdk import OpenAI

    for name in ("capitals", "comparison"):
        shutil.copytree(SHIPPED, tmp_path / name)
    (tmp_path / "capitols").mkdir()  # a folder as close that holds no adapter (a LoRA adapter's lora/ has a config) is not suggested
    shutil.copy(SHIPPED / "lora" / "adapter_config.json", tmp_path / "capitols")
    with pytest.raises(AdapterError, match=r"capitls is not an adapter folder .*; did you mean .*/capitals\?$"):
        OpenAI(base_url="http://127.0.0.1:9/v1", api_key="x", reranker=str(tmp_path / "capitls"))
    with pytest.raises(AdapterError, match=r"\(needs adapter_config.json and adapter.safetensors\)$"):
        Adapter.load(tmp_path / "arithmetic", device="cpu")  # nothing close: no suggestion


@pytest.mark.parametrize("name", ["adapter.bin", "pytorch_model.bin", "adapter.pt"])
def test_a_folder_of_pickled_weights_is_refused_saying_so_and_nothing_is_unpickled(tmp_path: Path, name: str) -> None:
    """Weights saved with torch.save (pickle) in place of safetensors: refused without reading them, and the error says why."""
    folder = tmp_path / "mine"
    shutil.copytree(SHIPPED, folder)
    (folder / "adapter.safetensors").unlink()
    (folder / name).write_bytes(b"\x80\x04 not read")  # a pickle's first bytes: the file is never opened
    with pytest.raises(AdapterError, match=rf"holds {name}, weights in pickle form, which are never loaded: save them as adapter.safetensors"):
        Adapter.load(folder, device="cpu")


def test_a_config_naming_a_base_encoder_that_is_not_here_names_the_adapter_and_the_names_it_takes(tmp_path: Path) -> None:
    """A base named as on the Hugging Face hub was read as a folder below the working directory, and the error named
    neither the adapter nor the base names that load: `base encoder folder <cwd>/sentence-transformers/... has no config.json`."""
    folder = tmp_path / "mine"
    shutil.copytree(SHIPPED, folder)
    _edit_config(folder, lambda doc: doc["config"].update(base_model="sentence-transformers/all-MiniLM-L6-v2"))
    with pytest.raises(AdapterError) as raised:
        Adapter.load(folder, device="cpu")
    said = str(raised.value)
    assert said.startswith(f"{folder / 'adapter_config.json'}: base encoder folder ") and "sentence-transformers/all-MiniLM-L6-v2 has no config.json" in said
    assert "base_model is 'default' (all-MiniLM-L6-v2), 'all-mpnet-base-v2' or an encoder folder's path" in said
