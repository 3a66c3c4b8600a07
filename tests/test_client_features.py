"""Cache, budget and call log on the real path: the SDK client against a real llama.cpp server."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, Cache, CallLog, OpenAI

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is 26 plus 28?"}]
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture
def log(tmp_path: Path) -> CallLog:
    return CallLog(tmp_path / "calls.db")


@pytest.fixture
def client(llama_server: str, cache: Cache, log: CallLog) -> OpenAI:
    return OpenAI(base_url=llama_server, api_key="sk-secret-key-123", cache=cache, log=log)


def ask(client: OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0.9, "seed": 11, **kwargs}
    return client.chat.completions.create(**params)


def texts(completion: openai.types.chat.ChatCompletion) -> list[str | None]:
    return [c.message.content for c in completion.choices]


def test_a_repeated_request_is_served_from_the_cache_for_free(client: OpenAI, log: CallLog) -> None:
    first = ask(client, n=3)
    again = ask(client, n=3)
    assert texts(again) == texts(first)
    assert again.blackbox.cache_hit and again.blackbox.requests == 0 and again.blackbox.cost_usd == 0.0
    assert not first.blackbox.cache_hit
    assert log.get(again.blackbox.call_id).cache_hit is True


def test_a_bucket_serves_fewer_and_tops_up_more(client: OpenAI) -> None:
    three = ask(client, n=3)
    two = ask(client, n=2)
    assert texts(two) == texts(three)[:2] and two.blackbox.cache_hit
    five = ask(client, n=5)
    assert texts(five)[:3] == texts(three)
    assert five.blackbox.cached_candidates == 3 and five.blackbox.requests == 2 and not five.blackbox.cache_hit


def test_refresh_replaces_the_bucket_and_write_only_adds_to_it(client: OpenAI) -> None:
    ask(client, n=2, seed=None)
    fresh = ask(client, n=2, seed=None, cache="refresh")
    assert fresh.blackbox.cached_candidates == 0 and fresh.blackbox.requests >= 1
    assert texts(ask(client, n=2, seed=None)) == texts(fresh)
    more = ask(client, n=2, seed=None, cache="write")
    later = ask(client, n=4, seed=None)
    assert later.blackbox.cache_hit and texts(later) == texts(fresh) + texts(more)


def test_read_only_and_off_modes_do_not_write(client: OpenAI) -> None:
    ask(client, cache="read")
    assert not ask(client, cache="read").blackbox.cache_hit
    ask(client, cache="off")
    assert not ask(client).blackbox.cache_hit
    assert ask(client).blackbox.cache_hit


def test_a_finished_stream_is_stored_and_replayed_as_a_real_stream(client: OpenAI) -> None:
    options = {"stream": True, "stream_options": {"include_usage": True}}
    live = ask(client, **options)
    live_chunks = list(live)
    replay = ask(client, **options)
    assert isinstance(replay, openai.Stream) and replay.blackbox.cache_hit
    replay_chunks = list(replay)
    content = lambda chunks: [c.choices[0].delta.content for c in chunks if c.choices]  # noqa: E731
    assert content(replay_chunks) == content(live_chunks)
    assert replay_chunks[-1].usage == live_chunks[-1].usage and replay_chunks[-1].choices == []


def test_a_stream_closed_early_is_never_stored_but_is_logged(client: OpenAI, log: CallLog) -> None:
    stream = ask(client, stream=True, max_tokens=16)
    next(iter(stream))
    stream.close()
    record = log.get(stream.blackbox.call_id)
    assert record.error is not None and "before its end" in record.error
    assert not ask(client, stream=True, max_tokens=16).blackbox.cache_hit


def test_whole_and_streamed_requests_share_a_bucket(client: OpenAI) -> None:
    whole = ask(client, n=2)
    stream = ask(client, n=2, stream=True)
    pieces: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + (choice.delta.content or "")
    assert stream.blackbox.cache_hit and [pieces[0], pieces[1]] == texts(whole)


async def test_async_streams_are_cached_too(llama_server: str, cache: Cache) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", cache=cache)
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 6, "seed": 3, "stream": True}
    first = "".join([c.choices[0].delta.content or "" async for c in await client.chat.completions.create(**params) if c.choices])
    replay = await client.chat.completions.create(**params)
    assert replay.blackbox.cache_hit
    assert "".join([c.choices[0].delta.content or "" async for c in replay if c.choices]) == first
    await client.close()


def test_corrupt_cache_entries_are_dropped_and_refetched(client: OpenAI, cache: Cache) -> None:
    first = ask(client)
    key = cache.key(route="chat.completions", endpoint=client._core.endpoint,
                    params={"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0.9, "seed": 11})
    assert cache.get(key)
    with sqlite3.connect(cache.directory / "cache.db") as db:  # damage every stored value on disk
        db.execute("UPDATE Cache SET value = ?", ("{not json",))
    again = ask(client)
    assert not again.blackbox.cache_hit and texts(again) == texts(first)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"choice": {"message": "not an object", "finish_reason": "stop"}}, id="message-not-an-object"),
        pytest.param({"choice": {"message": {"content": 5}}}, id="text-not-a-string"),
        pytest.param({"choice": {"message": {"content": "x", "tool_calls": "call"}}}, id="tool-calls-not-a-list"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"choices": 5}]}, id="chunk-choices-not-a-list"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"choices": ["a"]}]}, id="chunk-choice-not-an-object"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"choices": [{"delta": "x"}]}]}, id="delta-not-an-object"),
        pytest.param({"choice": {"message": {"content": "x"}, "finish_reason": 7}}, id="finish-reason-a-number"),
        pytest.param({"choice": {"message": {"content": "x", "role": 5}}}, id="role-a-number"),
        pytest.param({"choice": {"message": {"content": "x"}, "logprobs": 5}}, id="logprobs-a-number"),
        pytest.param({"choice": {"message": {"tool_calls": [{"id": "a", "type": "function", "function": "f"}]}}}, id="function-not-an-object"),
        pytest.param({"choice": {"message": {"tool_calls": [{"id": 5, "type": "function", "function": {"name": 3, "arguments": 4}}]}}}, id="call-name-a-number"),
        pytest.param({"choice": {"message": {"function_call": {"name": "f", "arguments": 4}}}}, id="function-call-arguments-a-number"),
        pytest.param({"choice": {"message": {"content": "x"}}, "meta": {"id": 5, "created": "x"}}, id="id-a-number"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"choices": [{"delta": {"content": "x"}, "finish_reason": 7}]}]}, id="chunk-finish-reason-a-number"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"model": 5, "choices": [{"delta": {"content": "x"}}]}]}, id="chunk-model-a-number"),
        pytest.param({"choice": {"message": {"content": "x"}}, "chunks": [{"choices": [{"delta": {"tool_calls": [{"index": "x", "function": {"name": "f"}}]}}]}]}, id="chunk-call-index-a-text"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_stored_entries_shaped_unlike_an_answer_are_skipped_and_sent_for(tmp_path: Path, entry: dict[str, object], stream: bool) -> None:
    """Such entries (a tampered folder, a shared Redis) raised AttributeError/TypeError when replayed."""
    sent: list[httpx2.Request] = []
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "live"}, "finish_reason": "stop"}]}]
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "live"}, "finish_reason": "stop"}]}

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        if json.loads(request.content).get("stream"):
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=whole)

    cache = Cache(tmp_path / "cache")
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=cache, http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    key = cache.key(route="chat.completions", endpoint=client._core.endpoint, params={"model": MODEL, "messages": QUESTION})
    cache.extend(key, [{"meta": {}, "completion_tokens": 1, "prompt_tokens": 1, **entry}])
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, stream=stream)
    assert not answer.blackbox.cache_hit
    text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices) if stream else answer.choices[0].message.content
    assert text == "live" and len(sent) == 1


@pytest.mark.parametrize("route", ["chat.completions", "embeddings"])
def test_a_stored_entry_shaped_unlike_an_answer_is_warned_of_once_per_key(tmp_path: Path, caplog: pytest.LogCaptureFixture, route: str) -> None:
    """A cache that never hit because its entries were another version's gave no sign why: one warning per key names it."""
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "live"}, "finish_reason": "stop"}]}
    vectors = {"object": "list", "model": MODEL, "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    answer = vectors if route == "embeddings" else whole
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, json=answer))
    cache = Cache(tmp_path / "cache")
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=cache, http_client=httpx2.Client(transport=transport))
    asked = f"never asked before: {tmp_path}"  # a key of this test's own (each key is warned of once per process)
    params: dict[str, Any] = {"model": MODEL, "input": asked, "encoding_format": "float"} if route == "embeddings" else {"model": MODEL, "messages": [{"role": "user", "content": asked}]}
    key = cache.key(route=route, endpoint=client._core.endpoint, params=params)
    planted = {"response": {"data": "old"}} if route == "embeddings" else {"meta": {}, "choice": {"message": "old"}, "completion_tokens": 1, "prompt_tokens": 1}
    cache.extend(key, [planted])
    create = client.embeddings.create if route == "embeddings" else client.chat.completions.create
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        for _ in range(3):
            assert not create(**params).blackbox.cache_hit
            cache.clear()  # the fresh answer stored beside it would be the next call's hit
            cache.extend(key, [planted])
    warned = [record.getMessage() for record in caplog.records if key in record.getMessage()]
    assert len(warned) == 1 and "skipped" in warned[0], caplog.text
    client.close()
    cache.close()


