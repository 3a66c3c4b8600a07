"""openai's structured-output helpers through the SDK against the same real model as a bare openai client
(the local SmolLM2 backend, which honours `response_format` json_schema; llama-cpp-python's server
answers it with a 500): `parse` and the stream helpers give what openai's give, on a miss, on a cache
hit and under a budget, and raise what openai's raise when max_tokens cuts the JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.lib._parsing import type_to_response_format_param
from openai.lib._parsing._responses import type_to_text_format_param
from pydantic import BaseModel, ValidationError

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI
from blackbox_sdk.local import AsyncHFTransport, HFBackend, HFTransport

pytest_plugins = ["local_model"]  # the backend and the bare openai client over it

MODEL = "smollm2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}
CUT = {"model": MODEL, "messages": FRANCE, "max_tokens": 4, "temperature": 0}  # the JSON cut after a few tokens


class City(BaseModel):
    name: str
    country: str


@pytest.fixture
def budget(tmp_path: Path) -> Budget:
    return Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")


@pytest.fixture
def sdk(backend: HFBackend, tmp_path: Path, budget: Budget) -> Iterator[OpenAI]:
    """The SDK's client over the same model as the bare one, with a cache, a budget and a log."""
    http = httpx2.Client(transport=HFTransport(backend))
    with OpenAI(api_key="x", base_url="http://hf.local/v1", http_client=http, max_retries=0,
                cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db") as client:
        yield client


def _server_usage(client: openai.OpenAI) -> dict[str, int]:
    """What the server counts for the cut answer (a bare `create`, nothing parsed)."""
    answer = client.chat.completions.create(**CUT, response_format=type_to_response_format_param(City))  # type: ignore[arg-type]
    assert answer.usage is not None and answer.choices[0].finish_reason == "length"
    return {"prompt_tokens": answer.usage.prompt_tokens, "completion_tokens": answer.usage.completion_tokens}


def _records(tmp_path: Path) -> list[Any]:
    return list(CallLog(tmp_path / "calls.db").calls())


def test_parse_gives_openais_parsed_completion_on_a_miss_and_a_hit_and_raises_its_length_error(
    client: openai.OpenAI, sdk: OpenAI, tmp_path: Path,
) -> None:
    asked = {"model": MODEL, "messages": FRANCE, "response_format": City, "max_tokens": 40, "temperature": 0}
    theirs = client.chat.completions.parse(**asked)  # type: ignore[arg-type]
    for hit in (False, True):
        ours = sdk.chat.completions.parse(**asked)  # type: ignore[arg-type]
        assert ours.blackbox.cache_hit is hit and type(ours) is type(theirs)
        assert ours.choices[0].message.parsed == theirs.choices[0].message.parsed and isinstance(ours.choices[0].message.parsed, City)
        assert ours.model_dump(exclude={"id", "created"}, warnings=False) == theirs.model_dump(exclude={"id", "created"}, warnings=False)
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(**CUT, response_format=City)
    for _ in range(2):
        with pytest.raises(openai.LengthFinishReasonError):
            sdk.chat.completions.parse(**CUT, response_format=City)
    assert [r.cache_hit for r in _records(tmp_path)] == [False, True, False, False]  # openai raised at it: never stored


def _cut_stream(client: openai.OpenAI) -> None:
    """The chat stream helper over the cut JSON, read to its end (openai's helper raises at the cut)."""
    with client.chat.completions.stream(**CUT, response_format=City) as stream:
        for _ in stream:
            pass


def test_a_stream_helper_cut_by_max_tokens_raises_openais_error_and_is_a_whole_answer(
    client: openai.OpenAI, sdk: OpenAI, tmp_path: Path, budget: Budget,
) -> None:
    """The helper raises on the chunk with finish_reason "length", before the usage chunk; the SDK used to log
    the whole answer as a stream closed early and charge it by its own count. openai raised at it, so it is not
    stored: a retry reaches the server."""
    with pytest.raises(openai.LengthFinishReasonError):
        _cut_stream(client)
    for _ in range(2):
        with pytest.raises(openai.LengthFinishReasonError):
            _cut_stream(sdk)
    first, again = _records(tmp_path)
    assert (first.error, first.cache_hit, again.cache_hit) == (None, False, False)
    usage = _server_usage(client)
    assert {key: first.usage[key] for key in usage} == usage  # the server's usage, read after the helper stopped
    assert budget.report().spent_usd == pytest.approx(2 * sum(usage.values()) * 1000.0 / 1e6)  # both calls reached the server


def test_a_responses_stream_helper_left_at_its_completed_event_is_a_whole_answer(
    client: openai.OpenAI, sdk: OpenAI, tmp_path: Path,
) -> None:
    """A caller that stops at `response.completed` (the last event) has the whole answer; the SDK used to log it as cut."""
    asked = {"model": MODEL, "input": "What is the capital of France?", "text_format": City, "max_output_tokens": 40, "temperature": 0}
    parsed = []
    for each in (client, sdk, sdk):
        with each.responses.stream(**asked) as stream:  # type: ignore[arg-type]
            completed = next(event for event in stream if event.type == "response.completed")
        parsed.append(completed.response.output_parsed)
    assert parsed[0] == parsed[1] == parsed[2] and isinstance(parsed[0], City)
    assert [(r.error, r.cache_hit) for r in _records(tmp_path)] == [(None, False), (None, True)]


def test_a_responses_stream_helper_cut_by_max_output_tokens_raises_openais_error_and_is_a_whole_answer(
    client: openai.OpenAI, sdk: OpenAI, tmp_path: Path,
) -> None:
    """openai's helper parses `text_format` at `response.output_text.done` and raises there on the cut JSON,
    before `response.incomplete`; the SDK used to log the whole (incomplete) answer as a stream closed early,
    counted, where chat's helper cut by max_tokens is a whole answer. openai raised at it: not stored."""
    asked = {"model": MODEL, "input": "What is the capital of France?", "text_format": City, "max_output_tokens": 4, "temperature": 0}
    for each in (client, sdk, sdk):
        with pytest.raises(ValidationError), each.responses.stream(**asked) as stream:  # type: ignore[arg-type]
            for _ in stream:
                pass
    first, again = _records(tmp_path)
    assert (first.error, first.usage_counted, first.cache_hit, again.cache_hit) == (None, False, False, False)
    schema = {"format": type_to_text_format_param(City)}  # what the helper sends for `text_format`
    bare = client.responses.create(text=schema, **{k: v for k, v in asked.items() if k != "text_format"})  # type: ignore[call-overload]
    assert bare.status == "incomplete" and bare.usage is not None
    assert (first.usage["prompt_tokens"], first.usage["completion_tokens"]) == (bare.usage.input_tokens, bare.usage.output_tokens)


async def test_the_async_stream_helper_cut_by_max_tokens_is_a_whole_answer(
    aclient: openai.AsyncOpenAI, backend: HFBackend, tmp_path: Path,
) -> None:
    sdk = AsyncOpenAI(api_key="x", base_url="http://hf.local/v1", http_client=httpx2.AsyncClient(transport=AsyncHFTransport(backend)),
                      max_retries=0, cache=tmp_path / "cache", log=tmp_path / "calls.db")
    for each in (aclient, sdk, sdk):
        with pytest.raises(openai.LengthFinishReasonError):
            async with each.chat.completions.stream(**CUT, response_format=City) as stream:
                async for _ in stream:
                    pass
    await sdk.close()
    assert [(r.error, r.cache_hit) for r in _records(tmp_path)] == [(None, False), (None, False)]  # openai raised at it: not stored
