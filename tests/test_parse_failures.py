"""Structured outputs whose answer does not fit the caller's type: the SDK raises what openai's own `parse` and stream
helpers raise for the same answer, charges and logs the call, and never stores that answer (a retry of the call
reaches the server instead of replaying the error from the cache). A refusal, which openai returns without raising,
and a plain `create` with a JSON format, which openai never parses, are stored as any answer is.

Both clients talk to the same loopback doubles: `ResponsesUpstream` for the Responses API, `InstantUpstream` for chat.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from openai.lib._parsing._responses import type_to_text_format_param
from pydantic import BaseModel

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI

from responses_upstream import ResponsesUpstream
from servers import InstantUpstream, sse_upstream

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1000.0, "output": 2000.0}}
UNFIT = '{"town": "Paris"}'  # JSON, but no `name`: it does not fit City


class City(BaseModel):
    name: str


@pytest.fixture
def budget(tmp_path: Path) -> Budget:
    return Budget(total_usd=100.0, prices=PRICES, ledger=tmp_path / "ledger.db")


@pytest.fixture
def upstream() -> Iterator[ResponsesUpstream]:
    server = ResponsesUpstream([UNFIT])
    yield server
    server.close()


def sdk(url: str, tmp_path: Path, budget: Budget) -> OpenAI:
    return OpenAI(api_key="sk-test", base_url=url, max_retries=0, cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db")


def hits(tmp_path: Path) -> list[bool]:
    return [r.cache_hit for r in CallLog(tmp_path / "calls.db").calls()]


def settled(tmp_path: Path, budget: Budget) -> bool:
    """Nothing left reserved, and the ledger spent what the log says the calls cost."""
    report = budget.report()
    logged = sum(r.cost_usd for r in CallLog(tmp_path / "calls.db").calls())
    return report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(logged) and logged > 0


def _responses_parse(client: Any) -> None:
    client.responses.parse(model=MODEL, input="Name a city", text_format=City)


def _responses_stream(client: Any) -> None:
    with client.responses.stream(model=MODEL, input="Name a city", text_format=City) as stream:
        for _ in stream:
            pass


@pytest.mark.parametrize("ask", [_responses_parse, _responses_stream], ids=["parse", "stream"])
def test_a_response_that_does_not_fit_text_format_raises_as_openai_and_is_never_cached(
    ask: Any, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget,
) -> None:
    with pytest.raises(pydantic.ValidationError) as theirs:
        ask(openai.OpenAI(api_key="sk-test", base_url=upstream.url, max_retries=0))
    client = sdk(upstream.url, tmp_path, budget)
    for _ in range(2):
        with pytest.raises(type(theirs.value)):
            ask(client)
    assert len(upstream.bodies) == 3 and hits(tmp_path) == [False, False] and settled(tmp_path, budget)


def test_a_plain_create_with_a_json_schema_keeps_an_answer_that_does_not_fit(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    """openai's `create` never parses: the answer is the caller's, and it is stored as any answer is."""
    client = sdk(upstream.url, tmp_path, budget)
    text = {"format": type_to_text_format_param(City)}
    answers = [client.responses.create(model=MODEL, input="Name a city", text=text).output_text for _ in range(2)]
    assert answers == [UNFIT, UNFIT] and hits(tmp_path) == [False, True] and len(upstream.bodies) == 1


def test_parse_is_never_served_an_answer_a_plain_create_stored_that_does_not_fit(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    """The same request by `create` (which stores what it gets) and then by `parse`: the parse is not served the stored
    answer openai's helper would raise at, but asks the server (and raises as openai does at what it answers)."""
    client = sdk(upstream.url, tmp_path, budget)
    client.responses.create(model=MODEL, input="Name a city", text={"format": type_to_text_format_param(City)})
    with pytest.raises(pydantic.ValidationError):
        _responses_parse(client)
    assert len(upstream.bodies) == 2 and hits(tmp_path) == [False, False] and settled(tmp_path, budget)


