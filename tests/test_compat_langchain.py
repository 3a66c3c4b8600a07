"""langchain-openai's ChatOpenAI on the SDK's sync and async clients, on both real backends.

ChatOpenAI takes the clients as `client` / `async_client` (the `chat.completions` resources) and
`root_client` / `root_async_client` (the clients themselves, for `parse` and the Responses API).
`invoke` and `ainvoke` go through `with_raw_response.create`, and `with_structured_output` through
`with_raw_response.parse`: a whole raw call runs the SDK's whole pipeline (cache, budget, log) and
keeps its HTTP response (docs/client.md), so `invoke` and streams alike repeat from the cache.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

pytest.register_assert_rewrite("compat")  # before its import: its asserts then explain failures
from compat import MODEL, QUESTION, Sdk, assert_cache_hit, assert_charged_and_logged

pytest_plugins = ["compat"]  # the llama_sdk, hf_sdk and sdk fixtures


class City(BaseModel):
    """The structured answer asked for."""

    name: str


def chat_model(sdk: Sdk, **options: Any) -> ChatOpenAI:
    """A ChatOpenAI whose every request goes through the SDK's clients."""
    sync, asynchronous = sdk.client(), sdk.async_client()
    options = {"max_tokens": 8, "temperature": 0, **options}
    return ChatOpenAI(
        model=MODEL, client=sync.chat.completions, async_client=asynchronous.chat.completions,
        root_client=sync, root_async_client=asynchronous, **options,
    )


def structured(sdk: Sdk) -> Runnable[Any, Any]:
    """ChatOpenAI held to `City` the way each backend supports: json_schema on `hf:`; on llama.cpp,
    json_mode with the schema under `"schema"` (its server takes no json_schema format)."""
    llm = chat_model(sdk, max_tokens=24)
    if sdk.backend == "hf":
        return llm.with_structured_output(City, method="json_schema")
    schema_format = {"type": "json_object", "schema": City.model_json_schema()}
    return llm.with_structured_output(City, method="json_mode", response_format=schema_format)


def test_invoke_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    llm = chat_model(sdk)
    message = llm.invoke(QUESTION)  # ChatOpenAI sends through the raw view; whole answers still use the cache
    assert isinstance(message.content, str) and message.content
    record = assert_charged_and_logged(sdk)
    assert record.candidates == [message.content]
    spent, count = sdk.spent(), len(sdk.calls())
    assert llm.invoke(QUESTION).content == message.content
    assert_cache_hit(sdk, spent, count)


async def test_ainvoke_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    llm = chat_model(sdk)
    message = await llm.ainvoke(QUESTION)
    assert isinstance(message.content, str) and message.content
    record = assert_charged_and_logged(sdk)
    assert record.candidates == [message.content]
    spent, count = sdk.spent(), len(sdk.calls())
    assert (await llm.ainvoke(QUESTION)).content == message.content
    assert_cache_hit(sdk, spent, count)


def test_stream_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    llm = chat_model(sdk)
    text = "".join(chunk.text for chunk in llm.stream(QUESTION))
    assert text
    assert_charged_and_logged(sdk)
    spent, count = sdk.spent(), len(sdk.calls())
    assert "".join(chunk.text for chunk in llm.stream(QUESTION)) == text
    assert_cache_hit(sdk, spent, count)


async def test_astream_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    llm = chat_model(sdk)
    text = "".join([chunk.text async for chunk in llm.astream(QUESTION)])
    assert text
    assert_charged_and_logged(sdk)
    spent, count = sdk.spent(), len(sdk.calls())
    assert "".join([chunk.text async for chunk in llm.astream(QUESTION)]) == text
    assert_cache_hit(sdk, spent, count)


def test_with_structured_output_parses_through_the_sdk(sdk: Sdk) -> None:
    city = structured(sdk).invoke(QUESTION)
    assert isinstance(city, City) and city.name
    record = assert_charged_and_logged(sdk)
    assert record.request["response_format"]["type"] in ("json_object", "json_schema")


async def test_async_with_structured_output_parses_through_the_sdk(sdk: Sdk) -> None:
    city = await structured(sdk).ainvoke(QUESTION)
    assert isinstance(city, City) and city.name
    assert_charged_and_logged(sdk)


def test_invoke_on_the_responses_api_repeats_from_the_cache(hf_sdk: Sdk) -> None:
    llm = chat_model(hf_sdk, use_responses_api=True)  # ChatOpenAI then calls responses.with_raw_response.create
    first = llm.invoke(QUESTION)
    record = assert_charged_and_logged(hf_sdk)
    assert record.route == "responses"
    spent, count = hf_sdk.spent(), len(hf_sdk.calls())
    assert llm.invoke(QUESTION).text == first.text
    assert_cache_hit(hf_sdk, spent, count)


async def test_ainvoke_on_the_responses_api_repeats_from_the_cache(hf_sdk: Sdk) -> None:
    llm = chat_model(hf_sdk, use_responses_api=True)  # through the async client's responses.with_raw_response.create
    first = await llm.ainvoke(QUESTION)
    assert assert_charged_and_logged(hf_sdk).route == "responses"
    spent, count = hf_sdk.spent(), len(hf_sdk.calls())
    assert (await llm.ainvoke(QUESTION)).text == first.text
    assert_cache_hit(hf_sdk, spent, count)
