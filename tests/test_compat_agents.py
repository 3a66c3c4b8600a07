"""openai-agents on the SDK's AsyncOpenAI, on both real backends: `Runner.run` and `Runner.run_streamed`
with `OpenAIChatCompletionsModel`, and `Runner.run` with `OpenAIResponsesModel` (the agents SDK's
default, the Responses API) on the `hf:` backend (llama.cpp's server has no /responses).
Tracing is off: it would export to OpenAI's servers, which these machines do not reach.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner, set_tracing_disabled

pytest.register_assert_rewrite("compat")  # before its import: its asserts then explain failures
from compat import MODEL, QUESTION, Sdk, assert_cache_hit, assert_charged_and_logged

pytest_plugins = ["compat"]  # the llama_sdk, hf_sdk and sdk fixtures

SETTINGS = ModelSettings(max_tokens=8, temperature=0)


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    """No trace export for these tests."""
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def chat_agent(sdk: Sdk) -> Agent:
    """An agent whose model is the SDK's AsyncOpenAI through the Chat Completions API."""
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=sdk.async_client())
    return Agent(name="geographer", instructions="Answer in one word.", model=model, model_settings=SETTINGS)


async def test_runner_run_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    agent = chat_agent(sdk)
    result = await Runner.run(agent, QUESTION)
    assert isinstance(result.final_output, str) and result.final_output
    record = assert_charged_and_logged(sdk)
    assert record.candidates == [result.final_output]
    spent, count = sdk.spent(), len(sdk.calls())
    assert (await Runner.run(agent, QUESTION)).final_output == result.final_output
    assert_cache_hit(sdk, spent, count)


async def test_runner_run_streamed_goes_through_the_sdk_and_repeats_from_its_cache(sdk: Sdk) -> None:
    agent = chat_agent(sdk)

    async def streamed() -> tuple[str, int]:
        """The streamed run's final output and how many events it sent."""
        run = Runner.run_streamed(agent, QUESTION)
        events = [event async for event in run.stream_events()]
        return run.final_output, len(events)

    text, events = await streamed()
    assert isinstance(text, str) and text and events > 1
    assert_charged_and_logged(sdk)
    spent, count = sdk.spent(), len(sdk.calls())
    assert (await streamed())[0] == text
    assert_cache_hit(sdk, spent, count)


async def test_runner_run_on_the_responses_api_goes_through_the_sdk(hf_sdk: Sdk) -> None:
    model = OpenAIResponsesModel(model=MODEL, openai_client=hf_sdk.async_client())
    agent = Agent(name="geographer", instructions="Answer in one word.", model=model, model_settings=SETTINGS)
    result = await Runner.run(agent, QUESTION)
    assert isinstance(result.final_output, str) and result.final_output
    assert_charged_and_logged(hf_sdk)
    spent, count = hf_sdk.spent(), len(hf_sdk.calls())
    assert (await Runner.run(agent, QUESTION)).final_output == result.final_output
    assert_cache_hit(hf_sdk, spent, count)