def test_a_whole_answer_without_a_finish_reason_is_stored_and_its_hit_is_the_miss(tmp_path: Path) -> None:
    """A JSON body that parsed is whole whatever its finish_reason (a stream is whole only once each choice has one):
    a server that leaves it out is cached, and the hit, whole or replayed as a stream, gives back the same null."""
    sent: list[httpx2.Request] = []
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "live answer"}}]}

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json=whole)

    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=tmp_path / "cache", http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    miss = client.chat.completions.create(model=MODEL, messages=QUESTION)
    hit = client.chat.completions.create(model=MODEL, messages=QUESTION)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    chunks = [chunk for chunk in stream if chunk.choices]
    assert not miss.blackbox.cache_hit and hit.blackbox.cache_hit and stream.blackbox.cache_hit and len(sent) == 1
    assert hit.to_dict() == miss.to_dict() and miss.choices[0].finish_reason is None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "live answer" and chunks[-1].choices[0].finish_reason is None
    assert stream.blackbox.error is None
    client.close()


def _with_one_stored(tmp_path: Path, fields: dict[str, object]) -> tuple[OpenAI, Cache, list[httpx2.Request]]:
    """A client on a cache holding one stored answer ("stored", with ``fields`` over its counts) for QUESTION, its
    cache, and the requests its server (answering "live" with usage 3 + 1) is sent."""
    sent: list[httpx2.Request] = []
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "live"}, "finish_reason": "stop"}]}

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json=whole)

    cache = Cache(tmp_path / "cache")
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=cache, http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    key = cache.key(route="chat.completions", endpoint=client._core.endpoint, params={"model": MODEL, "messages": QUESTION})
    cache.extend(key, [{"meta": {}, "choice": {"message": {"content": "stored"}}, "completion_tokens": 1, "prompt_tokens": 1, **fields}])
    return client, cache, sent


