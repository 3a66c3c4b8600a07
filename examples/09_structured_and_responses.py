"""Structured outputs and the Responses API through the SDK, on the embedded model (no API key).

`blackbox_sdk.OpenAI` is an `openai.OpenAI`: openai's own `parse` and `stream` helpers and the
Responses API work as they do on openai's client, and each call is cached, budgeted and logged.

    python examples/09_structured_and_responses.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import openai
from pydantic import BaseModel

from blackbox_sdk import Budget, BudgetExceededError, CallLog, OpenAI

MODEL = "smollm2"


class City(BaseModel):
    """What we want back: a city and its country."""

    name: str
    country: str


def main() -> None:
    work = Path(tempfile.mkdtemp())
    budget = Budget(total_usd=0.05, prices={MODEL: {"input": 100.0, "output": 100.0}}, ledger=work / "ledger.db")
    client = OpenAI(cache=work / "cache", log=work / "calls.db", budget=budget)
    print("an openai.OpenAI:", isinstance(client, openai.OpenAI))

    question = [{"role": "user", "content": "What is the capital of France?"}]
    for _ in range(2):
        completion = client.chat.completions.parse(model=MODEL, messages=question, response_format=City, max_tokens=40, temperature=0)
        city = completion.choices[0].message.parsed
        print(f"parse: {city!r}  cache hit: {completion.blackbox.cache_hit}  cost: ${completion.blackbox.cost_usd:.4f}")

    answer = client.responses.create(model=MODEL, input="Name a fruit. One word.", max_output_tokens=8)
    print(f"responses.create: {answer.output_text!r}  usage: {answer.usage.input_tokens} in, {answer.usage.output_tokens} out")

    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=12) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
    print(f"responses.stream: {len(deltas)} deltas: {''.join(deltas)!r}")

    try:
        client.chat.completions.parse(model=MODEL, messages=question, response_format=City, max_tokens=4000)
    except BudgetExceededError as refused:
        print(f"refused before sending: {refused}")

    client.close()
    records = list(CallLog(work / "calls.db").calls())
    print(f"the call log holds {len(records)} calls; spent ${budget.report().spent_usd:.4f} of $0.05")


if __name__ == "__main__":
    main()
