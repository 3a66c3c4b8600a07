"""The same call through `openai.OpenAI` and `blackbox_sdk.OpenAI` against one in-process server:
what goes on the wire and what comes back agree, where a user switching clients would notice."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

import blackbox_sdk
from blackbox_sdk import Budget, OpenAI

HI = [{"role": "user", "content": "hi"}]
USAGE = {
    "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 1},
}
CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"city": "Paris"}'}, "finish_reason": "stop"}],
    "usage": USAGE, "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
}
EMBEDDING = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
CHUNKS = [
    {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    {**BASE, "choices": [], "usage": USAGE},
]


class City(pydantic.BaseModel):
    city: str


class Server:
    """Answers like OpenAI (request id header, chat, SSE, embeddings) and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        headers = {"x-request-id": "req_abc"}
        if request.url.path.endswith("/embeddings"):
            return httpx2.Response(200, json=EMBEDDING, headers=headers)
        if json.loads(request.content).get("stream"):
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in CHUNKS) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=sse.encode(), headers={**headers, "content-type": "text/event-stream"})
        return httpx2.Response(200, json=CHAT, headers=headers)

    def body(self, i: int = -1) -> dict[str, Any]:
        """The JSON body of request `i`."""
        return json.loads(self.requests[i].content)


def both(**options: Any) -> tuple[openai.OpenAI, OpenAI, Server, Server]:
    """openai's client and the SDK's, each on its own recording server."""
    plain, ours = Server(), Server()
    kwargs = {"api_key": "sk-test", "base_url": "https://api.test/v1", "max_retries": 0}
    return (
        openai.OpenAI(**kwargs, http_client=httpx2.Client(transport=httpx2.MockTransport(plain))),
        OpenAI(**kwargs, http_client=httpx2.Client(transport=httpx2.MockTransport(ours)), **options),
        plain,
        ours,
    )


def test_raw_and_streaming_views_of_embeddings_work_as_openais() -> None:
    theirs, ours, plain, mine = both()
    for client in (theirs, ours):
        raw = client.embeddings.with_raw_response.create(model="e", input="hi")
        assert raw.parse().data[0].embedding == [0.1, 0.2]
        with client.embeddings.with_streaming_response.create(model="e", input="hi") as streamed:
            assert streamed.parse().data[0].embedding == [0.1, 0.2]
    assert [r.content for r in mine.requests] == [r.content for r in plain.requests]  # no output cap added


