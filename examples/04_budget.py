"""Example 4: hard budgets used directly (what the client does around every call that isn't a cache hit).

Run it:  python examples/04_budget.py [--ledger FILE]

It counts a chat prompt's tokens, reserves the worst case under a $0.02 cap, settles the real
cost, shows a refusal (nothing would be sent), a call shrunk to fit under policy="shrink", a
missing price, and the report. No network and no model: the usage figures are written inline,
the way a response's `usage` would arrive. Pass --ledger to keep the ledger between runs and
share it with other processes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from blackbox_sdk import BudgetExceededError, PriceMissingError
from blackbox_sdk.budget import Budget, count_chat_tokens

MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Why is the sky blue?"},
]


def demo(ledger: Path) -> None:
    """Build a budget on `ledger`, then show a settled call, a refusal, a shrink, a missing price and the report."""
    budget = Budget(total_usd=0.02, per_key_usd=0.015, ledger=ledger, key="demo-tenant")
    prompt = count_chat_tokens(MESSAGES, MODEL)
    print(f"prompt: {prompt.tokens} tokens by {prompt.method} (exact={prompt.exact})")
    price = budget.price_for(MODEL)
    print(f"{MODEL}: {price} USD per million tokens (table as of {budget.price_table.as_of})")

    held = budget.reserve(model=MODEL, prompt_tokens=prompt, max_output_tokens=200, n=2)
    print(f"reserved ${held.worst_case_usd:.6f} for n={held.n} x {held.max_output_tokens} output tokens")
    cost = budget.settle(held, prompt_tokens=prompt.tokens, completion_tokens=31)  # as the response's usage says
    print(f"settled ${cost:.6f}; the rest of the reservation is free again")

    try:
        budget.reserve(model=MODEL, prompt_tokens=prompt, max_output_tokens=20_000, n=2)
    except BudgetExceededError as error:
        print(
            f"refused ({error.scope}): spent ${error.spent:.6f}, reserved ${error.reserved:.6f}, "
            f"limit ${error.limit:.6f}; nothing sent"
        )

    shrinking = Budget(total_usd=0.02, per_key_usd=0.015, ledger=ledger, key="demo-tenant", policy="shrink")
    granted = shrinking.reserve(model=MODEL, prompt_tokens=prompt, max_output_tokens=20_000, n=2)
    print(
        f"shrink: asked n=2 x 20000 tokens, granted n={granted.n} x {granted.max_output_tokens} "
        f"(${granted.worst_case_usd:.6f})"
    )
    shrinking.release(granted)  # the call failed: give the reservation back

    try:
        budget.reserve(model="my-finetune", prompt_tokens=10)
    except PriceMissingError as error:
        print(f"missing price: {error}")

    report = budget.report()
    print(f"report: spent ${report.spent_usd:.6f} over {report.calls} call(s), by key {report.by_key}")
    for cap in report.caps:
        print(
            f"  {cap.scope}{f' ({cap.value})' if cap.value else ''}: ${cap.remaining_usd:.6f} of ${cap.limit_usd} left"
        )
    print(f"ledger: {budget.ledger_path}")


def main() -> None:
    """Run the demo on the given ledger, or on a temporary one removed afterwards."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ledger", type=Path, help="SQLite ledger file (default: a temporary one)")
    ledger = parser.parse_args().ledger
    if ledger is not None:
        demo(ledger)
        return
    with tempfile.TemporaryDirectory(prefix="blackbox-example-") as folder:
        demo(Path(folder) / "ledger.sqlite3")


if __name__ == "__main__":
    main()
