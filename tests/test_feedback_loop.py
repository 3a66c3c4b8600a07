"""The feedback loop end to end on the real llama.cpp server, as examples/feedback_loop.py runs it.

An app logs calls with the reranker off (K samples each), users' feedback arrives through
`client.feedback`, `blackbox-sdk adapter train --log calls.db` trains a LoRA adapter, a client
with `reranker=folder` reranks, more feedback arrives, the folder is re-trained in place and the
same client hot-reloads it; held-out questions (never given feedback) are judged after each training
(reported here; benchmarks/bench_feedback_loop.py carries the held-out claim over eight runs).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from blackbox_sdk.adapter import Adapter, evaluate, groups_from_log, read_log
from blackbox_sdk.call_log import CallLog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_feedback_loop import example  # examples/feedback_loop.py as a module: the test runs the example's own loop

TRAIN, HELD_OUT, SAMPLES = 40, 24, 8


@pytest.fixture(scope="module")
def loop(llama_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Any]:
    """One run of the whole loop (about 3 minutes on 2 cores), shared by the assertions below."""
    module = example()
    settings = module.LoopSettings(train=TRAIN, held_out=HELD_OUT, samples=SAMPLES, epochs=4, seed=0, progress=False)
    return module, module.run_loop(llama_server, tmp_path_factory.mktemp("loop"), settings)


def held_out_questions(module: ModuleType) -> set[str]:
    """The texts of the questions the loop holds out (seed 0)."""
    return {q.text for q in module.questions(0, HELD_OUT + TRAIN)[:HELD_OUT]}


def test_the_log_holds_every_call_its_candidates_and_the_users_feedback(loop: tuple[ModuleType, Any]) -> None:
    module, result = loop
    records = read_log(result.log)
    assert len(records) == TRAIN + 2 * HELD_OUT  # the training questions once, the held-out ones after each training
    rated = [r for r in records if r["feedback"]]
    assert len(rated) == TRAIN and all(len(r["candidates"]) == SAMPLES for r in records)
    plain = [r for r in rated if r["scores"] is None]
    assert len(plain) == TRAIN // 2 and all(r["chosen"] == list(range(SAMPLES)) for r in plain)  # reranker off: n=K
    asked = {q.text: q for q in module.questions(0, HELD_OUT + TRAIN)}
    for record in rated:
        (given,) = record["feedback"]
        question, shown = asked[asked_in(record)], record["candidates"][record["chosen"][0]]
        assert given["label"] == ("correct" if module.is_right(question, shown) else "incorrect")
        assert given["candidate"] == record["chosen"][0] and (given["preferred"] is None) != (given["reference"] is None)
        if given["preferred"] is not None:
            assert module.is_right(question, record["candidates"][given["preferred"]])
        else:
            assert given["reference"] == question.reference and not any(module.is_right(question, c) for c in record["candidates"])
    assert not held_out_questions(module) & {asked_in(r) for r in rated}
    with contextlib.closing(CallLog(result.log)) as log:
        assert log.stats()["feedback"] == TRAIN


def asked_in(record: dict[str, Any]) -> str:
    """The question a logged call asked: its last message."""
    return str(record["request"]["messages"][-1]["content"])


def test_training_reads_the_feedback_and_never_a_held_out_question(loop: tuple[ModuleType, Any]) -> None:
    module, result = loop
    groups = groups_from_log(read_log(result.log))
    questions = {g.question for g in groups}
    assert questions, "the trainer found no judged question in the client's own log"
    assert not questions & held_out_questions(module)
    assert len(questions) <= TRAIN
    first, second = result.trainings
    assert first["calls"] == TRAIN // 2 and second["calls"] == TRAIN + HELD_OUT  # each training read the log as it stood
    assert first["revision"] != second["revision"]


def test_the_adapter_folder_has_its_card_curve_and_metrics(loop: tuple[ModuleType, Any]) -> None:
    _, result = loop
    folder = result.adapter
    assert {"README.md", "adapter_config.json", "adapter.safetensors", "curve.png", "metrics.json", "lora"} <= {p.name for p in folder.iterdir()}
    assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calls.db" in (folder / "README.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["calls"] == TRAIN + HELD_OUT and 0 <= metrics["top1_accuracy"] <= 1
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["version"] == 2 and config["config"]["lora_rank"] == 8  # a LoRA folder of a few MB
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 5_000_000


def test_the_running_client_reloads_the_retrained_folder_and_reranks_with_it(loop: tuple[ModuleType, Any]) -> None:
    module, result = loop
    before, after = result.passes
    adapter = Adapter.load(result.adapter)  # the re-trained folder, loaded fresh
    for old, new in zip(before, after, strict=True):
        assert new["candidates"] == old["candidates"]  # the cache gave both passes the same samples
        assert new["scores"] == pytest.approx(adapter.score(new["question"], new["candidates"]), abs=1e-3)
        best = max(range(SAMPLES), key=lambda i: new["scores"][i])
        assert module.answer_given(new["pick"]) == module.answer_given(new["candidates"][best])
    assert any(old["scores"] != pytest.approx(new["scores"], abs=1e-3) for old, new in zip(before, after))


def test_held_out_accuracy_is_measured_on_the_same_samples(loop: tuple[ModuleType, Any]) -> None:
    module, result = loop
    first, second = (module.summary(rows) for rows in result.passes)
    print("held-out accuracy after each training:", first, second)
    assert first["first"] == second["first"] and first["majority"] == second["majority"]  # baselines: the same samples
    for accuracy in (first, second):
        assert 0 <= accuracy["first"] <= accuracy["oracle"] and accuracy["adapter"] <= accuracy["oracle"] <= 1


def test_the_retrained_adapter_learned_what_the_users_said(loop: tuple[ModuleType, Any]) -> None:
    # In sample: the ranking groups the log's feedback makes (a fifth of them kept out of training for
    # the trainer's own check). Over twelve runs of the loop (the benchmark's eight seeds, four more
    # of seed 0, one in a fresh-clone CI run) the re-trained adapter ordered 0.84 to 1.0 of their pairs, 0.24 to
    # 0.55 more than an untrained adapter (0.45 to 0.67). Held-out accuracy is printed above, not
    # asserted: one run judges 24 questions, too few to rank the methods every time (a CI run of seed
    # 0 put the adapter at 0.417 against a 0.49 share of right samples);
    # benchmarks/bench_feedback_loop.py judges it over eight runs (docs/adapter.md).
    _, result = loop
    groups = groups_from_log(read_log(result.log))
    trained = Adapter.load(result.adapter)
    before, after = evaluate(Adapter.create(trained.config, seed=0, device="cpu"), groups), evaluate(trained, groups)
    assert after.groups == before.groups >= TRAIN // 2
    assert after.pair_accuracy >= 0.75 and after.pair_accuracy >= before.pair_accuracy + 0.15
