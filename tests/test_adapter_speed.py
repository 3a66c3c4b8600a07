"""Fast scoring: ONNX Runtime (`fast=True`, `fast="int8"`) and CPU bf16 rank real held-out candidates as the fp32 torch forward does."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blackbox_sdk._exceptions import AdapterError
from blackbox_sdk.adapter import Adapter, AdapterConfig
from blackbox_sdk.adapter._fast import in_length_order

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_adapter_speed import CANDIDATES, candidates, spearman, top1_agreement

COMPARISON = ROOT / "adapters" / "comparison"  # the shipped MiniLM adapter (a full-weight v1 folder)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The benchmark's held-out candidates: 16 comparison questions, 8 answers each, rendered."""
    torch.set_num_threads(1)
    config = Adapter.load(COMPARISON, device="cpu").config
    return [config.render(q, a) for q, a in candidates("comparison", 16)]


@pytest.fixture(scope="module")
def reference(texts: list[str]) -> list[float]:
    """fp32 torch scores of those candidates."""
    return Adapter.load(COMPARISON, device="cpu").score_texts(texts)


def test_fast_scoring_through_onnxruntime_ranks_as_fp32(texts: list[str], reference: list[float]) -> None:
    fast = Adapter.load(COMPARISON, device="cpu", fast=True)
    assert fast._scorer is not None
    scores = fast.score_texts(texts)
    assert spearman(reference, scores) >= 0.999
    assert top1_agreement(reference, scores) == 1.0
    assert max(abs(a - b) for a, b in zip(reference, scores)) < 1e-3
    one_by_one = [fast.score_texts([t])[0] for t in texts[:CANDIDATES]]  # batches without padding
    assert one_by_one == pytest.approx(reference[:CANDIDATES], abs=1e-3)
    question_scores = fast.score(texts[0].split("\n")[0][3:], ["57 is larger.", "24 is larger."])
    assert len(question_scores) == 2 and question_scores[0] != question_scores[1]


def random_lora_folder(tmp_path: Path, seed: int) -> Path:
    """A saved rank-4 LoRA adapter with random deltas and head (a fresh one's B is zero: it would score as its base)."""
    adapter = Adapter.create(AdapterConfig(lora_rank=4, trainable_layers=2), seed=seed, device="cpu")
    with torch.no_grad():
        for name, param in adapter.model.named_parameters():
            if ".lora_B." in name or name.startswith("head."):
                param.normal_(0, 0.1 if ".lora_B." in name else 0.5)
    folder = adapter.save(tmp_path / "lora")
    return folder


def test_fast_scoring_of_a_lora_adapter_on_a_shared_base_matches_its_torch_scores(texts: list[str], tmp_path: Path) -> None:
    folder = random_lora_folder(tmp_path, seed=3)
    fast = Adapter.load(folder, device="cpu", fast=True)
    slow = Adapter.load(folder, device="cpu")
    assert fast.base is slow.base  # the export leaves the shared base as it was
    expected = slow.score_texts(texts[:CANDIDATES * 2])
    assert fast.score_texts(texts[:CANDIDATES * 2]) == pytest.approx(expected, abs=1e-3)
    assert spearman(expected, fast.score_texts(texts[:CANDIDATES * 2])) >= 0.999


def test_int8_weights_rank_as_fp32(texts: list[str], reference: list[float]) -> None:
    fast = Adapter.load(COMPARISON, device="cpu", fast="int8")
    assert fast.fast == "int8" and fast._scorer is not None
    scores = fast.score_texts(texts)
    assert max(abs(a - b) for a, b in zip(reference, scores)) > 1e-3  # the weights really are int8
    assert spearman(reference, scores) >= 0.99
    assert top1_agreement(reference, scores) >= 0.9


def test_int8_weights_of_a_lora_adapter_leave_its_shared_base_as_it_was(texts: list[str], tmp_path: Path) -> None:
    folder = random_lora_folder(tmp_path, seed=5)
    before = Adapter.load(folder, device="cpu").score_texts(texts[:CANDIDATES * 2])
    fast = Adapter.load(folder, device="cpu", fast="int8")
    after = Adapter.load(folder, device="cpu")
    assert fast.base is after.base
    assert after.score_texts(texts[:CANDIDATES * 2]) == pytest.approx(before, abs=1e-5)  # merged into a copy, not the base
    assert spearman(before, fast.score_texts(texts[:CANDIDATES * 2])) >= 0.9  # random deltas: scores close together


def test_the_int8_quantizer_leaves_the_processes_logging_as_it_was() -> None:
    code = (
        "import logging\n"
        "from blackbox_sdk.adapter._fast import import_quantizer\n"
        "import_quantizer()\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), logging.getLevelName(root.level))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "WARNING"]  # onnxruntime's import would leave a handler at INFO


@pytest.mark.parametrize("fast", ["int4", "fp32", 1, None])
def test_an_unknown_fast_mode_is_refused_before_loading(fast: object, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="fast must be False, True"):
        Adapter.load(tmp_path / "no such folder", device="cpu", fast=fast)  # type: ignore[arg-type]


def test_each_distinct_text_is_scored_once_and_every_copy_gets_its_score() -> None:
    batches: list[list[str]] = []

    def run(batch: list[str]) -> list[float]:
        batches.append(batch)
        return [float(len(t)) for t in batch]

    texts = ["bb", "a", "bb", "ccc", "a", "bb"]
    assert in_length_order(texts, 2, run) == [2.0, 1.0, 2.0, 3.0, 1.0, 2.0]
    assert batches == [["ccc", "bb"], ["a"]]  # longest first, each text once


def test_repeated_answers_score_as_they_do_alone(texts: list[str]) -> None:
    fast = Adapter.load(COMPARISON, device="cpu", fast=True)
    question = texts[0].split("\n")[0][3:]
    alone = fast.score(question, ["57 is larger.", "24 is larger."])
    repeated = fast.score(question, ["57 is larger.", "24 is larger.", "57 is larger.", "57 is larger."])
    consensus = fast.config.consensus * math.log(3)
    assert repeated[1] == pytest.approx(alone[1], abs=1e-5)
    assert repeated[0] == repeated[2] == repeated[3] == pytest.approx(alone[0] + consensus, abs=1e-5)


def test_bf16_scoring_on_the_cpu_ranks_close_to_fp32(texts: list[str], reference: list[float]) -> None:
    bf16 = Adapter.load(COMPARISON, device="cpu", precision="bf16")
    scores = bf16.score_texts(texts)
    assert scores != reference  # it did run in bf16
    assert spearman(reference, scores) >= 0.97
    assert top1_agreement(reference, scores) >= 0.8


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(AdapterError, match="precision"):
        Adapter.load(COMPARISON, device="cpu", precision="int4")


def test_fast_without_onnx_installed_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(AdapterError, match=r"blackbox-sdk\[adapter\]"):
        Adapter.load(COMPARISON, device="cpu", fast=True)
