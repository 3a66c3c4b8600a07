"""Example 3: the response cache and the call log, used directly (what the client does on every call).

Run it:  python examples/03_cache_and_log.py [--dir FOLDER]

It keys a request, misses, stores two sampled answers, hits; records the call (the API key in
the request never reaches the file), adds feedback, exports the JSONL the adapter trainer reads,
and prints `blackbox-sdk stats`. No network and no model: the "answers" are written inline, the
way a server's response would arrive.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from blackbox_sdk.cache import Cache
from blackbox_sdk.call_log import CallLog, CallRecord, new_call_id
from blackbox_sdk.cli import main as cli_main

MODEL = "gpt-4o-mini"
REQUEST: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "What is 17 * 3? Answer with a number."}],
    "temperature": 0.8,
    "api_key": "sk-example-" + "0" * 40,  # left out of the cache key, redacted in the log
    "timeout": 30,  # transport-only: left out of the cache key
}
SAMPLES = ["51", "17 * 3 = 51"]


def chat_entry(text: str) -> dict[str, object]:
    """A stored chat response, shaped as the client stores one candidate."""
    return {"kind": "chat", "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}}


def use_cache(folder: Path) -> bool:
    """Miss, store two samples, hit; returns whether the second lookup was a hit."""
    with Cache(folder / "cache", namespace="example", ttl=24 * 3600) as cache:
        key = cache.key(route="chat", endpoint="https://api.openai.com/v1", params=REQUEST)
        print(f"key {key[:16]}...  first lookup: {len(cache.get(key))} entries")
        cache.extend(key, [chat_entry(text) for text in SAMPLES])
        found = cache.get(key)
        print(f"second lookup: {[e['response']['choices'][0]['message']['content'] for e in found]}")
        cache.with_mode("refresh").extend(key, [chat_entry("51")])  # a per-call "refresh": replaces the bucket
        print(f"after refresh: {len(cache.get(key))} entry; stats {cache.stats}")
        return bool(found)


def use_log(folder: Path, hit: bool) -> Path:
    """Record the call and one cached repeat, add feedback, export; returns the log's path."""
    path = folder / "calls.db"
    with CallLog(path) as log:
        call_id = new_call_id()
        log.record(CallRecord(
            call_id=call_id, endpoint_host="api.openai.com", model=MODEL, route="chat",
            request=REQUEST, candidates=SAMPLES, chosen=[0], scores=[1.2, 0.4],
            usage={"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28}, usage_counted=True,
            cost_usd=0.0000083, latency_s=0.61,
        ))
        log.record(CallRecord(
            endpoint_host="api.openai.com", model=MODEL, route="chat", request=REQUEST,
            candidates=SAMPLES, chosen=[0], cache_hit=hit,
        ))
        log.feedback(call_id, label="correct", preferred=0, reference="51")
        stored = log.get(call_id)
        print(f"logged request api_key: {stored.request['api_key']}")
        count = log.export_jsonl(folder / "calls.jsonl", replace=True)  # --dir is run again: this run's export replaces the last
    first = json.loads((folder / "calls.jsonl").read_text(encoding="utf-8").splitlines()[0])
    print(f"exported {count} calls; first has {len(first['candidates'])} candidates and feedback {first['feedback'][0]['label']}")
    return path


def run(folder: Path) -> None:
    """The walk-through, writing into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    hit = use_cache(folder)
    path = use_log(folder, hit)
    cli_main(["stats", "--log", str(path)])


def main() -> None:
    """Run in --dir (kept afterwards), or in a temporary folder that is removed at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="folder for the cache, log and export (default: a temporary one)")
    folder = parser.parse_args().dir
    if folder is not None:
        run(folder)
        return
    with tempfile.TemporaryDirectory(prefix="blackbox-example-") as scratch:
        run(Path(scratch))


if __name__ == "__main__":
    main()
