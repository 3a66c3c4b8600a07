"""A file given by reference (chat's `file_id`, the Responses API's `file_id` or `file_url`) is billed by the server
and can't be counted before sending: it must not be taken for the endpoint's hidden tokens, and once one answer has
shown what it costs, every later call giving it (in any process on the ledger) reserves that, so that a cap refuses
it before sending. The server here is a real loopback one that bills what it was sent: the words of the text, HIDDEN
tokens of its own, and each file's tokens each time a request gives it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from responses_upstream import response_json
from servers import loopback, send_json

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, OpenAI

MODEL = "m"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # dollars per million tokens: every token shows
HIDDEN = 10  # tokens the server adds to each request
FILES = {"file-report": 5000, "file-memo": 700, "https://files.test/report.pdf?sig=s3cr3t-signature": 3000}
ROUTES = {"chat": "chat.completions", "responses": "responses"}


def _words(text: str) -> int:
    return len(text.split())


def _billed(parts: list[Any]) -> int:
    """The words of a message's text parts and the tokens of each file it gives by reference."""
    total = 0
    for part in parts:
        file = part.get("file") or part
        total += _words(part.get("text", "")) + FILES.get(file.get("file_id") or file.get("file_url") or "", 0)
    return total


class _Billing:
    """The server's state: `requests` counts the calls answered, and each answer waits for `hold` when it is given."""

    def __init__(self) -> None:
        self.requests = 0
        self.hold: threading.Event | None = None
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """Chat completions and responses, each answered "ok" and billed as the module says."""
        billing = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                billing.requests += 1
                if billing.hold is not None:
                    billing.hold.wait(60)
                send_json(self, _chat(body) if self.path.endswith("/chat/completions") else _response(billing.requests, body))

            def log_message(self, *args: object) -> None:
                """Quiet."""

        return Handler


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    content = [m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}] for m in body["messages"]]
    prompt = sum(_billed(parts) for parts in content) + HIDDEN
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
    }


def _response(number: int, body: dict[str, Any]) -> dict[str, Any]:
    files = sum(_billed([p for p in item["content"] if p["type"] == "input_file"]) for item in body["input"])
    return response_json(number, body, "ok", history=HIDDEN + files)


@pytest.fixture
def billing() -> Iterator[_Billing]:
    server = _Billing()
    with loopback(server.handler()) as server.url:
        yield server


def _ask(client: OpenAI, route: str, text: str, *files: str) -> Any:
    """One call giving `files` by reference after the text: chat's file parts, or Responses input_file parts."""
    if route == "chat":
        parts = [{"type": "text", "text": text}, *({"type": "file", "file": {"file_id": f}} for f in files)]
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=16)
    given = [{"type": "input_file", **({"file_url": f} if "://" in f else {"file_id": f})} for f in files]
    return client.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": text}, *given]}], max_output_tokens=16)


def _client(billing: _Billing, budget: Budget) -> OpenAI:
    return OpenAI(base_url=billing.url, api_key="sk-test", budget=budget, tokenizer=_words, max_retries=0)


def _over(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The budget's warnings that a call cost more than what was held for it."""
    return [r.getMessage() for r in caplog.records if "more than its reservation" in r.getMessage()]


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_file_given_by_reference_is_reserved_once_an_answer_showed_it_and_a_cap_refuses_it_before_sending(
    route: str, billing: _Billing, store_at: Callable[[str], str], caplog: pytest.LogCaptureFixture,
) -> None:
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=store_at("ledger.db"))  # in SQLite, then in Redis
    client = _client(billing, budget)
    _ask(client, route, "What is the capital of France?")  # calibrates the endpoint: its hidden tokens
    key = f"{client._core.endpoint}#{ROUTES[route]}"
    learnt = budget.calibration.overhead(key, MODEL)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        _ask(client, route, "Summarize the report.", "file-report")  # unseen: charged when it settles, past its hold
        assert "has not seen (file file-report)" in caplog.text and len(_over(caplog)) == 1
        caplog.clear()
        _ask(client, route, "List its sections.", "file-report")
        _ask(client, route, "Compare them.", "file-report", "file-report")  # given twice: billed, and held, twice
    assert _over(caplog) == [] and "has not seen" not in caplog.text
    assert learnt is not None and budget.calibration.overhead(key, MODEL) == learnt  # the file's tokens are not the endpoint's
    tight = Budget(total_usd=budget.spent() + 1.0, prices=PRICES, ledger=store_at("ledger.db"))  # room for 1000 tokens, not 5000
    sent = billing.requests
    with pytest.raises(BudgetExceededError):  # another process on the ledger knows what the file costs
        _ask(_client(billing, tight), route, "Quote its summary.", "file-report")
    assert billing.requests == sent
    _ask(_client(billing, tight), route, "Quote its title.")  # the cap has room for a call without it


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_first_call_that_gives_a_file_neither_calibrates_the_endpoint_nor_takes_its_gate(route: str, billing: _Billing, tmp_path: Path) -> None:
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = _client(billing, budget)
    key = f"{client._core.endpoint}#{ROUTES[route]}"
    budget.calibration.open_gate(key, MODEL, "another-process")  # a plain call elsewhere is calibrating the endpoint
    _ask(client, route, "Summarize the memo.", "file-memo")  # passes without the gate: it could teach the endpoint nothing
    assert budget.calibration.overhead(key, MODEL) is None  # 700 tokens of a file were once kept as the endpoint's own
    budget.calibration.close_gate(key, MODEL, "another-process")
    _ask(client, route, "What is the capital of Italy?")
    overhead = budget.calibration.overhead(key, MODEL)
    assert overhead is not None and overhead < 50


