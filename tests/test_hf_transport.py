"""The httpx2 transport through the real openai client, answered by the real SmolLM2 GGUF."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from blackbox_sdk.local import (
    HFBackend,
    HFTransport,
    default_gguf_path,
    local_async_http_client,
    local_http_client,
)

pytest_plugins = ["local_model"]  # the backend fixture (this module has its own clients)
BASE_URL = "http://hf.local/v1"
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
GREEDY: dict[str, Any] = {"model": "local", "messages": COUNT, "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def client(backend: HFBackend) -> Iterator[openai.OpenAI]:
    """A real openai client whose HTTP goes to the local model."""
    with openai.OpenAI(
        api_key="x", base_url=BASE_URL, http_client=local_http_client(default_gguf_path()), max_retries=0
    ) as openai_client:
        yield openai_client


@pytest.fixture(scope="module")
def greedy_reply(client: openai.OpenAI) -> ChatCompletion:
    """The greedy, non-streamed reply that streamed variants must reproduce."""
    return client.chat.completions.create(**GREEDY)


def _text(chunks: list[ChatCompletionChunk], index: int = 0) -> str:
    """The content of one choice of a chat stream, joined."""
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


def test_chat_returns_a_chat_completion_with_the_tokenizers_usage(
    backend: HFBackend, greedy_reply: ChatCompletion
) -> None:
    usage = greedy_reply.usage
    assert isinstance(greedy_reply, ChatCompletion)
    assert greedy_reply.model == backend.model_id
    assert greedy_reply.choices[0].message.role == "assistant"
    assert greedy_reply.choices[0].finish_reason == "length"
    assert usage is not None
    assert usage.prompt_tokens == backend.chat_prompt_tokens(COUNT)
    assert usage.completion_tokens == 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_n_three_samples_three_choices_in_one_generate(
    client: openai.OpenAI, backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate = backend.model.generate
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["generation_config"].num_return_sequences)
        return generate(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", counted)
    reply = client.chat.completions.create(model="local", messages=COUNT, max_tokens=6, n=3, seed=1)
    assert calls == [3]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None and 3 <= reply.usage.completion_tokens <= 18


def test_same_seed_gives_the_same_samples_and_another_seed_differs(client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str | None]:
        reply = client.chat.completions.create(model="local", messages=COUNT, max_tokens=8, n=2, seed=seed)
        return [c.message.content for c in reply.choices]

    first = sample(11)
    assert sample(11) == first
    assert sample(12) != first


def test_stop_cuts_the_text_before_the_stop_string(client: openai.OpenAI, greedy_reply: ChatCompletion) -> None:
    full = greedy_reply.choices[0].message.content or ""
    stop = full.strip()[-1]
    reply = client.chat.completions.create(**GREEDY, stop=[stop, "never-seen"])
    cut = reply.choices[0].message.content or ""
    assert cut == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_logprobs_are_log_probabilities_of_the_greedy_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(**GREEDY, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
    assert content and len(content) == reply.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)  # greedy takes the best token
        assert bytes(token.bytes or []) == token.token.encode()


def test_stream_yields_chunks_that_join_to_the_non_streamed_text(
    client: openai.OpenAI, greedy_reply: ChatCompletion
) -> None:
    chunks = list(client.chat.completions.create(**GREEDY, stream=True))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1
    assert _text(chunks) == greedy_reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == greedy_reply.choices[0].finish_reason


def test_stream_include_usage_ends_with_a_usage_only_chunk(
    client: openai.OpenAI, greedy_reply: ChatCompletion
) -> None:
    chunks = list(client.chat.completions.create(**GREEDY, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage == greedy_reply.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_first_chunk_arrives_while_the_model_is_still_generating(client: openai.OpenAI, backend: HFBackend) -> None:
    stream = client.chat.completions.create(**{**GREEDY, "max_tokens": 16}, stream=True)
    first_content = next(c for c in stream if c.choices[0].delta.content)
    generating = backend.lock.locked()
    rest = list(stream)
    assert first_content.choices[0].delta.content
    assert generating
    assert rest[-1].choices[0].finish_reason is not None
    assert not backend.lock.locked()


def test_stream_with_n_two_streams_each_choice_with_its_index(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="local", messages=COUNT, max_tokens=4, n=2, seed=5, stream=True))
    finished = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert finished == [0, 1]
    assert _text(chunks, 0) and _text(chunks, 1)


async def test_async_stream_matches_the_sync_reply(greedy_reply: ChatCompletion) -> None:
    async with openai.AsyncOpenAI(
        api_key="x", base_url=BASE_URL, http_client=local_async_http_client(default_gguf_path()), max_retries=0
    ) as client:
        stream = await client.chat.completions.create(**GREEDY, stream=True)
        chunks = [chunk async for chunk in stream]
        reply = await client.chat.completions.create(**GREEDY)
    assert _text(chunks) == greedy_reply.choices[0].message.content
    assert reply.choices[0].message.content == greedy_reply.choices[0].message.content


def test_completions_create_answers_the_prompt(client: openai.OpenAI, backend: HFBackend) -> None:
    prompt = "The capital of France is"
    reply = client.completions.create(model="local", prompt=prompt, max_tokens=4, temperature=0)
    streamed = list(client.completions.create(model="local", prompt=prompt, max_tokens=4, temperature=0, stream=True))
    assert isinstance(reply, Completion)
    assert reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.prompt_tokens == backend.count_tokens(prompt)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_an_agents_history_with_tool_calls_is_answered(client: openai.OpenAI) -> None:
    """An agent's chat history: a tool call (content null), the tool's answer, then a refusal part."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't say more."}]},
        {"role": "user", "content": "And tomorrow?"},
    ]
    reply = client.chat.completions.create(model="local", messages=history, max_tokens=2, temperature=0)
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens >= 1