def test_a_stream_with_no_options_comes_through_chunk_for_chunk() -> None:
    """A choice-less chunk (Azure's prompt filter results) passes, running usage stays on its chunks,
    and the include_usage chunk is the server's last count with its details, not a sum of all."""
    theirs, ours, _, _ = both()
    params: dict[str, Any] = {"model": "gpt-4o", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    expected = [chunk.to_dict() for chunk in theirs.chat.completions.create(**params)]
    assert [chunk.to_dict() for chunk in ours.chat.completions.create(**params)] == expected


def test_parse_sends_what_openais_parse_sends_and_keeps_the_request_id() -> None:
    theirs, ours, plain, mine = both()
    got = [client.chat.completions.parse(model="gpt-4o", messages=HI, response_format=City) for client in (theirs, ours)]
    assert got[1].choices[0].message.parsed == City(city="Paris")
    assert mine.body() == plain.body() and mine.body()["stream"] is False
    assert mine.requests[-1].headers["x-stainless-helper-method"] == "chat.completions.parse"
    assert got[0]._request_id == got[1]._request_id == "req_abc"


def test_the_streaming_view_of_parse_works_as_openais(tmp_path: Path) -> None:
    """openai's `parse` takes no `stream`: the SDK's streaming view hands it none (it raised TypeError)."""
    budget, log = Budget(total_usd=10.0), blackbox_sdk.CallLog(tmp_path / "calls.db")
    theirs, ours, plain, mine = both(budget=budget, log=log)
    for client in (theirs, ours):
        with client.chat.completions.with_streaming_response.parse(model="gpt-4o", messages=HI, response_format=City) as response:
            assert response.parse().choices[0].message.parsed == City(city="Paris")
    assert {**mine.body(), "max_tokens": None} == {**plain.body(), "max_tokens": None} and mine.body()["stream"] is False
    assert budget.report().spent_usd > 0 and budget.report().outstanding_reservations == 0
    log.flush()
    assert [(r.route, r.error) for r in log.calls()] == [("chat.completions", None)]


def test_parse_with_stream_raises_openais_type_error_before_sending() -> None:
    """openai's `parse` has no `stream`, so passing one is a TypeError, before anything is sent."""
    theirs, ours, plain, mine = both(budget=Budget(total_usd=10.0))
    for client in (theirs, ours):
        for method in (client.chat.completions.parse, client.chat.completions.with_raw_response.parse):
            with pytest.raises(TypeError, match="unexpected keyword argument 'stream'"):
                method(model="gpt-4o", messages=HI, response_format=City, stream=True)
    assert plain.requests == mine.requests == []


def test_an_explicit_none_and_a_generator_go_out_as_openai_sends_them() -> None:
    theirs, ours, plain, mine = both()
    for client in (theirs, ours):
        client.chat.completions.create(model="gpt-4o", messages=(m for m in HI), n=None)
    assert mine.body() == plain.body() and mine.body()["n"] is None and mine.body()["messages"] == HI


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5"])
def test_a_budget_caps_reasoning_models_with_max_completion_tokens(model: str) -> None:
    """OpenAI's o-series and gpt-5 refuse `max_tokens`: the budget's default cap goes out under the name they take."""
    _, ours, _, mine = both(budget=Budget(total_usd=10.0))
    ours.chat.completions.create(model=model, messages=HI)
    assert "max_tokens" not in mine.body() and mine.body()["max_completion_tokens"] > 0


def test_a_budget_keeps_max_tokens_for_other_models() -> None:
    _, ours, _, mine = both(budget=Budget(total_usd=10.0))
    ours.chat.completions.create(model="gpt-4o", messages=HI)
    assert mine.body()["max_tokens"] > 0 and "max_completion_tokens" not in mine.body()


def test_a_cache_hit_keeps_the_providers_fields_and_has_a_request_id(tmp_path: Path) -> None:
    _, ours, _, mine = both(cache=str(tmp_path / "cache"))
    first = ours.chat.completions.create(model="gpt-4o", messages=HI)
    hit = ours.chat.completions.create(model="gpt-4o", messages=HI)
    assert hit.blackbox.cache_hit and len(mine.requests) == 1
    assert hit.model_extra == first.model_extra == {"prompt_filter_results": CHAT["prompt_filter_results"]}
    assert first._request_id == "req_abc" and hit._request_id is None  # no request answered the hit



def test_a_whole_raw_response_has_openais_elapsed_on_a_miss_and_a_hit(tmp_path: Path) -> None:
    """`elapsed` on openai's raw response is the HTTP exchange's time; the SDK's raw response of a whole call
    raised RuntimeError for it (its body is re-encoded in a response never sent): now the exchange's, none on a hit."""
    plain, ours, _, _ = both(cache=str(tmp_path / "cache"))
    assert isinstance(plain.chat.completions.with_raw_response.create(model="gpt-4o", messages=HI).elapsed, timedelta)
    raw = ours.chat.completions.with_raw_response
    for method, extra in ((raw.create, {}), (raw.parse, {"response_format": City})):
        miss, hit = [method(model="gpt-4o", messages=HI, **extra) for _ in range(2)]
        assert not miss.blackbox.cache_hit and isinstance(miss.elapsed, timedelta)
        assert hit.blackbox.cache_hit and hit.elapsed == timedelta(0)


def test_an_answer_the_sdk_rebuilt_from_one_response_keeps_its_request_id() -> None:
    """Reranked among one response's choices, or its usage counted by the SDK: one request answered it."""
    _, ours, _, mine = both(reranker=lambda question, answers: [float(len(a)) for a in answers], rerank_n=1)
    reranked = ours.chat.completions.create(model="gpt-4o", messages=HI)
    assert len(mine.requests) == 1  # a reranker on: the SDK builds the answer it returns
    assert reranked._request_id == "req_abc"

    def no_usage(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={k: v for k, v in CHAT.items() if k != "usage"}, headers={"x-request-id": "req_def"})

    counted = OpenAI(api_key="sk-test", base_url="https://api.test/v1", max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(no_usage)))
    answer = counted.chat.completions.create(model="gpt-4o", messages=HI)
    assert answer.blackbox.usage_counted and answer._request_id == "req_def"

def test_the_module_level_client_uses_the_module_http_client(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server()
    for name, value in {"api_key": "sk-test", "base_url": "https://api.test/v1", "http_client": httpx2.Client(transport=httpx2.MockTransport(server))}.items():
        monkeypatch.setattr(blackbox_sdk, name, value)
    answer = blackbox_sdk.chat.completions.create(model="gpt-4o", messages=HI)
    assert answer.choices[0].message.content == '{"city": "Paris"}' and len(server.requests) == 1



TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ASKED: dict[str, Any] = {"model": "gpt-4o", "messages": HI, "tools": TOOLS, "logprobs": True}
LOGPROB = {"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": []}
TOOL_STREAM = [  # two tool calls, each call's arguments in pieces, logprobs on two chunks
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}]}, "logprobs": {"content": [LOGPROB]}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}, "logprobs": {"content": [LOGPROB]}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":'}}]}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}, {"index": 1, "function": {"arguments": '"Oslo"}'}}]}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
]
REFUSAL_STREAM = [
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "refusal": "I can't"}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"refusal": " help with that."}, "logprobs": {"content": None, "refusal": [LOGPROB]}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]
TOOL_ANSWER = {**CHAT, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": {"content": [LOGPROB, LOGPROB], "refusal": None}, "message": {
    "role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]}}]}
REFUSAL_ANSWER = {**CHAT, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
    "role": "assistant", "content": None, "refusal": "I can't help with that."}}]}


