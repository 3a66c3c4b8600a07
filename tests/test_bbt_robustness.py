"""Black-Box Tuning under bad options, broken checkpoints and runs stopped midway: clear errors, nothing lost."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as to_safetensors

from blackbox_sdk._exceptions import BlackBoxError, BudgetExceededError, TuningError
from blackbox_sdk.local._backend import HFBackend, load_backend
from blackbox_sdk.tuning import BBTConfig, SoftPrompt, Tuner
from blackbox_sdk.tuning import _checkpoint

TEMPLATE = "{text} It was {label}"
VERBALIZER = {"positive": "great", "negative": "terrible"}
TRAIN = [("A warm and funny film, I loved it.", "positive"), ("The battery died in an hour, awful.", "negative")]
DEV = [("These headphones sound amazing.", "positive"), ("The blender broke after a week.", "negative")]
TINY = {"d": 8, "prompt_len": 2, "popsize": 4, "budget": 8, "dev_every": 4, "progress": False, "placement": "suffix"}


@pytest.fixture(scope="module")
def backend(gguf_path: Path) -> HFBackend:
    """The process-wide local backend for the packaged SmolLM2."""
    torch.set_num_threads(2)
    return load_backend(gguf_path)


def tuner(
    backend: HFBackend, calls: list[int], train: list[tuple[str, str]] = TRAIN, **options: Any
) -> Tuner:
    """A tiny suffix tuner whose evaluations are counted into calls."""
    config = BBTConfig(**{**TINY, **options})
    return Tuner(
        backend, template=TEMPLATE, verbalizer=VERBALIZER, train=train, dev=DEV, config=config,
        on_calls=lambda n, _tokens: calls.append(n),
    )


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"d": 0}, id="d-zero"),
        pytest.param({"popsize": 1}, id="population-of-one"),
        pytest.param({"extra_option": 1}, id="unknown-option"),
        pytest.param({"d": True}, id="bool-for-int"),
        pytest.param({"budget": True, "popsize": 2}, id="bool-budget"),
        pytest.param({"sigma0": True}, id="bool-for-float"),
        pytest.param({"sigma0": math.inf}, id="infinite-sigma"),
        pytest.param({"alpha": math.inf}, id="infinite-alpha"),
        pytest.param({"margin": math.inf}, id="infinite-margin"),
        pytest.param({"sigma0": math.nan}, id="nan-sigma"),
        pytest.param({"d": 10**7}, id="huge-d"),
        pytest.param({"prompt_len": 0}, id="no-prompt"),
        pytest.param({"prompt_len": -5}, id="negative-prompt-len"),
        pytest.param({"prompt_len": 10**6}, id="huge-prompt-len"),
        pytest.param({"deep": "yes"}, id="string-for-bool"),
        pytest.param({"deep": "false"}, id="false-as-a-string"),
        pytest.param({"deep": 1}, id="int-for-bool"),
        pytest.param({"progress": "no"}, id="string-progress"),
        pytest.param({"prompt_len": "7"}, id="string-for-int"),
        pytest.param({"sigma0": "0.5"}, id="string-for-float"),
        pytest.param({"seed": -1}, id="negative-seed"),
        pytest.param({"seed": 2**70}, id="seed-too-big-for-torch"),
        pytest.param({"bounds": (1.0, 2.0)}, id="bounds-without-the-start"),
        pytest.param({"bounds": (0.0, 0.0)}, id="empty-bounds"),
    ],
)
def test_bad_options_are_a_tuning_error_when_the_config_is_built(options: dict[str, Any]) -> None:
    with pytest.raises(TuningError) as caught:
        BBTConfig(**options)
    assert isinstance(caught.value, BlackBoxError)
    assert str(next(iter(options))) in str(caught.value)


def test_edge_values_that_can_run_are_kept() -> None:
    config = BBTConfig(d=10_000, prompt_len=1_000, seed=2**64 - 1, bounds=(0.0, 1.0), popsize=2, budget=2, deep=True, progress=False)
    assert (config.d, config.prompt_len, config.seed, config.bounds, config.deep) == (10_000, 1_000, 2**64 - 1, (0.0, 1.0), True)


def _rewrite_json(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """A damage that rewrites the checkpoint's JSON document."""
    return lambda folder: (folder / "bbt_state.json").write_text(json.dumps(change(json.loads((folder / "bbt_state.json").read_text()))))


