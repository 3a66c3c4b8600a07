"""POST /responses from the real SmolLM2 GGUF through the real openai client: the Response object,
its usage, the typed event stream (sync and async), and 400s for what the backend can't do."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response, ResponseCompletedEvent

from blackbox_sdk.local import HFBackend, HFTransport

pytest_plugins = ["local_model"]  # the backend, client and aclient fixtures
BASE_URL = "http://hf.local/v1"
QUESTION = "What is 2+2? Answer with a number only."
GREEDY: dict[str, Any] = {"model": "local", "input": QUESTION, "max_output_tokens": 16, "temperature": 0}
EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def greedy(client: openai.OpenAI) -> Response:
    """The greedy whole Response that the streamed variants must reproduce."""
    return client.responses.create(**GREEDY)


def _collapsed(types: list[str]) -> list[str]:
    """Event types with runs of text deltas shown once."""
    return [t for i, t in enumerate(types) if not (t == "response.output_text.delta" and types[i - 1] == t)]


def test_create_answers_what_the_chat_route_answers(
    client: openai.OpenAI, backend: HFBackend, greedy: Response
) -> None:
    chat = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": QUESTION}], max_tokens=16, temperature=0
    )
    assert isinstance(greedy, Response)
    assert greedy.status == "completed" and greedy.incomplete_details is None
    assert greedy.output_text == chat.choices[0].message.content
    assert greedy.output_text.strip()
    assert greedy.model == backend.model_id
    assert greedy.usage is not None and chat.usage is not None
    assert greedy.usage.input_tokens == chat.usage.prompt_tokens == backend.chat_prompt_tokens(
        [{"role": "user", "content": QUESTION}]
    )
    assert greedy.usage.output_tokens == chat.usage.completion_tokens
    assert greedy.usage.total_tokens == greedy.usage.input_tokens + greedy.usage.output_tokens


def test_instructions_and_input_items_become_the_chat_messages(client: openai.OpenAI, backend: HFBackend) -> None:
    items: list[Any] = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_text", "text": "there"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Bye"},
    ]
    response = client.responses.create(
        model="local", instructions="You are terse.", input=items, max_output_tokens=1, metadata={"k": "v"}, store=False
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Bye"},
    ]
    assert response.usage is not None
    assert response.usage.input_tokens == backend.chat_prompt_tokens(messages)
    assert response.instructions == "You are terse."
    assert response.metadata == {"k": "v"}


def test_an_agents_history_reads_as_the_same_chat_history(client: openai.OpenAI, backend: HFBackend) -> None:
    said = [{"type": "output_text", "text": "Let me check.", "annotations": []}, {"type": "refusal", "refusal": "No."}]
    items: list[Any] = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": said},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Paris"}', "id": "fc_1"},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "21C"}]},
        {"type": "custom_tool_call", "call_id": "c3", "name": "note", "input": "warm"},
        {"type": "custom_tool_call_output", "call_id": "c3", "output": "noted"},
    ]
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "weather", "arguments": f'{{"city": "{city}"}}'}}
        for i, city in ((1, "Paris"), (2, "Rome"))
    ]
    chat = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, {"type": "refusal", "refusal": "No."}], "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "21C"},
        {"role": "assistant", "tool_calls": [{"id": "c3", "type": "custom", "custom": {"name": "note", "input": "warm"}}]},
        {"role": "tool", "tool_call_id": "c3", "content": "noted"},
    ]
    response = client.responses.create(model="local", input=items, max_output_tokens=1)
    assert response.usage is not None
    assert response.usage.input_tokens == backend.chat_prompt_tokens(chat)


def test_max_output_tokens_makes_the_response_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="local", input=QUESTION, max_output_tokens=2, temperature=0)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert response.usage is not None and response.usage.output_tokens == 2


def test_a_seed_repeats_a_sampled_answer(client: openai.OpenAI) -> None:
    params: dict[str, Any] = {"model": "local", "input": "Name a fruit.", "max_output_tokens": 6, "temperature": 1.0}
    first = client.responses.create(**params, extra_body={"seed": 11})
    again = client.responses.create(**params, extra_body={"seed": 11})
    assert first.output_text == again.output_text


def test_create_stream_yields_the_event_sequence_and_the_same_answer(client: openai.OpenAI, greedy: Response) -> None:
    events = list(client.responses.create(**GREEDY, stream=True))
    assert _collapsed([e.type for e in events]) == EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent)
    assert deltas == last.response.output_text == greedy.output_text
    assert last.response.usage == greedy.usage
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas  # type: ignore[union-attr]


def test_a_cut_stream_ends_with_response_incomplete(client: openai.OpenAI) -> None:
    events = list(client.responses.create(**{**GREEDY, "max_output_tokens": 2}, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage is not None  # type: ignore[union-attr]
    assert events[-1].response.usage.output_tokens == 2  # type: ignore[union-attr]


def test_the_wire_has_named_events_and_no_done_marker(backend: HFBackend) -> None:
    with httpx2.Client(transport=HFTransport(backend), base_url=BASE_URL) as http:
        body = {"model": "local", "input": QUESTION, "max_output_tokens": 1, "stream": True}
        reply = http.post("/responses", json=body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in reply.text.split("\n\n") if f]
    assert "[DONE]" not in reply.text
    for frame in frames:
        name, data = frame.split("\n")
        assert name == "event: " + json.loads(data.removeprefix("data: "))["type"]


async def test_async_stream_helper_and_async_create(aclient: openai.AsyncOpenAI, greedy: Response) -> None:
    async with aclient.responses.stream(**GREEDY) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    whole = await aclient.responses.create(**GREEDY)
    assert _collapsed(types) == EVENTS
    assert final.output_text == whole.output_text == greedy.output_text
    assert final.usage == whole.usage == greedy.usage


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        pytest.param({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", id="tools"),
        pytest.param({"previous_response_id": "resp_1"}, "previous_response_id", id="previous_response_id"),
        pytest.param({"reasoning": {"effort": "low"}}, "reasoning", id="reasoning"),
        pytest.param({"include": ["message.output_text.logprobs"]}, "include", id="include"),
        pytest.param({"background": True}, "background", id="background"),
        pytest.param({"tool_choice": "required"}, "tool_choice", id="tool_choice"),
        pytest.param({"max_output_tokens": 0}, "max_output_tokens", id="max_output_tokens"),
        pytest.param({"temperature": 3}, "temperature", id="temperature"),
        pytest.param({"temperature": "1", "max_output_tokens": 2}, "temperature", id="temperature-string"),
        pytest.param({"max_output_tokens": 2, "extra_body": {"temprature": 0}}, "temprature", id="unrecognized"),
        pytest.param({"max_output_tokens": 2, "truncation": 5}, "truncation", id="ignored-but-mistyped"),
        pytest.param({"max_output_tokens": 2, "service_tier": "fastest"}, "service_tier", id="ignored-but-unknown"),
        pytest.param({"max_output_tokens": 2, "text": {"format": {"type": "json_object"}}}, "input", id="json-unsaid"),
        pytest.param({"input": []}, "input", id="empty-input"),
        pytest.param({"input": ["hi"]}, "input[0]", id="item-not-an-object"),
        pytest.param({"input": 5}, "input", id="input-not-text-or-items"),
        pytest.param({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0]", id="reasoning-item"),
        pytest.param({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", id="item-reference"),
        pytest.param(
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments", id="call-no-args"
        ),
        pytest.param(
            {"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", id="output-no-call-id"
        ),
        pytest.param(
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]},
            "input[0].output[0]",
            id="output-image",
        ),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]},
            "input[0].content[0]",
            id="user-refusal",
        ),
        pytest.param({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", id="role"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
            "input[0].content[0]",
            id="image-part",
        ),
    ],
)
def test_what_the_backend_cannot_do_is_refused_with_400(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "local", "input": QUESTION, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**body)
    assert caught.value.param == param
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_prompt_longer_than_the_context_is_refused_as_input(client: openai.OpenAI, backend: HFBackend) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="local", input="word " * backend.context_length)
    assert caught.value.param == "input"
    assert caught.value.code == "context_length_exceeded"


def test_closing_a_stream_early_stops_the_model(client: openai.OpenAI, backend: HFBackend) -> None:
    stream = client.responses.create(
        model="local", input="Count from 1 to 100.", max_output_tokens=400, temperature=0, stream=True
    )
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    assert backend.lock.locked()
    stream.close()
    assert not backend.lock.locked()


def test_a_model_failure_mid_stream_ends_it_with_response_failed(
    client: openai.OpenAI, backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backend.model, "generate", broken)  # a fault no healthy model shows on demand
    events = list(client.responses.create(**GREEDY, stream=True))
    assert [e.type for e in events][-2:] == ["response.content_part.added", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error" and "out of memory" in failed.error.message