def cached_client(answer: dict[str, Any] | list[dict[str, Any]], tmp_path: Path) -> tuple[OpenAI, list[httpx2.Request]]:
    """The SDK with a cache, on a server that answers every request with `answer`: a whole response, or these chunks streamed."""
    requests: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        if isinstance(answer, list):
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in answer) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=answer)

    client = OpenAI(api_key="sk-test", base_url="https://api.test/v1", max_retries=0, cache=str(tmp_path / "cache"),
                    http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    return client, requests


def accumulated(chunks: list[Any]) -> Any:
    """The one choice openai's own stream accumulation builds from these chunks."""
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk if isinstance(chunk, ChatCompletionChunk) else ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion().choices[0]


def essence(choice: Any) -> dict[str, Any]:
    """What a caller reads off a choice: text, refusal, tool calls, logprobs and why it finished."""
    message = choice.message
    calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    logprobs = choice.logprobs.to_dict() if choice.logprobs is not None else None
    return {"content": message.content, "refusal": message.refusal, "tool_calls": calls, "logprobs": logprobs, "finish": choice.finish_reason}


@pytest.mark.parametrize("stream", [TOOL_STREAM, REFUSAL_STREAM], ids=["tool-calls", "refusal"])
def test_a_streamed_answer_served_whole_from_the_cache_is_what_openais_accumulation_builds(stream: list[dict[str, Any]], tmp_path: Path) -> None:
    """Tool calls, refusal and logprobs of a cached stream used to be lost when the same request came without `stream`."""
    client, requests = cached_client(stream, tmp_path)
    live = list(client.chat.completions.create(**ASKED, stream=True))
    hit = client.chat.completions.create(**ASKED)
    assert hit.blackbox.cache_hit and len(requests) == 1
    assert essence(hit.choices[0]) == essence(accumulated(stream)) == essence(accumulated(live))
    assert essence(hit.choices[0])["tool_calls" if stream is TOOL_STREAM else "refusal"]


@pytest.mark.parametrize("answer", [TOOL_ANSWER, REFUSAL_ANSWER], ids=["tool-calls", "refusal"])
def test_a_whole_answer_replayed_as_a_stream_adds_up_to_it_in_openais_accumulation(answer: dict[str, Any], tmp_path: Path) -> None:
    """A whole answer replayed as chunks used to carry its text only: no tool calls, refusal or logprobs."""
    client, requests = cached_client(answer, tmp_path)
    whole = client.chat.completions.create(**ASKED)
    replay = client.chat.completions.create(**ASKED, stream=True)
    chunks = list(replay)
    assert replay.blackbox.cache_hit and len(requests) == 1
    assert essence(accumulated(chunks)) == essence(whole.choices[0]) == essence(openai.types.chat.ChatCompletion.model_validate(answer).choices[0])
    assert [c.choices[0].delta.tool_calls[0].index for c in chunks if c.choices and c.choices[0].delta.tool_calls] == list(range(len(whole.choices[0].message.tool_calls or [])))


def test_int_keys_of_logit_bias_go_out_as_openai_sends_them_with_a_cache_and_a_log(tmp_path: Path) -> None:
    """With a cache or a log on, an int-keyed logit_bias used to be refused with a ConfigError before sending."""
    theirs, ours, plain, mine = both(cache=str(tmp_path / "cache"), log=str(tmp_path / "calls.db"))
    for client in (theirs, ours):
        client.chat.completions.create(model="gpt-4o", messages=HI, logit_bias={50256: -100})
    assert mine.body() == plain.body() and mine.body()["logit_bias"] == {"50256": -100}
    assert ours.chat.completions.create(model="gpt-4o", messages=HI, logit_bias={"50256": -100}).blackbox.cache_hit


def test_a_datetime_in_the_request_is_sent_and_keyed_as_openai_sends_it(tmp_path: Path) -> None:
    """openai's JSON encoder sends a datetime as its ISO text (in `extra_body`, a `metadata` value); with a cache the SDK
    refused the request with ConfigError ("a datetime, which is not JSON") that the bare client sends."""
    from datetime import datetime, timezone

    theirs, ours, plain, mine = both(cache=str(tmp_path / "cache"))
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for client in (theirs, ours, ours):
        client.chat.completions.create(model="gpt-4o", messages=HI, extra_body={"sent_at": when})
    assert mine.body() == plain.body() and mine.body()["sent_at"] == "2026-01-02T03:04:05+00:00"
    assert len(mine.requests) == 1  # the repeat is a hit, keyed on the text sent
