"""Train a BBox-Adapter online against a black box, then answer with its beam search.

One small round of the paper's loop: sample 4 answers per training question through the SDK
client (cached and logged), label them with a ground-truth checker, train the adapter on the
references and accepted answers against the rejected ones, and evaluate on held-out questions.
The run is resumable: run it again and it picks up after the last finished round. The trained
adapter then guides a sentence-level beam search. Needs the `adapter` and `server` extras.
Run: python examples/06_adapter_train_online.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from blackbox_sdk import OpenAI
from blackbox_sdk.adapter import (
    Adapter,
    AdapterConfig,
    OnlineConfig,
    OnlineQuestion,
    TrainConfig,
    beam_search,
    client_answer_sampler,
    client_sampler,
    online_train,
)
from blackbox_sdk.local import LlamaServer

SHOTS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
TRAIN = {"Australia": "Canberra", "Pakistan": "Islamabad", "Canada": "Ottawa", "Turkey": "Ankara", "Morocco": "Rabat", "Brazil": "Brasilia"}
HELD_OUT = {"New Zealand": "Wellington", "Nigeria": "Abuja"}


def question(country: str, city: str, *, reference: bool) -> OnlineQuestion:
    """A capitals question; training questions carry a reference answer (a positive)."""
    text = f"What is the capital of {country}?"
    return OnlineQuestion(question=text, gold=city, reference=f"The capital of {country} is {city}." if reference else None)


def names_the_capital(item: OnlineQuestion, answer: str) -> bool:
    """The ground-truth checker used as the feedback function."""
    return str(item.gold).lower() in answer.lower()


def main() -> None:
    """Train for one round, print the report, then beam-search one held-out question."""
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bbox-adapter-"))
    with LlamaServer() as base_url:
        client = OpenAI(base_url=base_url, api_key="local", cache=work / "cache", log=work / "calls.db")
        report = online_train(
            client_answer_sampler(client, "smollm2", messages=SHOTS, temperature=0.9, max_tokens=16, stop=["\n"]),
            [question(c, city, reference=True) for c, city in TRAIN.items()],
            names_the_capital,
            work / "adapter",
            eval_items=[question(c, city, reference=False) for c, city in HELD_OUT.items()],
            config=OnlineConfig(
                rounds=1,
                samples=4,
                epochs_per_round=2,
                adapter=AdapterConfig(trainable_layers=1),
                train=TrainConfig(lr=1e-4, progress=False),
            ),
        )
        row = report.rounds[-1]
        print("baseline on held-out:", json.dumps(report.baseline))
        print(
            f"round {row['round']}: {row['samples']} samples, {row['prompt_tokens'] + row['completion_tokens']} tokens, "
            f"${row['cost_usd']:.4f}, {row['groups']} ranking groups, trained in {row.get('train_seconds', 0)} s, "
            f"held-out rerank accuracy {row['rerank_accuracy']:.2f} (majority vote {row['majority_accuracy']:.2f})"
        )
        print("verdict:", report.verdict.summary if report.verdict else "not judged (no validation questions)")
        print("adapter saved to", report.adapter_path, "with", sorted(p.name for p in Path(report.adapter_path).iterdir()))
        adapter = Adapter.load(report.adapter_path)
        sampler = client_sampler(client, "smollm2", mode="completions", messages=SHOTS, temperature=0.9, max_tokens=16)
        result = beam_search("What is the capital of New Zealand?", sampler, adapter.score, beam=2, candidates=3, max_steps=2, answer_marker=None)
        print(f"beam search: {result.text!r} (score {result.score:.3f}, {result.steps} steps, {result.candidates_scored} prefixes scored)")


if __name__ == "__main__":
    main()