def _tensors(folder: Path) -> Path:
    """The tensors file the checkpoint in folder uses."""
    return next(folder.glob("bbt_state*.safetensors"))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated-json": lambda f: (f / "bbt_state.json").write_text((f / "bbt_state.json").read_text()[:40]),
    "json-not-an-object": lambda f: (f / "bbt_state.json").write_text("[1, 2]"),
    "truncated-tensors": lambda f: _tensors(f).write_bytes(_tensors(f).read_bytes()[:40]),
    "missing-tensors": lambda f: _tensors(f).unlink(),
    "missing-field": _rewrite_json(lambda d: {k: v for k, v in d.items() if k != "calls"}),
    "short-fitness": _rewrite_json(lambda d: {**d, "fitness": [f[:2] for f in d["fitness"]]}),
    "nan-fitness": _rewrite_json(lambda d: {**d, "fitness": [[math.nan] * len(f) for f in d["fitness"]]}),
    "counter-not-a-number": _rewrite_json(lambda d: {**d, "calls": "many"}),
    "best-loss-not-a-number": _rewrite_json(lambda d: {**d, "best": {**d["best"], "train_loss": "low"}}),
    "history-not-numbers": _rewrite_json(lambda d: {**d, "generations": [{**g, "best_so_far": "low"} for g in d["generations"]]}),
    "json-nested-too-deep": lambda f: (f / "bbt_state.json").write_text("[" * 100_000 + "]" * 100_000),
    "counter-too-big-for-a-float": _rewrite_json(lambda d: {**d, "tokens": 10**400}),
    "negative-counter": _rewrite_json(lambda d: {**d, "calls": -8}),
    "nan-best-z": lambda f: _tensors(f).write_bytes(
        to_safetensors({**load_file(str(_tensors(f))), "best_z": torch.full((1, TINY["d"]), math.nan, dtype=torch.float64)})
    ),
}


def test_a_damaged_checkpoint_is_a_tuning_error_before_any_call(backend: HFBackend, tmp_path: Path) -> None:
    tuner(backend, [], checkpoint_dir=tmp_path / "good").fit()
    for name, damage in DAMAGES.items():
        folder = tmp_path / name
        folder.mkdir()
        for path in (tmp_path / "good").iterdir():
            (folder / path.name).write_bytes(path.read_bytes())
        damage(folder)
        calls: list[int] = []
        with pytest.raises(TuningError, match="checkpoint"):
            tuner(backend, calls, checkpoint_dir=folder, budget=12).fit()
        assert calls == [], name


def test_a_checkpoint_for_the_same_texts_with_other_labels_is_not_resumed(backend: HFBackend, tmp_path: Path) -> None:
    tuner(backend, [], checkpoint_dir=tmp_path).fit()
    flipped = [(text, "negative" if label == "positive" else "positive") for text, label in TRAIN]
    calls: list[int] = []
    with pytest.raises(TuningError, match="other settings or data"):
        tuner(backend, calls, train=flipped, checkpoint_dir=tmp_path, budget=12).fit()
    assert calls == []


