"""The drop-in client against a real llama.cpp server, in the style of the openai package's README."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import blackbox_sdk
from blackbox_sdk import AsyncOpenAI, OpenAI, wrap

MODEL = "smollm2"
HELLO = [{"role": "user", "content": "Say hello in three words."}]


@pytest.fixture
def client(llama_server: str) -> OpenAI:
    return OpenAI(base_url=llama_server, api_key="sk-test")


def test_chat_create_returns_the_openai_type_with_blackbox_info(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.blackbox.call_id.startswith("bb-")
    assert completion.blackbox.cache_hit is False
    assert "blackbox" not in completion.model_dump()


def test_streaming_yields_chat_completion_chunks_like_openai(client: OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0, stream=True)
    assert isinstance(stream, openai.Stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert "".join(pieces) == whole.choices[0].message.content


def test_stream_usage_is_counted_when_the_server_sends_none(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert stream.blackbox.usage_counted is True


def test_stream_as_context_manager_closes(client: OpenAI) -> None:
    with client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, stream=True) as stream:
        first = next(iter(stream))
    assert isinstance(first, ChatCompletionChunk)
    assert stream.response.is_closed


async def test_async_create_and_stream(llama_server: str) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test")
    completion = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    assert isinstance(completion, ChatCompletion)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == completion.choices[0].message.content
    await client.close()


def test_legacy_completions(client: OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert isinstance(completion, Completion)
    assert completion.choices[0].text


def test_with_raw_response_gives_headers_and_parse(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert raw.headers.get("content-type", "").startswith("application/json")
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.blackbox.call_id == raw.blackbox.call_id


def test_client_level_with_raw_response(client: OpenAI) -> None:
    raw = client.with_raw_response.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert isinstance(raw.parse(), ChatCompletion)


def test_with_streaming_response_reads_lines(client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(model=MODEL, messages=HELLO, max_tokens=4) as response:
        body = "".join(response.iter_lines())
    assert '"choices"' in body


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_streaming_view_read_whole_is_charged_its_usage_and_one_read_in_pieces_its_worst_case(
    kind: str, llama_server: str, tmp_path: Path
) -> None:
    """`with_streaming_response.create` without `stream`: a body the caller read whole (`read`, `parse`) is charged
    from its usage and logged with its answer, as `with_raw_response` is; read in lines, the SDK saw none of it."""
    budget = blackbox_sdk.Budget(prices={MODEL: {"input": 1.0, "output": 1.0}}, ledger=str(tmp_path / "ledger.db"))
    options: dict[str, object] = {"base_url": llama_server, "api_key": "sk-test", "budget": budget, "log": tmp_path / "calls.db"}
    asked = {"model": MODEL, "messages": HELLO, "max_tokens": 64, "temperature": 0}

    def ask() -> tuple[ChatCompletion, str]:
        client = OpenAI(**options)  # type: ignore[arg-type]
        with client.chat.completions.with_streaming_response.create(**asked) as response:
            whole = response.parse()
        with client.chat.completions.with_streaming_response.create(**asked) as response:
            lines = "".join(response.iter_lines())
        client.close()
        return whole, lines

    async def ask_async() -> tuple[ChatCompletion, str]:
        client = AsyncOpenAI(**options)  # type: ignore[arg-type]
        async with client.chat.completions.with_streaming_response.create(**asked) as response:
            whole = await response.parse()
        async with client.chat.completions.with_streaming_response.create(**asked) as response:
            lines = "".join([line async for line in response.iter_lines()])
        await client.close()
        return whole, lines

    whole, lines = ask() if kind == "sync" else asyncio.run(ask_async())
    assert whole.usage is not None and '"choices"' in lines
    log = blackbox_sdk.CallLog(tmp_path / "calls.db")
    read, pieces = list(log.calls())
    log.close()
    assert read.cost_usd == pytest.approx((whole.usage.prompt_tokens + whole.usage.completion_tokens) * 1e-6)  # the body's usage
    assert read.candidates == [whole.choices[0].message.content]
    assert pieces.cost_usd > read.cost_usd and pieces.candidates == []  # the reserved worst case: 64 output tokens and the margin
    assert budget.report().spent_usd == pytest.approx(read.cost_usd + pieces.cost_usd)


async def test_async_raw_paths_are_awaited_accounted_and_logged(llama_server: str, tmp_path: Path) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", log=tmp_path / "calls.db")
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=4)
    completion = raw.parse()  # openai's LegacyAPIResponse: parse() is synchronous on the async client too
    assert isinstance(completion, ChatCompletion) and completion.blackbox.call_id == raw.blackbox.call_id
    raw = await client.with_raw_response.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert isinstance(raw.parse(), ChatCompletion)
    async with client.chat.completions.with_streaming_response.create(model=MODEL, messages=HELLO, max_tokens=4) as response:
        body = "".join([line async for line in response.iter_lines()])
    assert '"choices"' in body
    records = list(client.options.log.calls())
    assert [r.error for r in records] == [None, None, None] and all(r.extra["requests"] == 1 for r in records)
    await client.close()


def test_models_list_passes_through(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_with_options_returns_our_client_and_leaves_the_original(client: OpenAI) -> None:
    other = client.with_options(max_retries=5, timeout=30.0)
    assert isinstance(other, OpenAI)
    assert other.max_retries == 5 and client.max_retries == openai.DEFAULT_MAX_RETRIES
    assert other.timeout == 30.0
    assert other.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3).choices


def test_wrap_an_existing_openai_client(llama_server: str) -> None:
    raw_client = openai.OpenAI(base_url=llama_server, api_key="sk-test", max_retries=4)
    client = wrap(raw_client)
    assert client.max_retries == 4
    assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3).blackbox.call_id


def test_module_level_client(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blackbox_sdk, "api_key", "sk-test")
    monkeypatch.setattr(blackbox_sdk, "base_url", llama_server)
    completion = blackbox_sdk.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
    assert isinstance(completion, ChatCompletion)


def test_n_is_honoured_when_the_server_ignores_it(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, n=5, max_tokens=5, temperature=1.0, seed=7)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3, 4]
    assert completion.blackbox.requests == 5
    single = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=1.0, seed=7)
    assert completion.usage.prompt_tokens == 5 * single.usage.prompt_tokens
    assert len({c.message.content for c in completion.choices}) > 1


def test_stored_answers_and_fresh_ones_of_a_seeded_call_are_those_it_gets_without_a_cache(llama_server: str, tmp_path: Path) -> None:
    """The fresh answers' seeds go on after the stored ones': they were seed, seed + 1, ... again, so the
    request's first answer came back twice (stored, then sent for anew with the same seed)."""
    question = {"model": MODEL, "messages": [{"role": "user", "content": "Write one random word."}], "max_tokens": 6, "temperature": 1.5, "seed": 7}
    plain = OpenAI(base_url=llama_server, api_key="sk-test").chat.completions.create(**question, n=3)
    cached = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache")
    cached.chat.completions.create(**question)
    mixed = cached.chat.completions.create(**question, n=3)
    assert mixed.blackbox.cached_candidates == 1 and mixed.blackbox.requests == 2
    assert [c.message.content for c in mixed.choices] == [c.message.content for c in plain.choices]


def test_a_seed_in_extra_body_seeds_the_fan_out_as_a_seed_given_by_name_does(client: OpenAI) -> None:
    """The server ignores `n`: each fanned-out request gets seed, seed + 1, ...; a seed in `extra_body` (sent
    last) took every request's place, so the n answers were one answer n times."""
    question = {"model": MODEL, "messages": [{"role": "user", "content": "Write one random word."}], "max_tokens": 6, "temperature": 1.5, "n": 3}
    named = client.chat.completions.create(**question, seed=7)
    in_body = client.chat.completions.create(**question, extra_body={"seed": 7})
    assert [c.message.content for c in in_body.choices] == [c.message.content for c in named.choices]
    assert len({c.message.content for c in in_body.choices}) > 1


def test_streamed_n_gives_every_index(client: OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=4, temperature=1.0, stream=True)
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1, 2] and all(texts.values())


async def test_async_n_fans_out_concurrently(llama_server: str) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test")
    completion = await client.chat.completions.create(model=MODEL, messages=HELLO, n=3, max_tokens=4, temperature=1.0)
    assert len(completion.choices) == 3
    await client.close()


def test_unreachable_endpoint_raises_openai_connection_error() -> None:
    from blackbox_sdk.local import free_port

    client = OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3)
