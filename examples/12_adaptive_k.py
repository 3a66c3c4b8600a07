"""Adaptive K: sample in rounds and stop once the reranker's pick is clear (`rerank_confidence=`).

The black box is SmolLM2-135M-Instruct behind llama.cpp's server (started here), the reranker the
shipped capitals adapter. The same questions are asked with a fixed K (`rerank_n=8`) and with
adaptive K (`rerank_n=16, rerank_confidence=0.6`, the recipe measured in docs/adapter.md): 1 sample
first, then 2, 4, 8 and 16, stopping as soon as the pick holds 60% of the softmax over the scores and
one unsampled answer scored 0; and with
`rerank_confidence="auto"`, the confidence chosen for this adapter on its validation questions when
it was trained (its card says which; none for this one, so it samples all 8). Each round
is budgeted and settled on its own, so the budget's spend is what was really sent. Needs the
`adapter` and `server` extras (`scripts/setup.sh` installs everything).
Run: python examples/12_adaptive_k.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from blackbox_sdk import Budget, OpenAI
from blackbox_sdk.adapter import Adapter
from blackbox_sdk.local import LlamaServer

ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "capitals"
SHOTS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
QUESTIONS = ["What is the capital of Japan?", "What is the capital of Kenya?", "What is the capital of Peru?", "What is the capital of Norway?"]
PRICES = {"smollm2": {"input": 0.15, "output": 0.60}}  # pretend prices, so that the budget shows what each way spends


def run(base_url: str, **options: object) -> None:
    """Ask every question; print each pick, how many samples it took, and what the budget settled."""
    budget = Budget(total_usd=1.0, prices=PRICES)
    client = OpenAI(base_url=base_url, api_key="local", reranker=ADAPTER, budget=budget, **{"rerank_n": 8, **options})
    for question in QUESTIONS:
        reply = client.chat.completions.create(
            model="smollm2", messages=[*SHOTS, {"role": "user", "content": question}], temperature=0.9, max_tokens=16, stop=["\n"], seed=7
        )
        print(f"  {len(reply.blackbox.candidates or []):>2} samples  {reply.usage.total_tokens:>4} tokens  {reply.choices[0].message.content}")
    print(f"  spent ${budget.spent():.6f}")


def main() -> None:
    """The same questions with a fixed K and with adaptive K."""
    torch.set_num_threads(2)
    with LlamaServer() as base_url:
        print("fixed K = 8:")
        run(base_url)
        print("adaptive K (rerank_confidence=0.6, at most 16):")
        run(base_url, rerank_n=16, rerank_confidence=0.6)
        chosen = Adapter.load(ADAPTER, device="cpu").config.confidence
        print(f"adaptive K (rerank_confidence='auto': this adapter's own, {chosen if chosen is not None else 'none, so all 8'}):")
        run(base_url, rerank_confidence="auto")


if __name__ == "__main__":
    main()
