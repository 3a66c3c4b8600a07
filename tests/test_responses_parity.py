"""`client.responses` with the SDK's features on behaves as plain openai does for the same call: the
events a cached answer streams as, the errors bad arguments raise. Both clients talk to the same
in-process double of the Responses API (`httpx2.MockTransport`), so what differs is the SDK.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai._models import validate_type
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI

from responses_upstream import stream_events

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 2.0}}
ARGUMENTS = '{"name": "Paris", "country": "France"}'


class City(BaseModel):
    name: str
    country: str


def function_call(with_id: bool) -> dict[str, Any]:
    """A function-call output item (a server may leave out its `id`)."""
    item = {"type": "function_call", "call_id": "call_1", "name": "City", "arguments": ARGUMENTS, "status": "completed"}
    return {**item, "id": "fc_1"} if with_id else item


class Server:
    """A Responses API double: every request is answered with `output` (streamed when asked: a message
    only); `bodies` what it got."""

    def __init__(self, output: list[dict[str, Any]]) -> None:
        self.output = output
        self.bodies: list[dict[str, Any]] = []

    def response(self) -> dict[str, Any]:
        """The whole response it answers."""
        usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 7,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}
        return {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "completed", "output": self.output,
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        response = self.response()
        if self.bodies[-1].get("stream"):  # a message answer, streamed as the Responses API streams it
            events = (f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n" for i, e in enumerate(stream_events(response, "ok")))
            return httpx2.Response(200, content="".join(events).encode(), headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=response)


def sdk(server: Server, tmp_path: Path) -> OpenAI:
    """The SDK's client on the double, with a cache, a budget and a call log."""
    http = httpx2.Client(transport=httpx2.MockTransport(server))
    return OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, max_retries=0, cache=tmp_path / "cache",
                  budget=Budget(total_usd=5.0, prices=PRICES), log=CallLog(tmp_path / "calls.db"))


@pytest.mark.parametrize("with_id", [True, False])
def test_a_cached_function_call_streams_its_arguments_as_a_server_does(tmp_path: Path, with_id: bool) -> None:
    """A server streams a function call's arguments as deltas, then their done; the replay of a cached
    whole answer does too, so openai's helper gives the same delta events and snapshots."""
    server = Server([function_call(with_id)])
    client = sdk(server, tmp_path)
    tools = [openai.pydantic_function_tool(City)]
    whole = client.responses.parse(model=MODEL, input="Where?", tools=tools)
    with client.responses.stream(model=MODEL, input="Where?", tools=tools) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert len(server.bodies) == 1  # the stream was the cached answer
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.completed" and kinds.index("response.output_item.added") < kinds.index("response.function_call_arguments.delta") < kinds.index("response.function_call_arguments.done") < kinds.index("response.output_item.done")
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(e.delta for e in deltas) == ARGUMENTS and deltas[-1].snapshot == ARGUMENTS
    assert next(e for e in events if e.type == "response.function_call_arguments.done").arguments == ARGUMENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output[0].parsed_arguments == City(name="Paris", country="France") == whole.output[0].parsed_arguments


def message(text: str) -> dict[str, Any]:
    """An assistant message output item holding `text`."""
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": text, "annotations": []}]}


def test_the_final_response_of_every_stream_carries_blackbox(tmp_path: Path) -> None:
    """docs/responses.md: a stream's `response.completed` response has `.blackbox`, whether the stream
    was live, replayed from the cache (streamed or whole answers) or the chosen answer of a reranking."""
    server = Server([message("Paris is the capital.")])
    client = sdk(server, tmp_path)

    def final(**kwargs: Any) -> Any:
        stream = client.responses.create(model=MODEL, stream=True, **kwargs)
        events = list(stream)
        assert events[-1].type == "response.completed" and events[-1].response.blackbox is stream.blackbox
        return stream.blackbox

    assert not final(input="streamed").cache_hit
    assert final(input="streamed").cache_hit  # the stored events
    client.responses.create(model=MODEL, input="whole")
    assert final(input="whole").cache_hit  # a whole answer's events
    reranked = final(input="reranked", reranker=lambda question, answers: [float(len(a)) for a in answers], rerank_n=2)
    assert reranked.requests == 2 and len(reranked.candidates) == 2


