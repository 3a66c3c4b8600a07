"""A server that ignores `stream` (answers a stream request with one JSON body, as some OpenAI-compatible servers and
gateways do) is read as a stream of that whole answer, as a cache replays one: its text, finish_reason and usage,
charged at its usage and stored, never an empty stream. The server is a real loopback one answering JSON to any POST."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import InstantUpstream

from blackbox_sdk import AsyncOpenAI, Budget, OpenAI

PRICES = {"m": {"input": 1000.0, "output": 1000.0}}  # a token costs $0.001
HELLO = [{"role": "user", "content": "hi"}]
CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
}
TEXT = {
    "id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "text": " Paris, of course.", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8},
}


@pytest.fixture
def chat_upstream() -> Iterator[str]:
    upstream = InstantUpstream(CHAT)
    yield upstream.url
    upstream.close()


def test_a_chat_stream_answered_whole_is_the_whole_answer_as_chunks_charged_at_its_usage(chat_upstream: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    client = OpenAI(base_url=chat_upstream, api_key="none", max_retries=0, budget=budget, cache=tmp_path / "cache")
    stream = client.chat.completions.create(model="m", messages=HELLO, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend." and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert stream.blackbox.error is None and budget.report().spent_usd == pytest.approx(0.008) and budget.report().reserved_usd == 0.0
    hit = client.chat.completions.create(model="m", messages=HELLO)
    assert hit.blackbox.cache_hit and hit.choices[0].message.content == "Hello there, friend."
    client.close()


def test_a_legacy_completions_stream_answered_whole_is_the_whole_answer_as_chunks(tmp_path: Path) -> None:
    upstream = InstantUpstream(TEXT, route="/completions")
    try:
        client = OpenAI(base_url=upstream.url, api_key="none", max_retries=0)
        stream = client.completions.create(model="m", prompt="The capital of France is", stream=True)
        chunks = list(stream)
    finally:
        upstream.close()
    assert "".join(c.choices[0].text for c in chunks) == " Paris, of course." and chunks[-1].choices[0].finish_reason == "stop"
    assert stream.blackbox.error is None


def test_an_async_chat_stream_answered_whole_is_the_whole_answer_as_chunks(chat_upstream: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"))

    async def read() -> tuple[str, object]:
        client = AsyncOpenAI(base_url=chat_upstream, api_key="none", max_retries=0, budget=budget)
        stream = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return text, stream.blackbox.error

    assert asyncio.run(read()) == ("Hello there, friend.", None)
    assert budget.report().spent_usd == pytest.approx(0.008) and budget.report().reserved_usd == 0.0


def test_a_responses_stream_answered_whole_is_that_response_as_events(tmp_path: Path) -> None:
    whole = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "status": "completed",
             "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                         "content": [{"type": "output_text", "text": "Hello there.", "annotations": []}]}],
             "usage": {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}}
    upstream = InstantUpstream(whole, route="/responses")
    try:
        client = OpenAI(base_url=upstream.url, api_key="none", max_retries=0, budget=Budget(total_usd=10.0, prices=PRICES, ledger=str(tmp_path / "ledger.db")))
        stream = client.responses.create(model="m", input="hi", stream=True)
        events = list(stream)
    finally:
        upstream.close()
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello there."
    assert events[-1].type == "response.completed" and events[-1].response.id == "resp_1"
    assert stream.blackbox.error is None and stream.blackbox.cost_usd == pytest.approx(0.005)
