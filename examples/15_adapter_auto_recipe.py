"""Choose the adapter's recipe on your own questions: train each named recipe, keep the best on validation.

A new task is none of the benchmark's, so which encoder suits it (MiniLM-L6 or all-mpnet-base-v2)
cannot be known by its name. `online_train_auto` runs the online rounds once per recipe, each
into `<out>/recipes/<name>/`, judges each on the quarter of the training questions it kept out of
training, and copies the best to `<out>`. The client's cache makes the recipes share their
samples: only the first pays for them. Here the two named recipes run scaled down (one round of
4 samples, one epoch) so the example takes a minute; `online_train_auto(...)` without `recipes=`
runs all of `RECIPES` at full size. Needs the `adapter` and `server` extras.
Run: python examples/15_adapter_auto_recipe.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from blackbox_sdk import OpenAI
from blackbox_sdk.adapter import RECIPES, OnlineQuestion, client_answer_sampler, online_train_auto
from blackbox_sdk.local import LlamaServer

SHOTS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
CAPITALS = {
    "Australia": "Canberra", "Pakistan": "Islamabad", "Canada": "Ottawa", "Turkey": "Ankara", "Morocco": "Rabat",
    "Brazil": "Brasilia", "Nigeria": "Abuja", "Switzerland": "Bern", "Vietnam": "Hanoi", "Kenya": "Nairobi",
    "Chile": "Santiago", "Egypt": "Cairo",
}  # fmt: skip


def names_the_capital(item: OnlineQuestion, answer: str) -> bool:
    """The ground-truth checker used as the feedback function."""
    return str(item.gold).lower() in answer.lower()


def main() -> None:
    """Train two recipes scaled down, print what each scored on validation and which was kept, then rerank with it."""
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bbox-auto-"))
    items = [
        OnlineQuestion(question=f"What is the capital of {c}?", reference=f"The capital of {c} is {city}.", gold=city)
        for c, city in CAPITALS.items()
    ]
    grid = {name: RECIPES[name].config(rounds=1, samples=4, epochs_per_round=1) for name in ("minilm-lora", "mpnet-lora")}
    with LlamaServer() as base_url:
        client = OpenAI(base_url=base_url, api_key="local", cache=work / "cache", log=work / "calls.db")
        sampler = client_answer_sampler(client, "smollm2", messages=SHOTS, temperature=0.9, max_tokens=16, stop=["\n"])
        choice = online_train_auto(sampler, items, names_the_capital, work / "adapter", recipes=grid)
        for name, accuracy in choice.validation.items():
            print(f"{name}: validation accuracy {accuracy:.2f}, {choice.reports[name].rounds[-1]['samples']} samples")
        print(f"kept {choice.chosen} in {choice.adapter_path}; its verdict: {choice.report.verdict.summary if choice.report.verdict else '-'}")
        reranking = client.with_options(reranker=choice.adapter_path, rerank_n=4)
        answer = reranking.chat.completions.create(
            model="smollm2", messages=[*SHOTS, {"role": "user", "content": "What is the capital of New Zealand?"}], max_tokens=16, stop=["\n"]
        )
        print("reranked answer:", answer.choices[0].message.content)


if __name__ == "__main__":
    main()
