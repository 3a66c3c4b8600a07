"""A cache hit gives back what the miss gave, field for field: the same typed object (usage detail
counts, fingerprint, service tier, logprobs, refusal, annotations, audio, tool calls, finish reasons,
the model the server named), whether the miss and the hit were whole or streamed; only `.blackbox`
and `_request_id` differ (docs/cache.md). The server is an in-process double
(`httpx2.MockTransport`): no real server returns every field at once.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai._models import validate_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from blackbox_sdk import OpenAI
from blackbox_sdk.cache import Cache

HI = [{"role": "user", "content": "hi"}]
LOGPROB = {"token": "x", "logprob": -0.5, "bytes": [120], "top_logprobs": [{"token": "y", "logprob": -1.0, "bytes": [121]}]}
USAGE = {"prompt_tokens": 51, "completion_tokens": 23, "total_tokens": 74,
         "prompt_tokens_details": {"cached_tokens": 33, "audio_tokens": 0, "cache_write_tokens": 7},
         "completion_tokens_details": {"reasoning_tokens": 9, "audio_tokens": 0, "accepted_prediction_tokens": 1, "rejected_prediction_tokens": 2}}
CITATION = {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 5, "title": "P", "url": "https://p.example"}}
MESSAGE = {"role": "assistant", "content": "Paris is nice.", "refusal": None, "annotations": [CITATION],
           "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1700000000, "transcript": "Paris is nice."},
           "function_call": {"name": "legacy", "arguments": "{}"},
           "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]}
CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "created": 11, "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_1", "service_tier": "default", "usage": USAGE, "choices": [
            {"index": 0, "message": MESSAGE, "finish_reason": "tool_calls", "logprobs": {"content": [LOGPROB], "refusal": None}},
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": "I can't."}, "finish_reason": "stop",
             "logprobs": {"content": [LOGPROB, LOGPROB], "refusal": [LOGPROB]}}]}
BASE = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 12, "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_2", "service_tier": "default", "usage": None}
CHUNKS = [  # two choices, as a server streams them with include_usage
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": {"content": [], "refusal": None}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 1, "delta": {"role": "assistant", "content": ""}, "logprobs": {"content": [], "refusal": None}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [LOGPROB], "refusal": None}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 1, "delta": {"content": "Hello"}, "logprobs": {"content": [LOGPROB], "refusal": None}, "finish_reason": None}]},
    {**BASE, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    {**BASE, "choices": [{"index": 1, "delta": {}, "logprobs": None, "finish_reason": "length"}]},
    {**BASE, "choices": [], "usage": USAGE},
]
TEXT_LOGPROBS = {"tokens": ["Hello", " there"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{"Hello": -0.1}, {" there": -0.2}], "text_offset": [0, 5]}
COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 13, "model": "gpt-3.5-turbo-instruct-0914", "system_fingerprint": "fp_3",
              "choices": [{"index": 0, "text": "Hello there", "finish_reason": "length", "logprobs": TEXT_LOGPROBS}], "usage": USAGE}
TEXT_CHUNKS = [
    {**COMPLETION, "choices": [{"index": 0, "text": "Hello", "finish_reason": None, "logprobs": None}], "usage": None},
    {**COMPLETION, "choices": [{"index": 0, "text": " there", "finish_reason": "length", "logprobs": None}], "usage": None},
    {**COMPLETION, "choices": [], "usage": USAGE},
]
VECTOR = [0.25, -1.5, 3.0]
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "A capital."}],
             "content": [{"type": "reasoning_text", "text": "The user asks for the capital of France."}], "encrypted_content": "gAAA", "status": "completed"}
OUTPUT = [REASONING,
          {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [
              {"type": "output_text", "text": "Paris.", "logprobs": [{"token": "Paris", "logprob": -0.1, "bytes": [80], "top_logprobs": []}],
               "annotations": [{"type": "url_citation", "start_index": 0, "end_index": 5, "title": "P", "url": "https://p.example"}]}]},
          {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}', "status": "completed"}]
RESPONSE = {"id": "resp_1", "object": "response", "created_at": 5, "model": "gpt-5-2025-08-07", "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"}, "output": OUTPUT, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": [], "service_tier": "default", "reasoning": {"effort": "low", "summary": "auto"}, "max_output_tokens": 40,
            "usage": {"input_tokens": 51, "input_tokens_details": {"cached_tokens": 33, "cache_write_tokens": 7}, "output_tokens": 23,
                      "output_tokens_details": {"reasoning_tokens": 9}, "total_tokens": 74}}


def response_events() -> list[dict[str, Any]]:
    """RESPONSE as a server streams it (a reasoning item's text and summary as deltas)."""
    started = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started}, {"type": "response.in_progress", "response": started}]
    for index, item in enumerate(OUTPUT):
        events += [{"type": "response.output_item.added", "output_index": index, "item": item},
                   {"type": "response.output_item.done", "output_index": index, "item": item}]
    events.append({"type": "response.incomplete", "response": RESPONSE})
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