def test_the_stream_helpers_return_openais_stream_managers(tmp_path: Path) -> None:
    """`responses.stream(...)` and `chat.completions.stream(...)` return openai's manager classes, as openai's
    client does (they were a wrapper of the SDK's own), and the stream entered still carries `.blackbox`."""
    from openai.lib.streaming.chat import ChatCompletionStreamManager
    from openai.lib.streaming.responses import AsyncResponseStreamManager, ResponseStreamManager

    server = Server([message("Paris is the capital.")])
    client = sdk(server, tmp_path)
    manager = client.responses.stream(model=MODEL, input="Where?")
    assert isinstance(manager, ResponseStreamManager)
    with manager as stream:
        assert list(stream)[-1].type == "response.completed" and not stream.blackbox.cache_hit
    assert isinstance(client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "hi"}]), ChatCompletionStreamManager)
    other = AsyncOpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(server)),
                        max_retries=0, cache=tmp_path / "cache")

    async def entered() -> Any:
        manager = other.responses.stream(model=MODEL, input="Where?")
        assert isinstance(manager, AsyncResponseStreamManager)
        async with manager as stream:
            return [event async for event in stream][-1], stream.blackbox

    last, info = asyncio.run(entered())
    assert last.type == "response.completed" and info.cache_hit


def test_a_cached_refusal_and_logprobs_stream_as_a_server_sends_them(tmp_path: Path) -> None:
    """A refusal part streams as refusal deltas and its done (openai's helper builds the refusal from them); an
    output text's done carries the logprobs the stored answer holds."""
    logprobs = [{"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []}]
    parts = [{"type": "refusal", "refusal": "I can't help with that."}, {"type": "output_text", "text": "No", "annotations": [], "logprobs": logprobs}]
    server = Server([{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": parts}])
    client = sdk(server, tmp_path)
    client.responses.create(model=MODEL, input="Help me.")
    with client.responses.stream(model=MODEL, input="Help me.") as stream:
        events = list(stream)
    assert len(server.bodies) == 1  # the stream was the cached answer
    refusal = [e for e in events if e.type == "response.refusal.delta"]
    assert "".join(e.delta for e in refusal) == "I can't help with that."
    assert next(e for e in events if e.type == "response.refusal.done").refusal == "I can't help with that."
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "No" and [p.token for p in done.logprobs] == ["No"]


def test_a_cached_reasoning_summary_streams_as_a_server_sends_it(tmp_path: Path) -> None:
    """A reasoning item's summary streams as a server streams it: the item added with an empty summary, each
    summary part added, its text as deltas and their done, the part done, then the whole item; every event
    is one of openai's types, numbered in order, and openai's helper ends with the stored response."""
    summary = [{"type": "summary_text", "text": "The user asks for a capital."}, {"type": "summary_text", "text": "It is Paris."}]
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": summary, "encrypted_content": "gAAA"}
    server = Server([reasoning, message("Paris.")])
    client = sdk(server, tmp_path)
    whole = client.responses.create(model=MODEL, input="Capital of France?")
    raw = list(client.responses.create(model=MODEL, input="Capital of France?", stream=True))
    assert len(server.bodies) == 1  # the stream was the cached answer
    for e in raw:
        validate_type(type_=ResponseStreamEvent, value=e.to_dict())  # strict: each event is one of openai's types
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    ours = [e for e in raw if getattr(e, "output_index", None) == 0]
    kinds = [e.type.removeprefix("response.") for e in ours]
    one_part = ["reasoning_summary_part.added", "reasoning_summary_text.delta", "reasoning_summary_text.done", "reasoning_summary_part.done"]
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == ["output_item.added", *one_part, *one_part, "output_item.done"]
    assert ours[0].item.summary == [] and ours[0].item.id == "rs_1" and ours[-1].item.to_dict() == whole.output[0].to_dict()
    for index, part in enumerate(summary):
        events = [e for e in ours[1:-1] if e.summary_index == index]
        assert {e.item_id for e in events} == {"rs_1"} and events[0].part.text == ""
        assert "".join(e.delta for e in events if e.type.endswith("text.delta")) == part["text"] == events[-2].text
        assert events[-1].part.to_dict() == part
    with client.responses.stream(model=MODEL, input="Capital of France?") as stream:
        helped = [e.type for e in stream]
        final = stream.get_final_response()
    assert helped == [e.type for e in raw]
    got = final.to_dict()
    for part in got["output"][1]["content"]:
        assert part.pop("parsed") is None  # the field openai's ParsedResponse adds to an output text
    assert got == whole.to_dict() and final.output[0].summary[1].text == "It is Paris."


CITED = [{"type": "url_citation", "start_index": 0, "end_index": 5, "title": "P", "url": "https://p.example"},
         {"type": "url_citation", "start_index": 9, "end_index": 14, "title": "N", "url": "https://n.example"}]
SEARCH = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "Paris"}}
CITING = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
          "content": [{"type": "output_text", "text": "Paris is nice.", "annotations": CITED, "logprobs": []}]}
SUMMARY = {"type": "summary_text", "text": "A capital."}
THOUGHT = {"type": "reasoning", "id": "rs_1", "summary": [SUMMARY], "encrypted_content": "gAAA"}


def live_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """How the Responses API streams a response whose output is [THOUGHT, SEARCH, CITING, function_call(True)]:
    the search's progress, each annotation added after the delta that reaches its end."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    thought, search, text, call = ({"item_id": i, "output_index": n} for n, i in enumerate(("rs_1", "ws_1", "msg_1", "fc_1")))
    summary, text = {**thought, "summary_index": 0}, {**text, "content_index": 0}
    events = [{"type": "response.created", "response": started}, {"type": "response.in_progress", "response": started},
              {"type": "response.output_item.added", "output_index": 0, "item": {**THOUGHT, "summary": []}},
              {"type": "response.reasoning_summary_part.added", **summary, "part": {**SUMMARY, "text": ""}},
              {"type": "response.reasoning_summary_text.delta", **summary, "delta": "A capital."},
              {"type": "response.reasoning_summary_text.done", **summary, "text": "A capital."},
              {"type": "response.reasoning_summary_part.done", **summary, "part": SUMMARY},
              {"type": "response.output_item.done", "output_index": 0, "item": THOUGHT},
              {"type": "response.output_item.added", "output_index": 1, "item": {**SEARCH, "status": "in_progress"}},
              *({"type": f"response.web_search_call.{step}", **search} for step in ("in_progress", "searching", "completed")),
              {"type": "response.output_item.done", "output_index": 1, "item": SEARCH},
              {"type": "response.output_item.added", "output_index": 2, "item": {**CITING, "status": "in_progress", "content": []}},
              {"type": "response.content_part.added", **text, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}]
    for number, piece in enumerate(("Paris", " is nice.")):
        events += [{"type": "response.output_text.delta", **text, "delta": piece, "logprobs": []},
                   {"type": "response.output_text.annotation.added", **text, "annotation_index": number, "annotation": CITED[number]}]
    events += [{"type": "response.output_text.done", **text, "text": "Paris is nice.", "logprobs": []},
               {"type": "response.content_part.done", **text, "part": CITING["content"][0]},
               {"type": "response.output_item.done", "output_index": 2, "item": CITING},
               {"type": "response.output_item.added", "output_index": 3, "item": {**function_call(True), "arguments": "", "status": "in_progress"}},
               {"type": "response.function_call_arguments.delta", **call, "delta": ARGUMENTS},
               {"type": "response.function_call_arguments.done", **call, "arguments": ARGUMENTS},
               {"type": "response.output_item.done", "output_index": 3, "item": function_call(True)},
               {"type": "response.completed", "response": response}]
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


def kinds(events: list[Any]) -> list[str]:
    """Event types in order, a run of deltas as one (a server's tokens and a replay's pieces differ)."""
    types = [e.type for e in events]
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_a_cached_answer_streams_the_events_a_live_stream_of_it_gives(tmp_path: Path) -> None:
    """A whole answer replayed as a stream used to leave out `response.output_text.annotation.added` (a
    citation) and a web search's progress events: openai's own client, streaming the same answer live,
    gets them; now the replay gives the same event types in the same order, and the same annotations."""
    server = Server([THOUGHT, SEARCH, CITING, function_call(True)])

    def answer(request: httpx2.Request) -> httpx2.Response:
        """The server's answer, or streamed as the Responses API streams this one."""
        if not json.loads(request.content).get("stream"):
            return server(request)
        body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in live_events(server.response()))
        return httpx2.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    plain = openai.OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    live = list(plain.responses.create(model=MODEL, input="Capital?", stream=True))
    client = sdk(server, tmp_path)
    whole = client.responses.create(model=MODEL, input="Capital?")
    replay = list(client.responses.create(model=MODEL, input="Capital?", stream=True))
    assert len(server.bodies) == 1 and replay[-1].response.blackbox.cache_hit  # type: ignore[attr-defined]
    for e in replay:
        validate_type(type_=ResponseStreamEvent, value=e.to_dict())  # strict: each event is one of openai's types
    assert kinds(replay) == kinds(live)
    added = [[e.to_dict() for e in events if e.type == "response.output_text.annotation.added"] for events in (live, replay)]
    assert [{**e, "sequence_number": 0} for e in added[1]] == [{**e, "sequence_number": 0} for e in added[0]]
    assert replay[-1].response.to_dict() == whole.to_dict()


CUSTOM_CALL = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "shell", "input": "ls -la", "status": "completed"}