@pytest.mark.parametrize("count", ["completion_tokens", "prompt_tokens"])
def test_a_stored_token_count_too_large_for_an_integer_is_skipped_and_sent_for(tmp_path: Path, count: str) -> None:
    """JSON reads 1e400 (a valid number) as infinity: int() of it raised a raw OverflowError on the hit, and storing the
    fresh answer beside it a raw ValueError (it could not be encoded again), after the call was paid."""
    client, cache, sent = _with_one_stored(tmp_path, {})
    with sqlite3.connect(cache.directory / "cache.db") as db:  # a foreign writer's number: valid JSON, no integer
        db.execute("UPDATE Cache SET value = replace(value, ?, ?)", (f'"{count}":1', f'"{count}":1e400'))
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content == "live" and len(sent) == 1
    client.close()
    cache.close()


@pytest.mark.parametrize("value", [-5, True], ids=["negative", "a-boolean"])
@pytest.mark.parametrize("count", ["completion_tokens", "prompt_tokens"])
def test_a_stored_token_count_that_is_no_count_is_skipped_and_sent_for(tmp_path: Path, count: str, value: object) -> None:
    """A hit served a negative count as its usage (`total_tokens` below zero) and a boolean as 1."""
    client, cache, sent = _with_one_stored(tmp_path, {count: value})
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert answer.choices[0].message.content == "live" and len(sent) == 1 and answer.usage is not None and answer.usage.total_tokens == 4
    client.close()
    cache.close()


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param({"data": [5]}, id="item-not-an-object"),
        pytest.param({"data": [{"index": 0, "embedding": None}]}, id="vector-missing"),
        pytest.param({"data": [{"index": 0, "embedding": [0.5]}], "usage": "lots"}, id="usage-not-an-object"),
        pytest.param({"data": [{"index": 0, "embedding": ["x", "y"]}]}, id="vector-of-texts"),
        pytest.param({"data": [{"index": 0, "embedding": [True, 0.5]}]}, id="vector-of-booleans"),
        pytest.param({"data": [{"index": 0, "embedding": [[0.5]]}]}, id="vector-of-lists"),
        pytest.param({"data": [{"index": "x", "embedding": [0.5]}]}, id="index-a-text"),
        pytest.param({"model": 5, "data": [{"index": 0, "embedding": [0.5]}]}, id="model-a-number"),
    ],
)
def test_stored_embeddings_shaped_unlike_an_answer_are_skipped_and_sent_for(tmp_path: Path, stored: dict[str, object]) -> None:
    """Such entries (a tampered folder, a shared Redis) were served as the answer, or raised a raw AttributeError."""
    sent: list[httpx2.Request] = []
    live = {"object": "list", "model": MODEL, "data": [{"object": "embedding", "index": 0, "embedding": [0.25, 0.75]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json=live)

    cache = Cache(tmp_path / "cache")
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=cache, http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    key = cache.key(route="embeddings", endpoint=client._core.endpoint, params={"model": MODEL, "input": "hi", "encoding_format": "float"})
    cache.extend(key, [{"response": {"object": "list", "model": MODEL, **stored}}])
    answer = client.embeddings.create(model=MODEL, input="hi", encoding_format="float")
    assert answer.data[0].embedding == [0.25, 0.75] and not answer.blackbox.cache_hit and len(sent) == 1
    client.close()
    cache.close()


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param({}, id="no-output"),
        pytest.param({"output": ["x"]}, id="item-not-an-object"),
        pytest.param({"output": [{"type": "message", "content": "x"}]}, id="content-not-a-list"),
        pytest.param({"output": [{"type": "message", "content": [{"type": "output_text", "text": 5}]}]}, id="text-not-a-string"),
        pytest.param({"output": [], "events": [{"type": "response.completed"}]}, id="last-event-without-its-response"),
        pytest.param({"status": 7, "output": []}, id="status-a-number"),
        pytest.param({"id": 5, "output": []}, id="id-a-number"),
        pytest.param({"output": [{"type": "function_call", "call_id": "c", "name": 5, "arguments": "{}"}]}, id="call-name-a-number"),
        pytest.param({"output": [{"type": 5}]}, id="item-type-a-number"),
        pytest.param({"output": [{"type": "custom_tool_call", "call_id": "c", "name": "f", "input": 5}]}, id="custom-input-a-number"),
        pytest.param({"output": [{"type": "message", "role": 5, "content": []}]}, id="role-a-number"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_stored_responses_shaped_unlike_an_answer_are_skipped_and_sent_for(tmp_path: Path, stored: dict[str, Any], stream: bool) -> None:
    """Such entries (a tampered folder, a shared Redis) were served as the answer, or raised a raw AttributeError
    or TypeError when replayed as a stream."""
    sent: list[httpx2.Request] = []
    live = {"id": "resp_live", "object": "response", "created_at": 1, "model": MODEL, "status": "completed",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "live", "annotations": []}]}],
            "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3}}

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        if json.loads(request.content).get("stream"):
            sse = f"event: response.completed\ndata: {json.dumps({'type': 'response.completed', 'sequence_number': 0, 'response': live})}\n\n"
            return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=live)

    cache = Cache(tmp_path / "cache")
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", max_retries=0, cache=cache, http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    key = cache.key(route="responses", endpoint=client._core.endpoint, params={"model": MODEL, "input": "hi"})
    response = {"id": "resp_stored", "object": "response", "created_at": 1, "model": MODEL, "status": "completed", **stored}
    events = response.pop("events", None)
    cache.extend(key, [{"choice": response, "meta": {}, "completion_tokens": 1, "prompt_tokens": 1, "chunks": events}])
    answer = client.responses.create(model=MODEL, input="hi", stream=stream)
    final = [e for e in answer if e.type == "response.completed"][-1].response if stream else answer
    assert final.id == "resp_live" and len(sent) == 1
    client.close()
    cache.close()