def sse(events: list[dict[str, Any]], named: bool = False) -> httpx2.Response:
    """A stream of JSON events (with `event:` lines for the Responses API)."""
    body = "".join((f"event: {e['type']}\n" if named else "") + f"data: {json.dumps(e)}\n\n" for e in events)
    return httpx2.Response(200, content=(body + ("" if named else "data: [DONE]\n\n")).encode(), headers={"content-type": "text/event-stream"})


def answer(request: httpx2.Request) -> httpx2.Response:
    """The double: every field each route can carry; streamed when asked."""
    body, path = json.loads(request.content), request.url.path
    if path.endswith("/embeddings"):
        raw = base64.b64encode(struct.pack(f"<{len(VECTOR)}f", *VECTOR)).decode()
        vector = VECTOR if body.get("encoding_format") == "float" else raw
        data = [{"object": "embedding", "index": 0, "embedding": vector[: body.get("dimensions")] if body.get("dimensions") else vector}]
        return httpx2.Response(200, json={"object": "list", "model": "text-embedding-3-small", "data": data, "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    if path.endswith("/responses"):
        return sse(response_events(), named=True) if body.get("stream") else httpx2.Response(200, json=RESPONSE)
    whole, chunks = (CHAT, CHUNKS) if path.endswith("/chat/completions") else (COMPLETION, TEXT_CHUNKS)
    return sse(chunks) if body.get("stream") else httpx2.Response(200, json=whole)


@pytest.fixture
def client(tmp_path: Path) -> OpenAI:
    """The SDK with a cache, on the double; `client.sent` counts the requests that reached it."""
    sent: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return answer(request)

    made = OpenAI(api_key="sk-test", base_url="https://api.test/v1", max_retries=0, cache=Cache(tmp_path / "cache"),
                  http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))
    made.sent = sent  # type: ignore[attr-defined]
    return made


def plain(data: Any) -> Any:
    """A dump without the fields openai's stream accumulation adds (its parsed content and arguments, a tool call's index)."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items() if k not in ("parsed", "parsed_arguments", "index") or not isinstance(v, (int, type(None)))}
    return [plain(item) for item in data] if isinstance(data, list) else data


def accumulated(chunks: list[Any]) -> dict[str, Any]:
    """What openai's stream accumulation builds from chunks, as a plain ChatCompletion dump."""
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    dumped = plain(state.current_completion_snapshot.model_dump())
    dumped["choices"] = [{**choice, "index": i} for i, choice in enumerate(dumped["choices"])]
    return ChatCompletion.model_validate(dumped).model_dump()


STREAMED = {"stream": True, "stream_options": {"include_usage": True}}


def test_a_chat_hit_is_the_miss_field_for_field(client: OpenAI) -> None:
    """Usage details (cached, cache-write, reasoning tokens...) used to be lost: a hit's usage had the counts only."""
    miss = client.chat.completions.create(model="gpt-4o", messages=HI, n=2, logprobs=True)
    hit = client.chat.completions.create(model="gpt-4o", messages=HI, n=2, logprobs=True)
    assert hit.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert hit.model_dump() == miss.model_dump() == ChatCompletion.model_validate(CHAT).model_dump()
    assert hit.usage is not None and hit.usage.prompt_tokens_details.cached_tokens == 33  # type: ignore[union-attr]


def per_choice(chunks: list[Any]) -> dict[int, list[dict[str, Any]]]:
    """A stream's chunks by choice index (a replay streams the stored choices one after the other), the
    usage chunk under -1."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        dumped = chunk.model_dump()
        grouped.setdefault(dumped["choices"][0]["index"] if dumped["choices"] else -1, []).append(dumped)
    return grouped


def test_a_streamed_chat_hit_replays_the_miss_chunk_for_chunk(client: OpenAI) -> None:
    """The usage chunk of a replayed stream used to lack the miss's detail counts."""
    miss = [c.model_dump() for c in client.chat.completions.create(model="gpt-4o", messages=HI, n=2, **STREAMED)]
    replay = client.chat.completions.create(model="gpt-4o", messages=HI, n=2, **STREAMED)
    assert replay.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert per_choice(list(replay)) == per_choice([ChatCompletionChunk.model_validate(c) for c in miss])
    assert miss[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 9


def test_a_streamed_miss_served_whole_is_what_openais_accumulation_of_it_builds(client: OpenAI) -> None:
    live = list(client.chat.completions.create(model="gpt-4o", messages=HI, n=2, **STREAMED))
    hit = client.chat.completions.create(model="gpt-4o", messages=HI, n=2)
    assert hit.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert hit.model_dump() == accumulated(live)


def test_a_whole_miss_replayed_as_a_stream_adds_up_to_it(client: OpenAI) -> None:
    """A later choice's logprobs used to be doubled by openai's accumulation (they rode on its first chunk),
    and the usage chunk lacked the detail counts."""
    miss = client.chat.completions.create(model="gpt-4o", messages=HI, n=2, logprobs=True)
    replay = client.chat.completions.create(model="gpt-4o", messages=HI, n=2, logprobs=True, **STREAMED)
    chunks = list(replay)
    assert replay.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert accumulated(chunks) == miss.model_dump()


@pytest.mark.parametrize("first", [{}, STREAMED], ids=["whole-miss", "streamed-miss"])
def test_a_completions_hit_is_the_miss_whole_and_streamed(client: OpenAI, first: dict[str, Any]) -> None:
    """Legacy completions keep logprobs, the fingerprint and the usage details on a hit, whole and replayed."""
    missed: Any = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", logprobs=1, **first)
    missed = list(missed) if first else missed
    whole = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", logprobs=1)
    replay = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", logprobs=1, **STREAMED))
    assert whole.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    if first:
        assert [c.model_dump() for c in replay] == [c.model_dump() for c in missed]
    else:
        assert whole.model_dump() == missed.model_dump()
        assert replay[-1].model_dump()["usage"] == missed.model_dump()["usage"]
        assert "".join(c.choices[0].text for c in replay if c.choices) == "Hello there"
    assert whole.usage is not None and whole.usage.model_dump() == COMPLETION["usage"] | whole.usage.model_dump(include={"prompt_tokens_details", "completion_tokens_details"})


@pytest.mark.parametrize("options", [{}, {"encoding_format": "float"}, {"encoding_format": "base64"}, {"encoding_format": "float", "dimensions": 2}],
                         ids=["default", "float", "base64", "dimensions"])
def test_an_embeddings_hit_is_the_miss(client: OpenAI, options: dict[str, Any]) -> None:
    miss = client.embeddings.create(model="text-embedding-3-small", input="hi", **options)
    hit = client.embeddings.create(model="text-embedding-3-small", input="hi", **options)
    assert hit.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert hit.model_dump(warnings=False) == miss.model_dump(warnings=False)
    assert type(hit.data[0].embedding) is type(miss.data[0].embedding)  # base64 stays the string asked for


def test_a_responses_hit_is_the_miss_whole_and_streamed(client: OpenAI) -> None:
    """Whole -> whole and streamed -> streamed (the stored events as they came), streamed -> whole (the final response)."""
    miss = client.responses.create(model="gpt-5", input="hi")
    hit = client.responses.create(model="gpt-5", input="hi")
    assert hit.blackbox.cache_hit and hit.model_dump() == miss.model_dump()
    live = [e.model_dump() for e in client.responses.create(model="gpt-5", input="streamed", stream=True)]
    replay = [e.model_dump() for e in client.responses.create(model="gpt-5", input="streamed", stream=True)]
    whole = client.responses.create(model="gpt-5", input="streamed")
    assert replay == live and whole.model_dump() == live[-1]["response"] and len(client.sent) == 2  # type: ignore[attr-defined]


def test_a_whole_reasoning_answer_replayed_streams_its_reasoning_text_as_deltas(client: OpenAI) -> None:
    """A reasoning item's text used to come whole in its `output_item.added`: a server adds the item with no
    text, then streams each reasoning_text part (added, deltas, done, part done) before its summary."""
    miss = client.responses.create(model="gpt-5", input="hi")
    events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
    assert len(client.sent) == 1  # type: ignore[attr-defined]
    for e in events:
        validate_type(type_=ResponseStreamEvent, value=e.to_dict())  # strict: each event is one of openai's types
    ours = [e for e in events if getattr(e, "output_index", None) == 0]
    assert ours[0].type == "response.output_item.added" and ours[0].item.content == [] and ours[0].item.summary == []
    kinds = [e.type.removeprefix("response.") for e in ours[1:]]
    assert kinds[0] == "content_part.added" and ours[1].part.to_dict() == {"type": "reasoning_text", "text": ""}
    text = REASONING["content"][0]["text"]  # type: ignore[index]
    assert "".join(e.delta for e in ours if e.type == "response.reasoning_text.delta") == text
    assert next(e for e in ours if e.type == "response.reasoning_text.done").text == text
    assert ours[kinds.index("content_part.done") + 1].part.to_dict() == REASONING["content"][0]  # type: ignore[index]
    assert kinds.index("content_part.done") < kinds.index("reasoning_summary_part.added") and kinds[-1] == "output_item.done"
    assert ours[-1].item.model_dump() == miss.output[0].model_dump() and events[-1].response.model_dump() == miss.model_dump()


def test_an_entry_stored_before_usage_details_were_kept_is_still_served(client: OpenAI) -> None:
    """A bucket written by the previous candidate format (no detail counts) is a hit, with the counts it holds."""
    miss = client.chat.completions.create(model="gpt-4o", messages=HI, n=2)
    cache = client._core.opts.cache  # type: ignore[attr-defined]
    key = cache.key(route="chat.completions", endpoint="https://api.test/v1/", params={"model": "gpt-4o", "messages": HI})
    stored = cache.get(key)
    assert len(stored) == 2 and all("details" in entry for entry in stored)
    cache.with_mode("refresh").extend(key, [{k: v for k, v in entry.items() if k != "details"} for entry in stored])
    hit = client.chat.completions.create(model="gpt-4o", messages=HI, n=2)
    assert hit.blackbox.cache_hit and len(client.sent) == 1  # type: ignore[attr-defined]
    assert hit.usage is not None and hit.usage.prompt_tokens_details is None
    assert hit.model_dump(exclude={"usage"}) == miss.model_dump(exclude={"usage"})


FILTERED = {"hate": {"filtered": False, "severity": "safe"}}
AZURE = [  # Azure OpenAI's stream: its prompt filter results first, in a chunk of their own; the usage last when asked
    {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERED}]},
    {**BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "content_filter_results": {}}]},
    {**BASE, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "content_filter_results": FILTERED}]},
    {**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_results": {}}]},
]


