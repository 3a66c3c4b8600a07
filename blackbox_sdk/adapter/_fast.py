"""Scoring fast on a CPU: the adapter's forward exported to ONNX and run by ONNX Runtime.

The export (torch.onnx's TorchScript exporter, traced on a padded batch so the padding mask stays in
the graph) takes the whole energy model in fp32 (encoder, the adapter's LoRA deltas when it has
them, pooling, head), so its scores equal the torch forward's to about 1e-5 and rank the same;
benchmarks/bench_adapter_speed.py measures it at 2.5x (mpnet) to 4.5x (MiniLM) a plain fp32
transformers forward in bulk, 4.5x to 11x in calls of 8, on 2 loaded cores. The price: the
session holds its own copy of the weights (no base shared with other adapters) and the export
takes a few seconds per load. Texts are scored longest first in batches, as the torch path
does, so each batch pads to similar lengths.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._energy import import_torch

OPSET = 17


def in_length_order(texts: Sequence[str], size: int, run: Callable[[list[str]], list[float]]) -> list[float]:
    """Scores for texts computed by `run` on batches of at most `size`, longest texts first (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    scores = [0.0] * len(texts)
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        for i, value in zip(chunk, run([texts[i] for i in chunk])):
            scores[i] = value
    return scores


def import_onnxruntime() -> Any:
    """onnxruntime (and onnx, which torch.onnx writes with), or an AdapterError that says which extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise AdapterError("fast=True needs onnx and onnxruntime: pip install 'blackbox-sdk[adapter]'") from None
    return onnxruntime


class OnnxScorer:
    """An exported energy model in an ONNX Runtime CPU session: `scorer(texts)` gives the scores (fp32)."""

    def __init__(self, session: Any, tokenizer: Any, max_length: int, batch_size: int) -> None:
        self.session, self.tokenizer, self.max_length, self.batch_size = session, tokenizer, max_length, batch_size

    @classmethod
    def export(cls, model: Any, tokenizer: Any, max_length: int, batch_size: int) -> OnnxScorer:
        """Export `model` (an EnergyModel on the CPU, its LoRA adapter active) and open a session on it."""
        torch = import_torch()
        ort = import_onnxruntime()
        sample = tokenizer(["Q: a question\nA: an answer", "Q: ?\nA: !"], padding=True, return_tensors="pt")
        inputs = (sample["input_ids"], sample["attention_mask"])
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "score": {0: "batch"}}
        was_training = model.training
        model.eval()
        with tempfile.TemporaryDirectory(prefix="blackbox-adapter-onnx-") as folder:
            path = Path(folder) / "adapter.onnx"
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the tracer's notes on shapes and the legacy exporter's deprecation
                    torch.onnx.export(
                        model, inputs, str(path), input_names=["input_ids", "attention_mask"], output_names=["score"],
                        dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                    )
            finally:
                model.train(was_training)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, tokenizer, max_length, batch_size)

    def run(self, texts: list[str]) -> list[float]:
        """Scores of one batch of rendered texts."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feed = {"input_ids": batch["input_ids"].astype("int64"), "attention_mask": batch["attention_mask"].astype("int64")}
        return [float(x) for x in self.session.run(["score"], feed)[0]]

    def __call__(self, texts: Sequence[str]) -> list[float]:
        """Scores of rendered texts, in batches, longest first."""
        return in_length_order(texts, self.batch_size, self.run)
