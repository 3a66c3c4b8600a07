"""Small LoRA adapters on one shared encoder, hot reload, and fast CPU scoring.

Trains two LoRA adapters (peft, rank 8, on all-MiniLM-L6-v2) in seconds on a few capitals, saves
them (about 1.3 MB each), loads both on one base, reranks a real call of SmolLM2-135M-Instruct
behind llama.cpp's server (started here) with one of them, re-trains that adapter into the same
folder while the client runs (the client picks it up without a restart), and scores through ONNX
Runtime (`fast=True`, and `fast="int8"` with the encoder's weights in int8). Needs the `adapter`
and `server` extras.
Run: python examples/13_adapter_lora.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from blackbox_sdk import OpenAI
from blackbox_sdk.adapter import Adapter, AdapterConfig, TrainConfig, build_groups, train
from blackbox_sdk.local import LlamaServer

CAPITALS = {"Kenya": "Nairobi", "France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Chile": "Santiago", "Egypt": "Cairo",
            "Spain": "Madrid", "Italy": "Rome", "Norway": "Oslo", "Cuba": "Havana", "Mali": "Bamako", "Ghana": "Accra"}
LORA = AdapterConfig(lora_rank=8, trainable_layers=-1)
SHOTS = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "The capital of France is Paris."}]


def trained(epochs: int, seed: int) -> Adapter:
    """A LoRA adapter trained to prefer each country's own capital over the others'."""
    names = sorted(CAPITALS)
    groups = [
        group
        for i, country in enumerate(names)
        for group in build_groups(
            f"What is the capital of {country}?",
            [f"The capital of {country} is {CAPITALS[country]}."],
            [f"The capital of {country} is {CAPITALS[names[(i + k) % len(names)]]}." for k in (1, 2, 3)],
        )
    ]
    adapter = Adapter.create(LORA, seed=seed, device="cpu")
    train(adapter, groups, TrainConfig(epochs=epochs, lr=2e-3, groups_per_batch=4, warmup_steps=1, progress=False, seed=seed))
    return adapter


def size_mb(folder: Path) -> float:
    """The folder's size on disk in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    """Train, share, rerank, hot-reload, score fast."""
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="lora-adapters-"))
    first, second = trained(1, seed=0).save(root / "capitals"), trained(3, seed=1).save(root / "capitals-v2")
    print(f"saved: {first.name} {size_mb(first):.2f} MB, {second.name} {size_mb(second):.2f} MB (peft LoRA deltas + head)")
    a, b = Adapter.load(first, device="cpu"), Adapter.load(second, device="cpu")
    print(f"two adapters, one base encoder in memory: {a.model.encoder is b.model.encoder}")

    question = "What is the capital of Kenya?"
    answers = ["The capital of Kenya is Nairobi.", "The capital of Kenya is Mombasa."]
    with LlamaServer() as base_url:
        client = OpenAI(base_url=base_url, api_key="local", reranker=first, rerank_n=4)
        reply = client.chat.completions.create(
            model="smollm2", messages=[*SHOTS, {"role": "user", "content": question}], temperature=0.9, max_tokens=16, stop=["\n"]
        )
        print(f"reranked pick: {reply.choices[0].message.content!r} among {reply.blackbox.candidates}")
        print(f"scores before re-training: {[round(s, 3) for s in client.options.reranker(question, answers)]}")
        trained(3, seed=1).save(first)  # re-trained into the same folder: written beside it, renamed into place
        time.sleep(1.1)  # the client checks the folder at most once a second
        print(f"scores after (no restart):  {[round(s, 3) for s in client.options.reranker(question, answers)]}")
        client.close()

    cities = ["Nairobi", "Mombasa", "Kisumu", "Nakuru", "Eldoret", "Thika", "Malindi", "Kitale"]
    eight = [f"The capital of Kenya is {city}." for city in cities]
    for mode in (True, "int8"):  # fp32 through ONNX Runtime (the torch scores), or its weights in int8 (the same ranking)
        fast = Adapter.load(first, device="cpu", fast=mode)
        started = time.perf_counter()
        scores = fast.score(question, eight)  # a repeated answer would be scored once
        rate = len(eight) / (time.perf_counter() - started)
        print(f"fast={mode!r}: {rate:.0f} candidates/s, best {eight[max(range(8), key=scores.__getitem__)]!r}")

if __name__ == "__main__":
    main()
