"""A server's hidden prompt tokens are learnt per prompt: one that adds them to every prompt of a legacy completions list
(its template, a BOS the SDK's count can't see) is reserved for each, not once per request. The server here is a real
loopback one that bills what it was sent: the words of each prompt plus HIDDEN tokens apiece."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import send_json

from blackbox_sdk import Budget, OpenAI

HIDDEN = 10  # tokens the server adds to each prompt


def _words(text: str) -> int:
    return len(text.split())


class _Billing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/embeddings"):
            return send_json(self, _embeddings(body))
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = len(prompts) * int(body.get("n") or 1)  # n for each prompt, one token each, as OpenAI answers
        answer = {
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "text": " ok", "finish_reason": "length", "logprobs": None} for i in range(choices)],
            "usage": {"prompt_tokens": sum(_words(p) + HIDDEN for p in prompts), "completion_tokens": choices,
                      "total_tokens": sum(_words(p) + HIDDEN for p in prompts) + choices},
        }
        send_json(self, answer)

    def log_message(self, *args: object) -> None:
        """Quiet."""


def _embeddings(body: dict[str, object]) -> dict[str, object]:
    """An embeddings answer billed as a server that wraps each input in tokens of its own (a BOS and an EOS) bills it."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    tokens = sum(_words(str(text)) + HIDDEN for text in texts)
    data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25]} for i in range(len(texts))]
    return {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@pytest.fixture
def billing() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Billing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_list_of_prompts_is_reserved_the_hidden_tokens_of_each(billing: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=10.0, prices={"m": {"input": 1000.0, "output": 1000.0}}, ledger=str(ledger))
    client = OpenAI(base_url=billing, api_key="sk-test", budget=budget, tokenizer=_words, max_retries=0)
    client.completions.create(model="m", prompt="the first question", max_tokens=1, n=2)  # calibrates, and shows n honoured
    prompts = ["one two", "three four five", "six", "seven eight"]
    answer = client.completions.create(model="m", prompt=prompts, max_tokens=1)
    assert answer.usage is not None and answer.usage.prompt_tokens == sum(_words(p) for p in prompts) + HIDDEN * len(prompts)
    with sqlite3.connect(ledger) as connection:
        spends = connection.execute("SELECT usd_nano, reserved_nano FROM spends ORDER BY id").fetchall()
    assert len(spends) == 2 and all(spent <= reserved for spent, reserved in spends), spends  # no call settled past its hold
    client.close()


def test_an_embeddings_list_is_reserved_the_hidden_tokens_of_each_input(billing: str, tmp_path: Path) -> None:
    """A server that adds its tokens to each input of an embeddings list: learnt from a one-input call, a four-input
    call holds them four times, and settles within its hold."""
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=10.0, prices={"m": {"input": 1000.0, "output": 1000.0}}, ledger=str(ledger))
    client = OpenAI(base_url=billing, api_key="sk-test", budget=budget, tokenizer=_words, max_retries=0)
    client.embeddings.create(model="m", input="the first text")  # calibrates
    texts = ["one two", "three four five", "six", "seven eight"]
    answer = client.embeddings.create(model="m", input=texts)
    assert answer.usage.prompt_tokens == sum(_words(t) for t in texts) + HIDDEN * len(texts)
    with sqlite3.connect(ledger) as connection:
        spends = connection.execute("SELECT usd_nano, reserved_nano FROM spends ORDER BY id").fetchall()
    assert len(spends) == 2 and all(spent <= reserved for spent, reserved in spends), spends  # no call settled past its hold
    client.close()


def test_an_uncalibrated_list_is_reserved_the_allowance_for_each_text(billing: str, tmp_path: Path) -> None:
    """The first call to an uncalibrated endpoint holds the allowance for each text of its list: eight inputs the server
    adds 10 tokens to each (80 in all, past one 64-token allowance) settle within the hold, and so does the next."""
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=10.0, prices={"m": {"input": 1000.0, "output": 1000.0}}, ledger=str(ledger))
    client = OpenAI(base_url=billing, api_key="sk-test", budget=budget, tokenizer=_words, max_retries=0)
    texts = [f"text number {i}" for i in range(8)]
    client.embeddings.create(model="m", input=texts)
    client.embeddings.create(model="m", input=texts[:3])
    with sqlite3.connect(ledger) as connection:
        spends = connection.execute("SELECT usd_nano, reserved_nano FROM spends ORDER BY id").fetchall()
    assert len(spends) == 2 and all(spent <= reserved for spent, reserved in spends), spends
    client.close()