def completion(message: dict[str, Any]) -> dict[str, Any]:
    """A chat completion with one choice."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}


@pytest.fixture
def chat() -> Iterator[tuple[InstantUpstream, list[int]]]:
    sent: list[int] = []
    server = InstantUpstream(completion({"content": UNFIT}), before=lambda: sent.append(1))
    yield server, sent
    server.close()


def test_a_chat_answer_that_does_not_fit_response_format_raises_as_openai_and_is_never_cached(
    chat: tuple[InstantUpstream, list[int]], tmp_path: Path, budget: Budget,
) -> None:
    server, sent = chat
    asked: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name a city"}], "response_format": City}
    with pytest.raises(pydantic.ValidationError) as theirs:
        openai.OpenAI(api_key="sk-test", base_url=server.url, max_retries=0).chat.completions.parse(**asked)
    client = sdk(server.url, tmp_path, budget)
    for _ in range(2):
        with pytest.raises(type(theirs.value)):
            client.chat.completions.parse(**asked)
    assert len(sent) == 3 and hits(tmp_path) == [False, False] and settled(tmp_path, budget)


@pytest.mark.parametrize(("finish", "error"), [
    ("length", openai.LengthFinishReasonError), ("content_filter", openai.ContentFilterFinishReasonError),
])
def test_a_chat_answer_cut_by_the_output_cap_raises_as_openai_and_is_never_cached_even_when_it_parses(
    finish: str, error: type[Exception], tmp_path: Path, budget: Budget,
) -> None:
    """openai's `parse` raises LengthFinishReasonError at an answer cut by `max_tokens`, and ContentFilterFinishReasonError
    at one a content filter stopped, whatever its text: such an answer that happens to parse is not stored either (a
    retry would replay the error from the cache)."""
    sent: list[int] = []
    cut = completion({"content": '{"name": "Paris"}'})
    cut["choices"][0]["finish_reason"] = finish
    server = InstantUpstream(cut, before=lambda: sent.append(1))
    asked: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name a city"}], "response_format": City, "max_tokens": 5}
    try:
        with pytest.raises(error):
            openai.OpenAI(api_key="sk-test", base_url=server.url, max_retries=0).chat.completions.parse(**asked)
        client = sdk(server.url, tmp_path, budget)
        for _ in range(2):
            with pytest.raises(error):
                client.chat.completions.parse(**asked)
    finally:
        server.close()
    assert len(sent) == 3 and hits(tmp_path) == [False, False] and settled(tmp_path, budget)


def test_a_chat_refusal_is_returned_as_openai_returns_it_and_cached(tmp_path: Path, budget: Budget) -> None:
    server = InstantUpstream(completion({"content": None, "refusal": "I can't help with that."}))
    try:
        asked: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name a city"}], "response_format": City}
        theirs = openai.OpenAI(api_key="sk-test", base_url=server.url, max_retries=0).chat.completions.parse(**asked)
        client = sdk(server.url, tmp_path, budget)
        ours = [client.chat.completions.parse(**asked) for _ in range(2)]
    finally:
        server.close()
    for answer in ours:
        assert type(answer) is type(theirs) and answer.choices[0].message.parsed is None
        assert answer.choices[0].message.refusal == theirs.choices[0].message.refusal
    assert hits(tmp_path) == [False, True]


BAD_ARGUMENTS = UNFIT  # a server that ignores `strict` may send arguments that don't fit the tool's model
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "City", "arguments": BAD_ARGUMENTS}}
TOOL_ANSWER = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}


def _tool_chunks(headers: object) -> bytes:
    """TOOL_ANSWER streamed: the call in one delta, the finish, the usage."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, **TOOL_CALL}]}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": TOOL_ANSWER["usage"]},
    ]
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks).encode() + b"data: [DONE]\n\n"


async def _ask_for_tool(how: str, url: str, tmp_path: Path) -> None:
    """One call of `how` with a strict pydantic tool, through a bare openai client ("openai parse", "openai stream") or the SDK's."""
    asked: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Name a city"}], "tools": [openai.pydantic_function_tool(City)]}
    options: dict[str, Any] = {"api_key": "x", "base_url": url, "max_retries": 0}
    stores = {"cache": tmp_path / "cache", "log": tmp_path / "calls.db"}
    if how == "async parse":
        async with AsyncOpenAI(**options, **stores) as client:
            await client.chat.completions.parse(**asked)
        return
    with (openai.OpenAI(**options) if how.startswith("openai") else OpenAI(**options, **stores)) as each:
        if how.endswith("stream"):
            with each.chat.completions.stream(**asked) as stream:
                for _ in stream:
                    pass
        else:
            each.chat.completions.parse(**asked)