@pytest.mark.parametrize(("output", "called"), [
    pytest.param([function_call(True)], [{"arguments": ARGUMENTS, "name": "City"}], id="function"),
    pytest.param([function_call(True), CUSTOM_CALL], [{"arguments": ARGUMENTS, "name": "City"}, {"input": "ls -la", "name": "shell"}], id="and-custom"),
])
def test_answers_that_only_call_tools_are_scored_and_logged_by_their_calls(tmp_path: Path, output: list[dict[str, Any]], called: list[dict[str, str]]) -> None:
    """docs/client.md: an answer that only calls tools is scored, and logged, as its calls' JSON (names and arguments, a
    custom tool's input), on the Responses API as on chat (a response's tool calls were scored and logged as empty texts)."""
    server = Server(output)
    seen: list[list[str]] = []

    def first(question: str, answers: list[str]) -> list[float]:
        seen.append(list(answers))
        return [0.0] * len(answers)

    client = sdk(server, tmp_path)
    response = client.responses.create(model=MODEL, input="Where?", reranker=first, rerank_n=2)
    text = json.dumps(called, separators=(",", ":"))
    assert seen == [[text, text]] and response.blackbox.candidates == [text, text]
    [logged] = list(CallLog(tmp_path / "calls.db").calls())
    assert logged.candidates == [text, text]


