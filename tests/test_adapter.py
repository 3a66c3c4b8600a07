"""The energy model: scoring on the real all-MiniLM-L6-v2, batching, save/load without pickle."""

from __future__ import annotations

import datetime
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import Adapter, AdapterConfig, normalize_answer

QUESTION = "What is the capital of Kenya?"
ANSWERS = ["The capital of Kenya is Nairobi.", "The capital of Kenya is Mombasa.", "Bananas are yellow.", "Nairobi"]


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    """A fresh adapter on the packaged encoder, one CPU thread (the machine is shared)."""
    torch.set_num_threads(1)
    return Adapter.create(AdapterConfig(trainable_layers=1, score_batch_size=3), seed=0, device="cpu")


def test_score_gives_one_finite_float_per_answer_and_depends_on_the_answer(adapter: Adapter) -> None:
    scores = adapter.score(QUESTION, ANSWERS)
    assert len(scores) == len(ANSWERS)
    assert all(isinstance(s, float) and abs(s) < 1e3 for s in scores)
    assert len({round(s, 6) for s in scores}) == len(ANSWERS)


def test_score_is_independent_of_answer_order_and_batch_split(adapter: Adapter) -> None:
    forward = adapter.score(QUESTION, ANSWERS)
    backward = adapter.score(QUESTION, ANSWERS[::-1])[::-1]
    assert forward == pytest.approx(backward, abs=1e-5)


def test_copies_of_an_answer_add_consensus_times_log_count(adapter: Adapter) -> None:
    answers = ["Nairobi.", "nairobi", "Mombasa", "  NAIROBI!  "]
    raw = adapter.score_pairs([(QUESTION, a) for a in answers])
    scores = adapter.score(QUESTION, answers)
    bonus = [math.log(3), math.log(3), 0.0, math.log(3)]
    assert scores == pytest.approx([r + b for r, b in zip(raw, bonus)], abs=1e-6)
    alone = Adapter(AdapterConfig(trainable_layers=1, consensus=0.0), adapter.model, adapter.tokenizer, adapter.base_sha256)
    assert alone.score(QUESTION, answers) == pytest.approx(raw, abs=1e-6)


def test_an_adapter_keeps_its_own_copy_of_the_config() -> None:
    """Training writes its choices (consensus, confidence) into the adapter's config, never into the caller's."""
    config = AdapterConfig(trainable_layers=1, lora_rank=2)
    made = Adapter.create(config, device="cpu")
    made.config.consensus, made.config.confidence = 4.0, 0.9
    assert (config.consensus, config.confidence) == (1.0, None) and made.config is not config


def test_normalize_answer_ignores_case_spacing_and_end_punctuation() -> None:
    assert normalize_answer("  The capital is  Nairobi. ") == normalize_answer('the capital is nairobi"') == "the capital is nairobi"
    assert normalize_answer("Nairobi") != normalize_answer("Nairobbi")


def test_cpu_scoring_runs_in_batches_of_score_batch_size(adapter: Adapter) -> None:
    seen: list[int] = []
    hook = adapter.model.encoder.register_forward_hook(lambda _m, _a, kw, _out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        adapter.score(QUESTION, ANSWERS + [a.upper() for a in ANSWERS])  # 8 distinct answers, batches of 3
        adapter.score(QUESTION, ANSWERS * 2)  # the same 4 twice: each distinct text is scored once
    finally:
        hook.remove()
    assert sorted(seen[:3]) == [2, 3, 3] and sorted(seen[3:]) == [1, 3]


def test_scoring_does_not_track_gradients_or_leave_train_mode(adapter: Adapter) -> None:
    adapter.model.train()
    outputs: list[torch.Tensor] = []
    hook = adapter.model.head.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        adapter.score(QUESTION, ANSWERS[:2])
    finally:
        hook.remove()
    assert outputs and not outputs[0].requires_grad and outputs[0].is_inference()
    assert adapter.model.training
    adapter.model.eval()


def test_long_texts_are_truncated_from_the_left_keeping_the_answer(adapter: Adapter) -> None:
    long_question = "Tell me about Kenya. " * 200 + QUESTION
    ids = adapter.encode([adapter.config.render(long_question, "The capital is Nairobi.")])["input_ids"][0]
    assert len(ids) == adapter.config.max_length
    assert "nairobi" in adapter.tokenizer.decode(ids[-6:])


def test_only_the_head_and_top_layers_train(adapter: Adapter) -> None:
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter.trainable_names())
    assert {"head.weight", "head.bias"} <= trainable
    assert all(".layer.5." in n for n in trainable - {"head.weight", "head.bias"})
    assert not any("embeddings" in n for n in trainable)