@pytest.mark.parametrize("how", ["parse", "async parse", "stream"])
async def test_a_strict_tool_call_whose_arguments_dont_fit_raises_openais_error_and_is_never_stored(how: str, tmp_path: Path) -> None:
    """openai's `parse` and stream helper parse a strict tool's arguments into its model and raise where they don't fit
    (a server that ignores `strict`): such an answer is neither stored nor served, so a retry reaches the server again
    instead of replaying the error from the cache."""
    streamed = how.endswith("stream")
    with contextlib.ExitStack() as stack:
        if streamed:
            url = stack.enter_context(sse_upstream(_tool_chunks))
        else:
            upstream = InstantUpstream(TOOL_ANSWER)
            stack.callback(upstream.close)
            url = upstream.url
        with pytest.raises(pydantic.ValidationError):
            await _ask_for_tool("openai stream" if streamed else "openai parse", url, tmp_path)
        for _ in range(2):
            with pytest.raises(pydantic.ValidationError):
                await _ask_for_tool(how, url, tmp_path)
    assert hits(tmp_path) == [False, False]


CALL_ITEM = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "City", "arguments": BAD_ARGUMENTS, "status": "completed"}
RESPONSE_WITH_CALL = {
    "id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "completed", "output": [CALL_ITEM],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    "usage": {"input_tokens": 9, "output_tokens": 7, "total_tokens": 16,
              "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
}


def _call_events(headers: object) -> bytes:
    """RESPONSE_WITH_CALL streamed: created, the call's item and arguments, completed."""
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**RESPONSE_WITH_CALL, "status": "in_progress", "output": [], "usage": None}},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": {**CALL_ITEM, "arguments": "", "status": "in_progress"}},
        {"type": "response.function_call_arguments.delta", "sequence_number": 2, "item_id": "fc_1", "output_index": 0, "delta": BAD_ARGUMENTS},
        {"type": "response.function_call_arguments.done", "sequence_number": 3, "item_id": "fc_1", "output_index": 0, "arguments": BAD_ARGUMENTS},
        {"type": "response.output_item.done", "sequence_number": 4, "output_index": 0, "item": CALL_ITEM},
        {"type": "response.completed", "sequence_number": 5, "response": RESPONSE_WITH_CALL},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _respond_with_tool(client: Any, streamed: bool) -> None:
    asked: dict[str, Any] = {"model": MODEL, "input": "Name a city", "tools": [openai.pydantic_function_tool(City)]}
    if streamed:
        with client.responses.stream(**asked) as stream:
            for _ in stream:
                pass
    else:
        client.responses.parse(**asked)


@pytest.mark.parametrize("streamed", [False, True], ids=["parse", "stream"])
def test_a_responses_strict_tool_call_whose_arguments_dont_fit_raises_as_openai_and_is_never_stored(streamed: bool, tmp_path: Path) -> None:
    """`responses.parse` and `responses.stream` parse a strict tool's arguments as chat's helpers do, and raise where
    they don't fit: such a response is neither stored nor served."""
    with contextlib.ExitStack() as stack:
        if streamed:
            url = stack.enter_context(sse_upstream(_call_events))
        else:
            upstream = InstantUpstream(RESPONSE_WITH_CALL, route="/responses")
            stack.callback(upstream.close)
            url = upstream.url
        with pytest.raises(pydantic.ValidationError):
            _respond_with_tool(openai.OpenAI(api_key="x", base_url=url, max_retries=0), streamed)
        with OpenAI(api_key="x", base_url=url, max_retries=0, cache=tmp_path / "cache", log=tmp_path / "calls.db") as client:
            for _ in range(2):
                with pytest.raises(pydantic.ValidationError):
                    _respond_with_tool(client, streamed)
    assert hits(tmp_path) == [False, False]
