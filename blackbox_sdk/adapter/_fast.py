"""Scoring fast on a CPU: the adapter's forward exported to ONNX and run by ONNX Runtime.

The export (torch.onnx's TorchScript exporter, traced on a padded batch so the padding mask stays in
the graph) takes the whole energy model in fp32 (encoder, the adapter's LoRA deltas when it has
them, pooling, head), so its scores equal the torch forward's to about 1e-5 and rank the same;
benchmarks/bench_adapter_speed.py measures it at 1.9x (mpnet) to 5x (MiniLM) a plain fp32
transformers forward in bulk, 3.3x to 11x in calls of 8, on 2 loaded cores. The price: the
session holds its own copy of the weights (no base shared with other adapters) and the export
takes a few seconds per load. Texts are scored longest first in batches, as the torch path
does, so each batch pads to similar lengths. A LoRA adapter is exported with its deltas merged
into a copy of its layers (the same function, fewer matrix products).

`fast="int8"` also stores each weight matrix in int8 (blocks of `INT8_BLOCK` along the input, one
scale each; ONNX Runtime's MatMulNBits at accuracy level 4, which quantizes the activations in the
same blocks): about 1.7x fp32 ONNX Runtime on all-mpnet-base-v2 (3.3x to 5.5x plain fp32) with
Spearman 0.998 against fp32, little faster on MiniLM. Dynamic int8 with one scale per activation
tensor reorders the candidates (Spearman 0.86 to 0.93 on mpnet), so it is not offered.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._exceptions import AdapterError
from ._energy import import_torch

OPSET = 17
INT8_BLOCK = 256  # chosen on the capitals (mpnet) and comparison (MiniLM) candidates, docs/adapter.md "Fast scoring"


def in_length_order(texts: Sequence[str], size: int, run: Callable[[list[str]], list[float]]) -> list[float]:
    """Scores for texts computed by `run` on batches of at most `size`, longest texts first (less
    padding), each distinct text once (sampled answers repeat; a text's score depends on it alone)."""
    distinct = sorted(dict.fromkeys(texts), key=len, reverse=True)
    scores: dict[str, float] = {}
    for start in range(0, len(distinct), size):
        chunk = distinct[start : start + size]
        scores.update(zip(chunk, run(chunk)))
    return [scores[text] for text in texts]


def import_onnxruntime() -> Any:
    """onnxruntime (and onnx, which torch.onnx writes with), or an AdapterError that says which extra to install."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise AdapterError("fast=True needs onnx and onnxruntime: pip install 'blackbox-sdk[adapter]'") from None
    return onnxruntime


def check_fast(mode: object) -> None:
    """Refuse a `fast=` value that is none of False, True and "int8", before anything is exported."""
    if mode is not False and mode is not True and mode != "int8":
        raise AdapterError(f"fast must be False, True (fp32 ONNX Runtime) or 'int8', not {mode!r}")


def merged_copy(model: Any, lora_name: str | None) -> Any:
    """The model to export: itself, or for a LoRA adapter a copy with its deltas merged into the layers
    (the shared base and its other adapters stay as they were)."""
    if lora_name is None:
        return model
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on the adapters it unloads
        twin.encoder = twin.encoder.merge_and_unload(adapter_names=[lora_name])
    return twin


def import_quantizer() -> Any:
    """ONNX Runtime's MatMulNBitsQuantizer, with the root logger left as it was (importing it calls
    `logging.basicConfig(level=INFO)`, which would print every INFO record of the user's process)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:
        raise AdapterError("fast='int8' needs onnx-ir and onnxruntime >= 1.22: pip install 'blackbox-sdk[adapter]'") from None
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    return MatMulNBitsQuantizer


def int8_weights(path: Path) -> Path:
    """The ONNX model at `path` with every encoder matrix product's weights in blockwise int8 (the head stays fp32)."""
    import onnx

    quantizer_class = import_quantizer()
    model = onnx.load(str(path))
    head = [n.name for n in model.graph.node if n.name.startswith("/head/")]
    quantizer = quantizer_class(model, bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4, nodes_to_exclude=head)
    quantizer.process()
    out = path.with_name("adapter-int8.onnx")
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


class OnnxScorer:
    """An exported energy model in an ONNX Runtime CPU session: `scorer(texts)` gives the scores (fp32)."""

    def __init__(self, session: Any, tokenizer: Any, max_length: int, batch_size: int) -> None:
        self.session, self.tokenizer, self.max_length, self.batch_size = session, tokenizer, max_length, batch_size

    @classmethod
    def export(
        cls, model: Any, tokenizer: Any, max_length: int, batch_size: int, *, lora_name: str | None = None, int8: bool = False
    ) -> OnnxScorer:
        """Export `model` (an EnergyModel on the CPU; `lora_name` its LoRA adapter, merged for the export)
        and open a session on it; `int8` stores the encoder's weights in blockwise int8."""
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
                        merged_copy(model, lora_name), inputs, str(path), input_names=["input_ids", "attention_mask"],
                        output_names=["score"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                    )
            finally:
                model.train(was_training)
            if int8:
                path = int8_weights(path)
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