def test_save_then_load_gives_identical_scores_from_safetensors(adapter: Adapter, tmp_path: Path) -> None:
    with torch.no_grad():
        adapter.model.head.bias.fill_(0.25)  # a change a reload must keep
    adapter.metadata = {"name": "kenya", "trained_on": "a unit test", "metrics": {"pair_accuracy": 0.75}}
    folder = adapter.save(tmp_path / "kenya")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    loaded = Adapter.load(folder, device="cpu")
    assert loaded.score(QUESTION, ANSWERS) == adapter.score(QUESTION, ANSWERS)
    assert loaded.metadata == adapter.metadata
    card = (folder / "README.md").read_text()
    assert "a unit test" in card and "pair_accuracy" in card and "all-MiniLM-L6-v2" in card


def test_saved_files_are_readable_by_others_as_the_umask_allows(adapter: Adapter, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        folder = adapter.save(tmp_path / "shared")
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(["README.md", "adapter.safetensors", "adapter_config.json"], 0o644)


def test_the_card_usage_example_is_the_metadata_example(adapter: Adapter, tmp_path: Path) -> None:
    adapter.metadata = {"example": {"question": QUESTION, "answers": ANSWERS[:2]}}
    card = (adapter.save(tmp_path / "example") / "README.md").read_text()
    assert f"adapter.score({json.dumps(QUESTION)}, {json.dumps(ANSWERS[:2])})" in card
    assert "2 plus 3" not in card


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        pytest.param({"trained_at": datetime.datetime(2026, 12, 6)}, "metadata must be plain JSON", id="a-datetime"),
        pytest.param({"tags": {"kenya"}}, "metadata must be plain JSON", id="a-set"),
        pytest.param({"example": {"question": QUESTION, "answer": ANSWERS}}, r'metadata\["example"\] must be', id="example-without-answers"),
        pytest.param({"example": QUESTION}, r'metadata\["example"\] must be', id="example-a-text"),
        pytest.param({"verdict": "good"}, r'metadata\["verdict"\] must be', id="verdict-a-text"),
        pytest.param({"verdict": {"summary": "x", "adapter_accuracy": "0.5"}}, r'metadata\["verdict"\] must be', id="verdict-accuracy-a-text"),
        pytest.param({"verdict": {"summary": "x", "adapter_accuracy": 0.5}}, r'metadata\["verdict"\] must be', id="verdict-without-majority"),
        pytest.param({"verdict": {"adapter_accuracy": 0.5, "majority_accuracy": 0.4}}, r'metadata\["verdict"\] must be', id="verdict-without-summary"),
        pytest.param({"metrics": [0.5]}, r'metadata\["metrics"\] must be', id="metrics-a-list"),
    ],
)
def test_metadata_the_folder_cant_hold_is_an_adapter_error_before_anything_is_written(
    adapter: Adapter, tmp_path: Path, metadata: dict[str, object], message: str
) -> None:
    """A TypeError, KeyError, AttributeError or ValueError from json or the card before, after the weights were written."""
    folder = adapter.save(tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    adapter.metadata = metadata
    try:
        with pytest.raises(AdapterError, match=message):
            adapter.save(folder)
    finally:
        adapter.metadata = {}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and os.listdir(tmp_path) == ["kept"]


def test_saved_weights_are_the_trainable_part_only(adapter: Adapter, tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = adapter.save(tmp_path / "small", dtype="float16")
    with safe_open(str(folder / "adapter.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(adapter.trainable_names())
        assert handle.get_tensor("head.weight").dtype == torch.float16
    assert (folder / "adapter.safetensors").stat().st_size < 5_000_000
    assert Adapter.load(folder, device="cpu").score(QUESTION, ANSWERS) == pytest.approx(adapter.score(QUESTION, ANSWERS), abs=2e-2)


def test_loading_never_unpickles(adapter: Adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = adapter.save(tmp_path / "nopickle")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("something was unpickled")

    for target, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")]:
        monkeypatch.setattr(target, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", type("Refuse", (), {"__init__": refuse}))
    assert Adapter.load(folder, device="cpu").score(QUESTION, ANSWERS) == adapter.score(QUESTION, ANSWERS)


def test_load_refuses_a_folder_for_another_base_encoder(adapter: Adapter, tmp_path: Path) -> None:
    folder = adapter.save(tmp_path / "other")
    document = json.loads((folder / "adapter_config.json").read_text())
    document["base_sha256"] = "0" * 64
    (folder / "adapter_config.json").write_text(json.dumps(document))
    with pytest.raises(AdapterError, match="SHA-256"):
        Adapter.load(folder, device="cpu")


def test_load_refuses_weights_that_do_not_match_the_config(adapter: Adapter, tmp_path: Path) -> None:
    folder = adapter.save(tmp_path / "mismatch")
    document = json.loads((folder / "adapter_config.json").read_text())
    document["config"]["trainable_layers"] = 2
    (folder / "adapter_config.json").write_text(json.dumps(document))
    with pytest.raises(AdapterError, match="tensors"):
        Adapter.load(folder, device="cpu")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "not an adapter folder", id="missing"),
        pytest.param("{not json", "not valid JSON", id="bad-json"),
        pytest.param('{"format": "something-else", "version": 1}', "blackbox-sdk-adapter v1", id="wrong-format"),
    ],
)
def test_load_names_what_is_wrong_with_the_folder(tmp_path: Path, content: str | None, message: str) -> None:
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    if content is not None:
        (tmp_path / "adapter_config.json").write_text(content)
    with pytest.raises(AdapterError, match=message):
        Adapter.load(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"template": "Q: {question}"}, id="template-without-answer"),
        pytest.param({"template": "Q: {question}\nA: {answer} ({source})"}, id="template-with-another-field"),
        pytest.param({"template": "Q: {question}\nA: {answer} {0}"}, id="template-with-a-positional-field"),
        pytest.param({"template": "{question} {answer} {answer.upper}"}, id="template-with-an-attribute"),
        pytest.param({"template": "{question} {answer} {answer:d}"}, id="template-with-a-number-format"),
        pytest.param({"template": "{question} {answer} }"}, id="template-with-a-stray-brace"),
        pytest.param({"pooling": "max"}, id="unknown-pooling"),
        pytest.param({"max_length": 2}, id="tiny-max-length"),
        pytest.param({"trainable_layers": -2}, id="negative-layers"),
        pytest.param({"score_batch_size": 0}, id="empty-batches"),
        pytest.param({"consensus": -1.0}, id="negative-consensus"),
    ],
)
def test_bad_config_is_refused_before_loading_a_model(kwargs: dict[str, object]) -> None:
    with pytest.raises(AdapterError):
        AdapterConfig(**kwargs)  # type: ignore[arg-type]


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(AdapterError, match="unknown adapter config keys"):
        AdapterConfig.from_dict({"template": "{question} {answer}", "lr": 1.0})