def test_two_new_files_in_one_answer_are_each_held_at_both_and_a_file_url_is_kept_hashed(billing: _Billing, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = tmp_path / "ledger.db"
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=ledger)
    client = _client(billing, budget)
    url = next(ref for ref in FILES if "://" in ref)
    _ask(client, "responses", "What is the capital of France?")  # calibrates
    _ask(client, "responses", "Compare the two.", url, "file-memo")  # neither seen: each kept at the two together
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        _ask(client, "responses", "Summarize the memo.", "file-memo")
        _ask(client, "responses", "Summarize the report.", url)
    assert _over(caplog) == [] and "has not seen" not in caplog.text  # each is held at least at what it costs
    overhead = budget.calibration.overhead(f"{client._core.endpoint}#responses", MODEL)
    assert overhead is not None and overhead < 50  # held as the files', not as the endpoint's hidden tokens
    data = b"".join(path.read_bytes() for path in tmp_path.glob("ledger.db*"))
    assert b"s3cr3t" not in data and b"files.test" not in data  # a signed URL's query is a credential


def _until(happened: Callable[[], object]) -> None:
    """Wait (at most 60 s) until something another thread does has happened."""
    deadline = time.monotonic() + 60
    while not happened():
        assert time.monotonic() < deadline, "it never happened"
        time.sleep(0.01)


def test_calls_that_give_a_new_file_at_once_wait_for_the_first_answer_so_only_it_passes_its_hold(
    billing: _Billing, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = _client(billing, budget)
    _ask(client, "chat", "What is the capital of France?")  # calibrates
    refused: list[str] = []
    open_gate = budget.calibration.open_gate

    def noted(key: str, model: str, holder: str) -> bool:
        taken = open_gate(key, model, holder)
        refused.extend([] if taken else [holder])
        return taken

    monkeypatch.setattr(budget.calibration, "open_gate", noted)
    billing.hold, sent = threading.Event(), billing.requests
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"), ThreadPoolExecutor(2) as pool:
        first = pool.submit(_ask, client, "chat", "Summarize the report.", "file-report")
        _until(lambda: billing.requests == sent + 1)  # the first is at the server, its answer held there
        second = pool.submit(_ask, client, "chat", "List its sections.", "file-report")
        _until(lambda: refused)  # the second waits at the file's gate...
        assert billing.requests == sent + 1  # ...unsent
        billing.hold.set()
        first.result(timeout=60), second.result(timeout=60)
    assert billing.requests == sent + 2 and len(_over(caplog)) == 1  # the second reserved what the first showed


async def test_the_async_client_waits_at_a_new_files_gate_and_reserves_what_the_first_answer_showed(
    billing: _Billing, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = AsyncOpenAI(base_url=billing.url, api_key="sk-test", budget=budget, tokenizer=_words, max_retries=0)
    key = f"{client._core.endpoint}#chat.completions"
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
    parts = [{"type": "text", "text": "Summarize the memo."}, {"type": "file", "file": {"file_id": "file-memo"}}]
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        first, second = await asyncio.gather(*(
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=16) for _ in range(2)
        ))
    assert first.choices[0].message.content == second.choices[0].message.content == "ok"
    assert len(_over(caplog)) == 1 and budget.calibration.overhead(key, MODEL) is not None  # the second waited, then held the file
    await client.close()
