"""instructor on the SDK's clients (`instructor.from_openai`), sync and async, on both real backends.

llama.cpp's server forces a named tool's arguments to its JSON schema (TOOLS mode) and takes
`response_format` json_object, with the schema under `"schema"`, but not json_schema (JSON mode: the
schema goes in `extra_body`, as llama.cpp's users write it; without it llama.cpp's generic JSON
grammar is slow and SmolLM2-135M echoes the schema). The `hf:` backend takes json_schema
(JSON_SCHEMA mode) and no tools. Each test checks that instructor's calls were logged and charged
by the SDK, and that the same request again is served from the SDK's cache.
"""

from __future__ import annotations

from typing import Any

import instructor
import pytest
from instructor.core import InstructorRetryException
from pydantic import BaseModel

from blackbox_sdk import Budget, BudgetExceededError, OpenAI

pytest.register_assert_rewrite("compat")  # before its import: its asserts then explain failures
from compat import MODEL, PRICES, QUESTION, Sdk, assert_cache_hit, assert_charged_and_logged

pytest_plugins = ["compat"]  # the llama_sdk, hf_sdk and sdk fixtures

MESSAGES = [{"role": "user", "content": QUESTION}]


class City(BaseModel):
    """A schema a constrained backend fills exactly."""

    name: str


ASK = {"model": MODEL, "response_model": City, "messages": MESSAGES, "max_tokens": 24, "temperature": 0, "max_retries": 0}


def json_mode(sdk: Sdk) -> tuple[instructor.Mode, dict[str, Any]]:
    """The JSON mode each backend supports, with what its requests need beyond instructor's."""
    if sdk.backend == "llama":
        schema_format = {"type": "json_object", "schema": City.model_json_schema()}
        return instructor.Mode.JSON, {"extra_body": {"response_format": schema_format}}
    return instructor.Mode.JSON_SCHEMA, {}


def test_tools_mode_sync_fills_the_schema_through_the_sdk(llama_sdk: Sdk) -> None:
    client = instructor.from_openai(llama_sdk.client(), mode=instructor.Mode.TOOLS)
    city = client.chat.completions.create(**ASK)
    assert isinstance(city, City) and city.name
    record = assert_charged_and_logged(llama_sdk)
    assert record.request["tool_choice"]["function"]["name"] == "City"
    spent, count = llama_sdk.spent(), len(llama_sdk.calls())
    assert client.chat.completions.create(**ASK).model_dump() == city.model_dump()
    assert_cache_hit(llama_sdk, spent, count)


async def test_tools_mode_async_fills_the_schema_through_the_sdk(llama_sdk: Sdk) -> None:
    client = instructor.from_openai(llama_sdk.async_client(), mode=instructor.Mode.TOOLS)
    city = await client.chat.completions.create(**ASK)
    assert isinstance(city, City) and city.name
    assert_charged_and_logged(llama_sdk)
    spent, count = llama_sdk.spent(), len(llama_sdk.calls())
    assert (await client.chat.completions.create(**ASK)).model_dump() == city.model_dump()
    assert_cache_hit(llama_sdk, spent, count)


def test_json_mode_sync_parses_through_the_sdk(sdk: Sdk) -> None:
    mode, extra = json_mode(sdk)
    client = instructor.from_openai(sdk.client(), mode=mode)
    ask = {**ASK, **extra}
    answer = client.chat.completions.create(**ask)
    assert isinstance(answer, City) and answer.name
    record = assert_charged_and_logged(sdk)
    assert record.request["response_format"]["type"] in ("json_object", "json_schema")
    spent, count = sdk.spent(), len(sdk.calls())
    assert client.chat.completions.create(**ask).model_dump() == answer.model_dump()
    assert_cache_hit(sdk, spent, count)


async def test_json_mode_async_parses_through_the_sdk(sdk: Sdk) -> None:
    mode, extra = json_mode(sdk)
    client = instructor.from_openai(sdk.async_client(), mode=mode)
    ask = {**ASK, **extra}
    answer = await client.chat.completions.create(**ask)
    assert isinstance(answer, City) and answer.name
    assert_charged_and_logged(sdk)
    spent, count = sdk.spent(), len(sdk.calls())
    assert (await client.chat.completions.create(**ask)).model_dump() == answer.model_dump()
    assert_cache_hit(sdk, spent, count)


def test_the_budget_refuses_instructors_call_before_it_is_sent(llama_sdk: Sdk) -> None:
    tiny = Budget(total_usd=1e-9, prices=PRICES)
    with OpenAI(base_url=llama_sdk.base_url, api_key="sk-compat", budget=tiny) as sdk_client:
        client = instructor.from_openai(sdk_client, mode=instructor.Mode.TOOLS)
        with pytest.raises(InstructorRetryException) as refused:
            client.chat.completions.create(**ASK)
    assert isinstance(refused.value.__cause__, BudgetExceededError) and tiny.spent() == 0.0