def test_budget_refuses_before_sending_and_logs_the_refusal(llama_server: str, log: CallLog) -> None:
    budget = Budget(per_call_usd=1e-6, prices=PRICES)
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, log=log)
    with pytest.raises(BudgetExceededError) as caught:
        ask(client)
    assert caught.value.scope == "per_call" and caught.value.limit == pytest.approx(1e-6)
    assert budget.report().spent_usd == 0.0
    (record,) = list(log.calls())
    assert record.error is not None and "BudgetExceededError" in record.error and record.extra["requests"] == 0


def test_budget_settles_real_usage_and_cache_hits_cost_nothing(llama_server: str, cache: Cache) -> None:
    budget = Budget(total_usd=1.0, prices=PRICES)
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, cache=cache)
    first = ask(client, n=2)
    usage = first.usage
    expected = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    assert first.blackbox.cost_usd == pytest.approx(expected, rel=1e-6)
    assert budget.report().spent_usd == pytest.approx(expected, rel=1e-6)
    assert ask(client, n=2).blackbox.cost_usd == 0.0
    assert budget.report().spent_usd == pytest.approx(expected, rel=1e-6)


def test_shrink_policy_lowers_n_to_fit(llama_server: str) -> None:
    budget = Budget(per_call_usd=0.0002, prices=PRICES, policy="shrink")
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget)
    completion = ask(client, n=8, max_tokens=16)
    assert 1 <= len(completion.choices) < 8