def test_a_reranker_scores_against_the_users_question_not_a_tools_output(tmp_path: Path) -> None:
    """docs/responses.md: answers are scored against the last user message of `input`; a function call's output
    after it is the tool's, not the user's (as a chat `tool` message is not the question), whether the earlier
    answer's items come back as openai's objects or as dicts; its text parts joined as chat's and the feedback log's are."""
    server = Server([function_call(True)])
    client = sdk(server, tmp_path)
    earlier = client.responses.create(model=MODEL, input="Where is the Louvre?")
    questions: list[str] = []

    def heard(question: str, answers: list[str]) -> list[float]:
        questions.append(question)
        return [0.0] * len(answers)

    server.output = [message("It is in Paris.")]
    output = {"type": "function_call_output", "call_id": "call_1", "output": '{"city": "Paris"}'}
    for items in (earlier.output, [item.to_dict() for item in earlier.output]):
        asked = {"role": "user", "content": [{"type": "input_text", "text": "Where is"}, {"type": "input_text", "text": "the Louvre?"}]}
        client.responses.create(model=MODEL, input=[asked, *items, output], reranker=heard, rerank_n=2, cache=None)
    assert questions == ["Where is the Louvre?", "Where is the Louvre?"]


def test_parse_sends_verbosity_as_openais_parse_does(tmp_path: Path) -> None:
    """openai's `responses.parse` takes `verbosity` (its `create` does not) and sends it in the body; the SDK's `parse`
    (and its raw view's) did too instead of raising TypeError from openai's `create`."""
    server = Server([message('{"name": "Paris", "country": "France"}')])
    bare = openai.OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(server)), max_retries=0)
    client = sdk(server, tmp_path)
    asked: dict[str, Any] = {"model": MODEL, "input": "Where?", "text_format": City}
    expected = bare.responses.parse(**asked, verbosity="low")
    parsed = client.responses.parse(**asked, verbosity="low")
    raw = client.responses.with_raw_response.parse(**asked, verbosity="high").parse()
    assert parsed.output_parsed == raw.output_parsed == expected.output_parsed == City(name="Paris", country="France")
    assert [body.get("verbosity") for body in server.bodies] == ["low", "low", "high"]
    sent = {name: value for name, value in server.bodies[1].items() if name != "max_output_tokens"}  # the budget's cap, added
    assert sent == server.bodies[0]  # else the SDK's body is openai's


def test_a_cached_answers_logprobs_stream_on_its_text_deltas(tmp_path: Path) -> None:
    """A live stream's text deltas carry the logprobs of their tokens; a cached whole answer's do too (all on its first
    delta, as chat's replay puts them on its first chunk), so what a reader gathers from the deltas is the answer's."""
    logprobs = [{"token": token, "logprob": -0.1, "bytes": list(token.encode()), "top_logprobs": []} for token in ("Paris", " is", " nice.")]
    part = {"type": "output_text", "text": "Paris is nice.", "annotations": [], "logprobs": logprobs}
    server = Server([{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [part]}])
    client = sdk(server, tmp_path)
    client.responses.create(model=MODEL, input="Say it.")
    events = list(client.responses.create(model=MODEL, input="Say it.", stream=True))
    assert len(server.bodies) == 1  # the stream was the cached answer
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == "Paris is nice." and len(deltas) > 1
    assert [p.token for e in deltas for p in e.logprobs] == ["Paris", " is", " nice."]
    assert [p.token for p in next(e for e in events if e.type == "response.output_text.done").logprobs] == ["Paris", " is", " nice."]