def azure(request: httpx2.Request) -> httpx2.Response:
    """An Azure OpenAI chat stream, with the usage chunk (no choices) only under include_usage, as the service sends it."""
    asked = (json.loads(request.content).get("stream_options") or {}).get("include_usage")
    return sse([{k: v for k, v in c.items() if k != "usage"} for c in AZURE] + ([{**BASE, "choices": [], "usage": USAGE}] if asked else []))


@pytest.mark.parametrize("options", [{}, {"stream_options": {"include_usage": True}}], ids=["no-usage", "include-usage"])
def test_a_streamed_hit_replays_the_chunks_without_choices_a_live_stream_gives(tmp_path: Path, options: dict[str, Any]) -> None:
    """Azure's first chunk (`choices: []`, its `prompt_filter_results`) used to be lost on a hit: a replay began
    with the first choice's chunk. Now the miss, the hit and openai's own client give the same chunks: that
    one first, the usage chunk (`choices: []`) last only when include_usage asked for it."""
    http = httpx2.Client(transport=httpx2.MockTransport(azure))
    live = [c.model_dump() for c in openai.OpenAI(api_key="sk-test", base_url="https://api.test/v1", http_client=http).chat.completions.create(
        model="gpt-4o", messages=HI, stream=True, **options)]
    client = OpenAI(api_key="sk-test", base_url="https://api.test/v1", max_retries=0, cache=Cache(tmp_path / "cache"), http_client=http)
    miss = client.chat.completions.create(model="gpt-4o", messages=HI, stream=True, **options)
    missed = [c.model_dump() for c in miss]
    hit = client.chat.completions.create(model="gpt-4o", messages=HI, stream=True, **options)
    assert [c.model_dump() for c in hit] == missed == live and hit.blackbox.cache_hit and not miss.blackbox.cache_hit  # type: ignore[attr-defined]
    assert live[0]["prompt_filter_results"] and (live[-1]["usage"] is not None) == bool(options)