def test_per_call_budget_override(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=Budget(per_call_usd=1e-6, prices=PRICES))
    assert ask(client, budget=None).choices
    with pytest.raises(BudgetExceededError):
        ask(client)


def test_every_call_is_logged_with_candidates_and_no_secret(client: OpenAI, log: CallLog, tmp_path: Path) -> None:
    completion = ask(client, n=2)
    record = log.get(completion.blackbox.call_id)
    assert record.candidates == texts(completion) and record.model == MODEL
    assert record.usage["completion_tokens"] == completion.usage.completion_tokens
    assert record.endpoint_host == "127.0.0.1"
    client.feedback(completion.blackbox.call_id, label="correct", reference="54")
    assert [f.label for f in log.feedback_for(completion.blackbox.call_id)] == ["correct"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("calls.db*"))
    assert b"sk-secret-key-123" not in raw


def test_errors_are_logged_and_reraised_unchanged(tmp_path: Path, log: CallLog) -> None:
    http = httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(404, json={"error": {"message": "no such model"}})))
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, log=log)
    with pytest.raises(openai.NotFoundError):
        ask(client)
    (record,) = list(log.calls())
    assert record.error is not None and record.error.startswith("NotFoundError")


@pytest.mark.parametrize(("model", "cap", "sent_as"), [
    ("gpt-4o-mini", "max_tokens", "max_tokens"),
    ("gpt-4o-mini", "max_completion_tokens", "max_tokens"),  # alone, as the name every chat server honours (llama.cpp ignores the other)
    ("o3-mini", "max_completion_tokens", "max_completion_tokens"),  # a reasoning model refuses max_tokens
])
def test_budget_sends_the_reserved_output_cap_under_a_name_the_server_honours(model: str, cap: str, sent_as: str) -> None:
    sent: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        body = {"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "54"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}
        return httpx2.Response(200, json=body)

    budget = Budget(per_call_usd=0.001, policy="shrink")
    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, budget=budget)
    client.chat.completions.create(model=model, messages=QUESTION, **{cap: 100_000})
    assert 16 <= sent[0][sent_as] < 100_000
    assert ("max_tokens" in sent[0]) != ("max_completion_tokens" in sent[0])  # never both


CRASHING_CALLER = """
import sys, time, httpx2
from blackbox_sdk import Budget, OpenAI
def hang(request):
    print("sent", flush=True)
    time.sleep(600)
budget = Budget(total_usd=1.0, prices={"gpt-4o-mini": {"input": 1.0, "output": 2.0}}, ledger=sys.argv[1])
client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", budget=budget, log=sys.argv[2],
                http_client=httpx2.Client(transport=httpx2.MockTransport(hang)))
client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
"""


def test_a_crash_mid_call_leaves_the_ledger_consistent_and_no_half_record(tmp_path: Path) -> None:
    ledger, log_path = tmp_path / "ledger.db", tmp_path / "calls.db"
    child = subprocess.Popen([sys.executable, "-c", CRASHING_CALLER, str(ledger), str(log_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "sent"  # reserved, request in flight
    before = Budget(total_usd=1.0, prices={"gpt-4o-mini": {"input": 1.0, "output": 2.0}}, ledger=ledger).report()
    assert before.outstanding_reservations == 1  # the in-flight call holds its worst case
    child.send_signal(signal.SIGKILL)
    child.wait()
    reopened = Budget(total_usd=1.0, prices={"gpt-4o-mini": {"input": 1.0, "output": 2.0}}, ledger=ledger)
    report = reopened.report()
    assert report.outstanding_reservations == 0 and report.reserved_usd == 0.0 and report.spent_usd == 0.0
    assert list(CallLog(log_path).calls()) == []
