"""Example 14: two "hosts" with a call log each share one budget ledger; each dies after the ledger
charged a call and before its log recorded it, and each log is repaired with exactly its own lost call.

Run it:  python examples/14_log_repair.py

Each host is a process on the embedded model (no API key) whose log's writer is made to kill the
process (``os._exit``) at its last call, which is what a crash between charge and record looks
like. A new client opened on the same log and ledger repairs the log from the ledger: every spend
records which log it was meant for (the log's ``log_id``), so host A's log gets A's call back and
never B's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from blackbox_sdk import Budget, OpenAI
from blackbox_sdk.call_log import CallLog

MODEL = "smollm2"
PRICES = {MODEL: {"input": 0.5, "output": 1.5}}  # pretend it costs money
HOST = """
import json, os, sys
from blackbox_sdk import Budget, OpenAI
from blackbox_sdk.call_log import CallLog
ledger, log, calls, prices = json.loads(sys.argv[1])
made = []
def record_then_die(self, rec):
    made.append(rec.call_id)
    if len(made) == calls:  # the ledger has charged this call; the process dies before the log has it
        print(rec.call_id, flush=True)
        os._exit(17)
    return original(self, rec)
original, CallLog.enqueue = CallLog.enqueue, record_then_die
client = OpenAI(budget=Budget(total_usd=1.0, prices=prices, ledger=ledger), log=log)
for i in range(calls):
    client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=8)
"""


def host(ledger: Path, log: Path, calls: int) -> str:
    """Run one host for `calls` calls; it dies at its last; the id of the call its log lost."""
    done = subprocess.run([sys.executable, "-c", HOST, json.dumps([str(ledger), str(log), calls, PRICES])], capture_output=True, text=True, timeout=600)
    if done.returncode != 17:
        raise RuntimeError(f"the host should have died at its last call: {done.stderr[-2000:]}")
    return done.stdout.split()[-1]


def main() -> None:
    """Two hosts, one ledger, two logs: crash each, repair each, and compare the spends."""
    folder = Path(tempfile.mkdtemp(prefix="blackbox-repair-"))
    ledger, logs = folder / "ledger.db", {"A": folder / "a.db", "B": folder / "b.db"}
    lost = {"A": host(ledger, logs["A"], 3), "B": host(ledger, logs["B"], 2)}
    budget = Budget(prices=PRICES, ledger=ledger)
    for name, path in logs.items():
        with CallLog(path) as log:
            print(f"host {name}: log {log.log_id[:8]}..., lost call {lost[name][:8]}... logged: {lost[name] in log.logged_call_ids([lost[name]])}")
        OpenAI(budget=budget, log=path).close()  # a client opened on a budget and a log repairs the log
        with CallLog(path) as log:
            repaired = log.get(lost[name])
            print(f"host {name}: after repair {log.stats()['calls']} calls logged; the lost one says: {repaired.error[:34]}...")
    with CallLog(logs["A"]) as a, CallLog(logs["B"]) as b:
        logged = a.stats()["cost_usd"] + b.stats()["cost_usd"]
        print(f"ledger spent ${budget.spent():.6f}; the two logs together ${logged:.6f}")


if __name__ == "__main__":
    main()