def test_a_token_id_prompt_is_a_400_naming_the_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="local", prompt=[15, 16, 17], max_tokens=1)
    assert refused.value.param == "prompt"
    assert "token-id prompts are not supported by the local backend; send text" in refused.value.message


def test_embeddings_sent_as_base64_decode_to_the_backends_floats(client: openai.OpenAI, backend: HFBackend) -> None:
    reply = client.embeddings.create(model="local", input=["hello there", "tea"])
    expected = backend.embeddings({"input": ["hello there", "tea"], "encoding_format": "float"})
    assert isinstance(reply, CreateEmbeddingResponse)
    for got, want in zip(reply.data, expected["data"], strict=True):
        assert isinstance(got.embedding[0], float)
        assert got.embedding == pytest.approx(want["embedding"], abs=1e-6)


def test_models_list_names_the_local_model(client: openai.OpenAI, backend: HFBackend) -> None:
    assert [m.id for m in client.models.list()] == [backend.model_id]
    assert client.models.retrieve(backend.model_id).owned_by == "local"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", id="bad-messages"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]}]},
            "messages[0].content[1]",
            id="image-part",
        ),
        pytest.param({"extra_body": {"soft_prompt": "unknown"}}, "soft_prompt", id="unknown-soft-prompt"),
        pytest.param({"stream": True, "n": 0}, "n", id="stream-n-zero"),
        pytest.param({"extra_body": {"max_token": 4}}, "max_token", id="unrecognized-argument"),
        pytest.param({"stream_options": {"include_usage": True}}, "stream_options", id="stream-options-unstreamed"),
        pytest.param({"response_format": {"type": "json_object"}}, "messages", id="json-object-unsaid"),
    ],
)
def test_bad_input_raises_bad_request_before_generation(
    client: openai.OpenAI, backend: HFBackend, params: dict[str, Any], param: str
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool, backend.lock:  # the model is busy: no compute possible
        error = pool.submit(lambda: client.chat.completions.create(**{**GREEDY, **params})).exception(timeout=30)
    assert isinstance(error, openai.BadRequestError)
    assert error.param == param
    assert error.type == "invalid_request_error"


def test_unknown_route_is_a_404_with_openais_error_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.post("/fine_tuning/jobs", body={}, cast_to=object)
    assert caught.value.code == "unknown_url"


def test_stream_on_embeddings_is_openais_400_for_an_unknown_argument_not_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:  # the route exists: only the argument is unknown
        client.embeddings.create(model="smollm2", input="hi", extra_body={"stream": True})
    assert caught.value.param == "stream" and "Unrecognized request argument supplied: stream" in caught.value.message


def test_malformed_json_is_a_400(backend: HFBackend) -> None:
    with httpx2.Client(transport=HFTransport(backend), base_url=BASE_URL) as http:
        response = http.post("/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_crashing_model_is_a_500(client: openai.OpenAI, backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:  # a fault a healthy model can't produce on demand
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backend.model, "generate", crash)
    with pytest.raises(openai.InternalServerError, match="out of memory"):
        client.chat.completions.create(**GREEDY)
    with pytest.raises(openai.APIError, match="out of memory"):
        list(client.chat.completions.create(**GREEDY, stream=True))


def test_logprob_bytes_are_each_tokens_own_bytes_and_join_to_the_text(client: openai.OpenAI) -> None:
    japanese = [{"role": "user", "content": "Write one emoji and the word hello in Japanese."}]
    params: dict[str, Any] = {**GREEDY, "messages": japanese, "max_tokens": 4, "logprobs": True, "top_logprobs": 1}
    reply = client.chat.completions.create(**params)  # its characters take two tokens each
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert b"".join(bytes(entry.bytes or []) for entry in content).decode() == reply.choices[0].message.content
    assert all(entry.top_logprobs[0].bytes == entry.bytes for entry in content)  # greedy: the top token is the one drawn


def test_a_stop_string_cuts_the_streamed_logprobs_as_the_whole_ones(client: openai.OpenAI) -> None:
    params: dict[str, Any] = {**GREEDY, "max_tokens": 12, "stop": [" 2\n"], "logprobs": True}
    whole = client.chat.completions.create(**params).choices[0]
    chunks = list(client.chat.completions.create(**params, stream=True))
    streamed = [e for c in chunks for e in ((c.choices[0].logprobs and c.choices[0].logprobs.content) or [])]
    assert whole.finish_reason == "stop" and _text(chunks) == whole.message.content
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs.content]  # type: ignore[union-attr]


def test_legacy_logprob_tokens_of_a_character_split_over_tokens_join_to_the_text_and_offsets_stay_in_it(client: openai.OpenAI) -> None:
    """An emoji takes three tokens: each was listed as U+FFFD, so the tokens did not join to the text and every
    offset after it ran past the characters it stood for (past the end of the text at the end)."""
    prompt = "Write one emoji and the word hello in Japanese:"
    params: dict[str, Any] = {"model": "local", "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 1}
    choice = client.completions.create(**params).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.text_offset is not None
    assert "🌌" in choice.text and "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]
    chunks = [c.choices[0] for c in client.completions.create(**params, stream=True)]
    assert "".join(c.text for c in chunks) == choice.text
    for chunk in chunks:
        if chunk.logprobs is not None and chunk.logprobs.tokens:
            assert "".join(chunk.logprobs.tokens) == chunk.text
    assert [o for c in chunks for o in ((c.logprobs and c.logprobs.text_offset) or [])] == logprobs.text_offset
