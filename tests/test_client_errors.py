"""The drop-in client's errors are openai's: a closed client fails as openai's closed client does, before anything is
reserved, read from the cache or logged; and a failed call whose record can't be written raises its own error (the
log's failure a note on it and a warning), never the call log's. The endpoint is a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import openai
import pytest
from servers import InstantUpstream

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, CallLogError, OpenAI

MODEL = "m"
PRICES = {MODEL: {"input": 1.0, "output": 1.0}}
ASK = [{"role": "user", "content": "hi"}]
ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
BOOM = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
KEY = "sk-test-never-logged"


def _bare_closed_error(url: str) -> RuntimeError:
    """What openai's own client raises when called after `close()`."""
    bare = openai.OpenAI(base_url=url, api_key=KEY)
    bare.close()
    with pytest.raises(RuntimeError) as raised:
        bare.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    return raised.value


@pytest.mark.parametrize("how", ["close", "with"])
def test_a_closed_client_fails_as_openais_before_anything_is_reserved_or_logged(tmp_path: Path, how: str) -> None:
    """After `close()` or its `with` block, a call (even one its cache could answer) raises openai's RuntimeError,
    not 'the call log is closed'; nothing is sent, reserved, charged or logged."""
    sent: list[int] = []
    upstream = InstantUpstream(ANSWER, before=lambda: sent.append(1))
    try:
        budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
        options = {"base_url": upstream.url, "api_key": KEY, "budget": budget, "log": tmp_path / "calls.db", "cache": tmp_path / "cache"}
        with OpenAI(**options) as client:  # type: ignore[arg-type]
            client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
            if how == "close":
                client.close()
        for stream in (False, True):
            with pytest.raises(RuntimeError) as raised:
                client.chat.completions.create(model=MODEL, messages=ASK, stream=stream)  # type: ignore[call-overload]
            assert type(raised.value) is RuntimeError and str(raised.value) == str(_bare_closed_error(upstream.url))
        assert len(sent) == 1
        report = budget.report()
        assert report.calls == 1 and report.outstanding_reservations == 0
        with CallLog(tmp_path / "calls.db") as log:
            assert len(list(log.calls())) == 1
    finally:
        upstream.close()


async def test_a_closed_async_client_fails_as_openais_before_anything_is_reserved_or_logged(tmp_path: Path) -> None:
    """The same for `AsyncOpenAI`, closed by leaving `async with`."""
    sent: list[int] = []
    upstream = InstantUpstream(ANSWER, before=lambda: sent.append(1))
    try:
        budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
        async with AsyncOpenAI(base_url=upstream.url, api_key=KEY, budget=budget, log=tmp_path / "calls.db") as client:
            await client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError) as raised:
            await client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
        assert type(raised.value) is RuntimeError and str(raised.value) == str(_bare_closed_error(upstream.url))
        assert len(sent) == 1
        assert budget.report().outstanding_reservations == 0 and budget.report().calls == 1
        await asyncio.sleep(0.2)  # the log closes in a thread of its own
        with CallLog(tmp_path / "calls.db") as log:
            assert len(list(log.calls())) == 1
    finally:
        upstream.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_call_whose_record_fails_raises_its_own_error(tmp_path: Path, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    """A 500 on a client whose call log can't take its record (closed by its owner): openai's InternalServerError,
    as the bare client raises, with the log's failure as a note and a warning (no key in either); a call that
    answers still raises CallLogError, as docs/call-log.md promises (its caller learns it was not logged)."""
    log = CallLog(tmp_path / "calls.db")
    log.close()
    failing, answering = InstantUpstream(BOOM, status=500), InstantUpstream(ANSWER)
    try:
        client = OpenAI(base_url=failing.url, api_key=KEY, max_retries=0, log=log)
        with caplog.at_level(logging.WARNING, logger="blackbox_sdk"), pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model=MODEL, messages=ASK, stream=stream)  # type: ignore[call-overload]
        assert raised.value.status_code == 500
        [note] = raised.value.__notes__
        assert "could not be logged" in note and "is closed" in note
        assert "could not be logged" in caplog.text and KEY not in caplog.text and KEY not in note
        with pytest.raises(CallLogError, match="is closed"):
            client.with_options(base_url=answering.url).chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    finally:
        failing.close()
        answering.close()


async def test_an_async_failed_call_whose_record_fails_raises_its_own_error(tmp_path: Path) -> None:
    """The same for `AsyncOpenAI`."""
    log = CallLog(tmp_path / "calls.db")
    log.close()
    failing = InstantUpstream(BOOM, status=500)
    try:
        async with AsyncOpenAI(base_url=failing.url, api_key=KEY, max_retries=0, log=log) as client:
            with pytest.raises(openai.InternalServerError) as raised:
                await client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
        assert raised.value.status_code == 500
        assert any("could not be logged" in note for note in raised.value.__notes__)
    finally:
        failing.close()