def test_base_folder_without_config_is_an_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="config.json"):
        Adapter.create(AdapterConfig(base_model=str(tmp_path)))


def test_a_base_encoder_stored_in_fp16_loads_and_trains_in_fp32(tmp_path: Path) -> None:
    from transformers import AutoModel

    from blackbox_sdk.adapter import RankingGroup, TrainConfig, train
    from blackbox_sdk.local import default_encoder_path

    torch.set_num_threads(1)
    source, half = default_encoder_path(), tmp_path / "minilm-fp16"
    AutoModel.from_pretrained(source, use_safetensors=True).half().save_pretrained(half)  # as many HF checkpoints are kept
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (half / name).write_bytes((source / name).read_bytes())
    stored = Adapter.create(AdapterConfig(base_model=str(half), trainable_layers=-1), seed=0, device="cpu")
    full = Adapter.create(AdapterConfig(trainable_layers=-1), seed=0, device="cpu")
    assert {p.dtype for p in stored.model.parameters()} == {torch.float32}  # transformers 5 would keep the file's fp16
    assert stored.score(QUESTION, ANSWERS) == pytest.approx(full.score(QUESTION, ANSWERS), abs=2e-3)  # fp16 rounding of the weights only
    groups = [RankingGroup(question=f"What is {i} plus 2?", positive=f"{i} plus 2 is {i + 2}.", negatives=(f"{i} plus 2 is {i + 3}.",)) for i in range(16)]
    train(stored, groups, TrainConfig(epochs=2, lr=1e-3, progress=False))  # in fp16 this diverged: "the loss is nan"
    assert all(math.isfinite(s) for s in stored.score(QUESTION, ANSWERS))