def test_a_crash_while_saving_leaves_the_previous_checkpoint(
    backend: HFBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuner(backend, [], checkpoint_dir=tmp_path, checkpoint_every=1).fit()  # 2 generations
    replace = os.replace

    def crash_before_the_json(source: Any, target: Any) -> None:
        if Path(target).name == "bbt_state.json":
            raise OSError("power cut")
        replace(source, target)

    monkeypatch.setattr(_checkpoint.os, "replace", crash_before_the_json)
    with pytest.raises(OSError, match="power cut"):
        tuner(backend, [], checkpoint_dir=tmp_path, checkpoint_every=1, budget=16).fit()
    monkeypatch.setattr(_checkpoint.os, "replace", replace)
    calls: list[int] = []
    resumed = tuner(backend, calls, checkpoint_dir=tmp_path, budget=16)
    prompt = resumed.fit()
    assert prompt.info.scores["calls"] == 16 and len(resumed.history) == 4
    assert sum(c for c in calls if c == 4) == 8  # only generations 3 and 4 ran again


def test_a_refusal_midway_keeps_every_generation_paid_for(backend: HFBackend, tmp_path: Path) -> None:
    calls: list[int] = []

    def refuse_the_third_generation(n: int, _tokens: int) -> None:
        if sum(c for c in calls if c == 4) == 8 and n == 4:
            raise BudgetExceededError("cap", spent=1.0, reserved=1.0, limit=1.0, scope="total")
        calls.append(n)

    stopped = tuner(backend, calls, checkpoint_dir=tmp_path, budget=16)  # checkpoint_every 10: none due
    stopped.on_calls = refuse_the_third_generation
    with pytest.raises(BudgetExceededError):
        stopped.fit()
    again: list[int] = []
    resumed = tuner(backend, again, checkpoint_dir=tmp_path, budget=16)
    prompt = resumed.fit()
    assert [g.best_loss for g in resumed.history[:2]] == [g.best_loss for g in stopped.history]
    assert sum(c for c in again if c == 4) == 8 and prompt.info.scores["calls"] == 16


def test_a_saved_prompt_with_a_truncated_tensors_file_is_a_tuning_error(tmp_path: Path) -> None:
    SoftPrompt.create(torch.ones(2, 8), model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="prefix").save(tmp_path)
    tensors = tmp_path / "soft_prompt.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(TuningError, match="safetensors"):
        SoftPrompt.load(tmp_path)


def test_a_tuner_refuses_a_config_that_is_not_a_bbtconfig() -> None:
    with pytest.raises(TuningError, match="config must be a BBTConfig, got dict"):
        Tuner(object(), template="{text} It was [MASK].", verbalizer={"1": "great"}, train=[], config={"d": 10})  # type: ignore[arg-type]


def test_a_saved_prompt_whose_description_is_not_utf8_is_a_tuning_error(tmp_path: Path) -> None:
    SoftPrompt.create(torch.ones(2, 8), model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="prefix").save(tmp_path)
    (tmp_path / "soft_prompt.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(TuningError, match="soft_prompt.json"):
        SoftPrompt.load(tmp_path)


def test_a_saved_prompt_whose_description_is_nested_too_deep_is_a_tuning_error(tmp_path: Path) -> None:
    SoftPrompt.create(torch.ones(2, 8), model_id="m", template=TEMPLATE, verbalizer=VERBALIZER, placement="prefix").save(tmp_path)
    (tmp_path / "soft_prompt.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TuningError, match="soft_prompt.json"):
        SoftPrompt.load(tmp_path)


@pytest.mark.parametrize("field", ["embeds", "layers", "z"])
def test_a_prompt_beyond_float32s_range_is_refused_as_it_would_be_kept_infinite(field: str) -> None:
    """The values are kept as float32: float64 ones that overflow it are refused when built, not saved as infinities."""
    tensors = {"embeds": torch.ones(2, 8), "layers": torch.ones(1, 2, 8), "z": torch.ones(2, 3)}
    tensors[field] = torch.full_like(tensors[field], 1e300, dtype=torch.float64)
    fields = {"model_id": "m", "template": TEMPLATE, "verbalizer": VERBALIZER, "placement": "prefix", "d": 3, "config": {"d": 3}}
    with pytest.raises(TuningError, match="finite"):
        SoftPrompt.create(tensors["embeds"], layers=tensors["layers"], z=tensors["z"], **fields)


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        pytest.param("A warm film.", "a list of texts, not one str", id="one-string"),
        pytest.param(["fine", 7], r"texts\[1\] must be a str, got int", id="not-a-string"),
        pytest.param([None], r"texts\[0\] must be a str, got NoneType", id="none"),
    ],
)
def test_classify_refuses_what_is_not_a_list_of_texts(backend: HFBackend, texts: Any, match: str) -> None:
    prompt = SoftPrompt.create(
        torch.zeros(2, 576), model_id=backend.model_id, template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix"
    )
    with pytest.raises(TuningError, match=match):
        prompt.classify(texts, backend)


def test_classify_of_no_texts_is_no_answers(backend: HFBackend) -> None:
    prompt = SoftPrompt.create(
        torch.zeros(2, 576), model_id=backend.model_id, template=TEMPLATE, verbalizer=VERBALIZER, placement="suffix"
    )
    assert prompt.classify([], backend) == []


def test_evaluate_refuses_vectors_of_another_shape_with_a_tuning_error(backend: HFBackend) -> None:
    calls: list[int] = []
    tuned = tuner(backend, calls)
    for vectors in (torch.zeros(3, 5), torch.zeros(576), torch.zeros(1, 1, 3, 576)):
        with pytest.raises(TuningError, match=r"\[2, 576\]"):
            tuned.evaluate(DEV, vectors)
    assert calls == []


def test_score_population_refuses_search_points_of_another_shape_with_a_tuning_error(backend: HFBackend) -> None:
    calls: list[int] = []
    tuned = tuner(backend, calls)
    for z in (torch.zeros(3, 9), torch.zeros(8), torch.zeros(0, 8), torch.zeros(3, 2, 8)):
        with pytest.raises(TuningError, match=r"\[P, 8\]"):
            tuned.score_population(z)
    assert calls == []


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_any_call(backend: HFBackend, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    calls: list[int] = []
    with pytest.raises(TuningError, match="checkpoint_dir"):
        tuner(backend, calls, checkpoint_dir=tmp_path / "taken").fit()
    assert calls == []


def test_a_refusal_without_a_checkpoint_dir_keeps_the_best_prompt_readable(backend: HFBackend) -> None:
    calls: list[int] = []

    def refuse_the_third_generation(n: int, _tokens: int) -> None:
        if sum(c for c in calls if c == 4) == 8 and n == 4:
            raise BudgetExceededError("cap", spent=1.0, reserved=1.0, limit=1.0, scope="total")
        calls.append(n)

    stopped = tuner(backend, calls, budget=16)
    assert stopped.best_prompt is None  # nothing selected before a fit
    stopped.on_calls = refuse_the_third_generation
    with pytest.raises(BudgetExceededError):
        stopped.fit()
    best = stopped.best_prompt
    assert isinstance(best, SoftPrompt) and best.info.scores["calls"] == 8 and "dev_accuracy" in best.info.scores
    assert stopped.evaluate(DEV, best)["accuracy"] == best.info.scores["dev_accuracy"]
    finished = tuner(backend, [], budget=8)
    assert torch.equal(finished.fit().embeds, finished.best_prompt.embeds)  # type: ignore[union-attr]


def test_a_save_cut_between_its_two_files_is_a_tuning_error_at_load_never_a_mismatched_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields: dict[str, Any] = {"model_id": "m", "template": TEMPLATE, "verbalizer": VERBALIZER, "placement": "prefix"}
    SoftPrompt.create(torch.ones(2, 8), name="old", **fields).save(tmp_path / "p")
    (tmp_path / "p" / "notes.txt").write_text("mine")
    replace = os.replace

    def cut_before_the_json(source: Any, target: Any) -> None:
        if Path(target).name == "soft_prompt.json":
            raise OSError("power cut")
        replace(source, target)

    monkeypatch.setattr(os, "replace", cut_before_the_json)
    with pytest.raises(OSError, match="power cut"):
        SoftPrompt.create(torch.full((2, 8), 2.0), name="new", **fields).save(tmp_path / "p")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(TuningError, match="not the one soft_prompt.json was saved with"):
        SoftPrompt.load(tmp_path / "p")  # the new tensors beside the old description: never taken for the old prompt
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["notes.txt", "soft_prompt.json", "soft_prompt.safetensors"]
    SoftPrompt.create(torch.full((2, 8), 2.0), name="new", **fields).save(tmp_path / "p")
    new = SoftPrompt.load(tmp_path / "p")
    assert new.name == "new" and torch.equal(new.embeds, torch.full((2, 8), 2.0))
    assert (tmp_path / "p" / "notes.txt").read_text() == "mine"  # the folder's other files are left alone
    monkeypatch.chdir(tmp_path / "p")
    SoftPrompt.create(torch.full((2, 8), 3.0), name="here", **fields).save(".")
    assert SoftPrompt.load(".").name == "here" and Path.cwd() == tmp_path / "p"
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TuningError, match="it is a file"):
        new.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_checkpoint_is_not_resumed_with_a_saved_p0_whose_values_changed(backend: HFBackend, tmp_path: Path) -> None:
    fields: dict[str, Any] = {"model_id": backend.model_id, "template": TEMPLATE, "verbalizer": VERBALIZER, "placement": "suffix"}
    SoftPrompt.create(torch.zeros(2, 576), **fields).save(tmp_path / "p0")
    tuner(backend, [], checkpoint_dir=tmp_path / "run", p0=tmp_path / "p0").fit()
    SoftPrompt.create(torch.full((2, 576), 0.01), **fields).save(tmp_path / "p0")
    calls: list[int] = []
    with pytest.raises(TuningError, match="other settings or data"):
        tuner(backend, calls, checkpoint_dir=tmp_path / "run", p0=tmp_path / "p0", budget=12).fit()
    assert calls == []
    (tmp_path / "p0").rename(tmp_path / "moved")
    SoftPrompt.create(torch.zeros(2, 576), **fields).save(tmp_path / "copy")
    resumed = tuner(backend, calls, checkpoint_dir=tmp_path / "run", p0=tmp_path / "copy", budget=12)
    assert resumed.fit().info.scores["calls"] == 12 and calls.count(4) == 1  # the same values elsewhere: resumed