def test_a_single_string_of_answers_is_refused(adapter: Adapter) -> None:
    with pytest.raises(AdapterError, match="list of strings"):
        adapter.score(QUESTION, "Nairobi")  # type: ignore[arg-type]
    with pytest.raises(AdapterError, match="texts must be a list of strings, not one string"):  # scored letter by letter before
        adapter.score_texts("Nairobi")


@pytest.mark.parametrize("pairs", [[("q",)], [("q", "a", "b")], ["qa"], [("q", 3)], "qa", None], ids=["one", "three", "string", "number", "text", "none"])
def test_pairs_that_are_not_question_answer_strings_are_an_adapter_error(adapter: Adapter, pairs: object) -> None:
    with pytest.raises(AdapterError, match="pair"):  # before: ValueError from unpacking, or a wrong pair scored ("qa" as q and a)
        adapter.score_pairs(pairs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("question", "answers", "message"),
    [
        pytest.param(QUESTION, ["Nairobi", 1], "answers must be text, not int", id="an-int-answer"),
        pytest.param(QUESTION, [None], "answers must be text, not NoneType", id="a-none-answer"),
        pytest.param(QUESTION, [b"Nairobi"], "answers must be text, not bytes", id="a-bytes-answer"),
        pytest.param(None, ["Nairobi"], "the question must be text, not NoneType", id="no-question"),
        pytest.param(QUESTION, None, "answers must be a list of strings, not NoneType", id="no-answers"),  # TypeError before
        pytest.param(QUESTION, 5, "answers must be a list of strings, not int", id="a-number-of-answers"),
    ],
)
def test_answers_or_a_question_that_are_not_text_are_an_adapter_error(adapter: Adapter, question: object, answers: list[object], message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        adapter.score(question, answers)  # type: ignore[arg-type]


def test_an_answer_with_a_lone_surrogate_scores_as_with_the_replacement_character(adapter: Adapter) -> None:
    """Half of an emoji a server cut in two: the tokenizer can't read it, so it scores as U+FFFD, not a TypeError mid-call."""
    cut, replaced = ["Nairobi \ud83d", "Mombasa"], ["Nairobi \ufffd", "Mombasa"]
    assert adapter.score("Kenya? \ud83c", cut) == adapter.score("Kenya? \ufffd", replaced)
    assert adapter.score_texts(cut) == adapter.score_texts(replaced)


def test_a_max_length_beyond_the_encoders_positions_is_refused_when_built_not_when_a_long_answer_comes() -> None:
    with pytest.raises(AdapterError, match="max_length 1024 is more than the 512 tokens"):
        Adapter.create(AdapterConfig(trainable_layers=0, max_length=1024), device="cpu")
    with pytest.raises(AdapterError, match="max_length 1024 is more than the 512 tokens"):
        Adapter.create(AdapterConfig(trainable_layers=1, lora_rank=2, max_length=1024), device="cpu", shared=True)


@pytest.mark.parametrize("lora_rank", [0, 2], ids=["full", "lora"])
def test_a_saved_max_length_beyond_the_encoders_positions_names_the_adapters_config_file(lora_rank: int, tmp_path: Path) -> None:
    Adapter.create(AdapterConfig(trainable_layers=1 if lora_rank else 0, lora_rank=lora_rank), device="cpu").save(tmp_path / "a")
    document = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    document["config"]["max_length"] = 1024  # edited by hand
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(document))
    with pytest.raises(AdapterError, match=f"^{tmp_path / 'a' / 'adapter_config.json'}: max_length 1024 is more than the 512 tokens"):
        Adapter.load(tmp_path / "a", device="cpu")


def test_module_imports_without_torch() -> None:
    code = "import sys, blackbox_sdk.adapter; from blackbox_sdk.adapter import beam_search; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
