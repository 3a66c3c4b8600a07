"""An answer from a server that sent no usage (llama.cpp's streams, some servers' every answer) is charged for all
the server generated: its text and its tool calls' names and arguments (chat's `tool_calls` and legacy
`function_call`, a response's function and custom tool calls), whole, streamed or cut, and a completion's `best_of`
generations it did not return; and the raw views log a tool-call answer as the whole path does (its tool calls as
JSON), not as ""."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from blackbox_sdk import Budget, CallLog, OpenAI
from blackbox_sdk.budget import count_tokens

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1.0, "output": 1.0}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ARGUMENTS = json.dumps({"city": "Paris", "units": "celsius", "days": [1, 2, 3, 4, 5, 6, 7], "detail": "hourly forecast with wind"})
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}
HEAD = {"id": "c", "created": 1, "model": MODEL}


def chat_answer(message: dict[str, Any]) -> dict[str, Any]:
    """A whole chat completion holding `message`, without usage."""
    return {**HEAD, "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "tool_calls"}]}


def chat_stream(*, cut: bool = False) -> bytes:
    """The SSE of a chat stream whose one tool call's arguments come in pieces, without a usage chunk (`cut`: the
    server's stream ends before the call's last piece and its finish_reason)."""
    pieces = [ARGUMENTS[i:i + 10] for i in range(0, len(ARGUMENTS), 10)]
    deltas = [{"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
    chunks = [{**HEAD, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    if cut:
        return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks[:-1]).encode()
    chunks.append({**HEAD, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return ("".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n").encode()


def response_answer(item: dict[str, Any]) -> dict[str, Any]:
    """A whole Responses API response whose one output is `item`, without usage."""
    return {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "completed", "output": [item],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


FUNCTION_ITEM = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ARGUMENTS, "status": "completed"}
CUSTOM_ITEM = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "get_weather", "input": ARGUMENTS}


class Upstream:
    """A MockTransport double answering every request with one fixed body, streamed as SSE when asked."""

    def __init__(self, body: dict[str, Any], stream: bytes = b"") -> None:
        self.body, self.stream = body, stream

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content).get("stream"):
            return httpx2.Response(200, content=self.stream, headers={"content-type": "text/event-stream"})
        return httpx2.Response(200, json=self.body)

    def client(self, **options: Any) -> OpenAI:
        """The SDK's client sending to this double."""
        return OpenAI(base_url="http://upstream.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(self)), max_retries=0, **options)


GENERATED = count_tokens(ARGUMENTS, MODEL).tokens  # the arguments alone: the least the server generated


@pytest.mark.parametrize("message", [{"content": None, "tool_calls": [CALL]}, {"content": None, "function_call": CALL["function"]}])
def test_a_whole_chat_answer_of_tool_calls_without_usage_is_charged_for_them(message: dict[str, Any]) -> None:
    answer = Upstream(chat_answer(message)).client(budget=Budget(total_usd=10.0, prices=PRICES)).chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS)
    assert answer.blackbox.usage_counted and answer.blackbox.usage["completion_tokens"] >= GENERATED


def test_a_chat_stream_of_tool_calls_without_usage_is_charged_for_them() -> None:
    upstream = Upstream({}, chat_stream())
    stream = upstream.client(budget=Budget(total_usd=10.0, prices=PRICES)).chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, stream=True)
    list(stream)
    assert stream.blackbox.usage_counted and stream.blackbox.usage["completion_tokens"] >= GENERATED  # type: ignore[attr-defined]


def test_a_chat_stream_cut_mid_tool_call_arguments_is_charged_for_those_that_arrived(tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES)
    client = Upstream({}, chat_stream(cut=True)).client(budget=budget, log=tmp_path / "calls.db")
    list(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, stream=True))  # ends quietly, as openai's does
    with CallLog(tmp_path / "calls.db") as log:
        [record] = list(log.calls())
    arrived = count_tokens(ARGUMENTS[:-10], MODEL).tokens
    assert "finish_reason" in (record.error or "") and record.usage_counted and record.usage["completion_tokens"] >= arrived
    assert budget.spent() * 1e6 >= record.usage["prompt_tokens"] + arrived


@pytest.mark.parametrize("item", [FUNCTION_ITEM, CUSTOM_ITEM], ids=["function", "custom"])
def test_a_whole_response_of_tool_calls_without_usage_is_charged_for_them(item: dict[str, Any]) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES)
    answer = Upstream(response_answer(item)).client(budget=budget).responses.create(model=MODEL, input="What is the weather in Paris?")
    assert answer.blackbox.usage_counted and answer.blackbox.usage["completion_tokens"] >= GENERATED
    assert budget.spent() * 1e6 >= GENERATED


def ask_chat(client: Any, view: str | None) -> Any:
    """A chat call of tool calls, through the whole path or a raw view."""
    target = client.chat.completions if view is None else getattr(client.chat.completions, view)
    return target.create(model=MODEL, messages=QUESTION, tools=TOOLS)


def ask_responses(client: Any, view: str | None) -> Any:
    """A Responses call of tool calls, through the whole path or a raw view."""
    target = client.responses if view is None else getattr(client.responses, view)
    return target.create(model=MODEL, input="What is the weather in Paris?")


@pytest.mark.parametrize("view", ["with_raw_response", "with_streaming_response"])
@pytest.mark.parametrize(("answer", "ask"), [
    pytest.param(lambda: chat_answer({"content": None, "tool_calls": [CALL]}), ask_chat, id="chat"),
    pytest.param(lambda: response_answer(FUNCTION_ITEM), ask_responses, id="responses"),
])
def test_the_raw_views_log_an_answer_of_tool_calls_as_the_whole_path_does(answer: Any, ask: Any, view: str, tmp_path: Path) -> None:
    client = Upstream(answer()).client(log=tmp_path / "calls.db")
    ask(client, None)
    raw = ask(client, view)
    if view == "with_streaming_response":
        with raw as response:
            response.parse()
    with CallLog(tmp_path / "calls.db") as log:
        whole, viewed = sorted(log.calls(), key=lambda record: record.created)
    assert viewed.candidates == whole.candidates and "get_weather" in whole.candidates[0]


def completion_answer(request: httpx2.Request) -> httpx2.Response:
    """A legacy completion of one 20-word answer per choice asked for, without usage (however many `best_of` made)."""
    body = json.loads(request.content)
    choices = [{"index": i, "text": " word" * 20, "finish_reason": "length", "logprobs": None} for i in range(body.get("n") or 1)]
    return httpx2.Response(200, json={**HEAD, "object": "text_completion", "choices": choices})


def test_a_completion_of_best_of_without_usage_is_charged_for_the_generations_it_did_not_return() -> None:
    """The server generated and bills `best_of` answers and returned one: the two it kept are charged at their cap
    (as an answer the SDK never saw), not at nothing."""
    budget = Budget(total_usd=10.0, prices=PRICES)
    client = OpenAI(base_url="http://upstream.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(completion_answer)),
                    max_retries=0, budget=budget)
    answer = client.completions.create(model=MODEL, prompt="Say a word twenty times.", max_tokens=20, best_of=3)
    assert answer.blackbox.usage_counted and answer.usage is not None
    assert answer.usage.completion_tokens == count_tokens(" word" * 20, MODEL).tokens + 2 * 20
    assert budget.spent() * 1e6 == pytest.approx(answer.usage.total_tokens)


def test_a_stream_without_usage_is_charged_the_hidden_prompt_its_endpoint_was_seen_to_add(llama_server: str) -> None:
    """llama.cpp's chat template adds a system prompt the SDK's count can't see; once a whole answer showed it (the
    calibration), a stream of the same question, which reports no usage, is charged it too, not the count alone."""
    budget = Budget(total_usd=10.0, prices={"smollm2": {"input": 1.0, "output": 1.0}})
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, max_retries=0)
    question = [{"role": "user", "content": "Name a colour."}]
    answer = client.chat.completions.create(model="smollm2", messages=question, max_tokens=4, temperature=0)
    stream = client.chat.completions.create(model="smollm2", messages=question, max_tokens=4, temperature=0, stream=True)
    list(stream)
    assert answer.usage is not None and stream.blackbox.usage_counted  # type: ignore[attr-defined]
    assert stream.blackbox.usage["prompt_tokens"] >= answer.usage.prompt_tokens  # type: ignore[attr-defined]


def echoed_completion(request: httpx2.Request) -> httpx2.Response:
    """A legacy completion that echoes each prompt in front of its one 20-word answer (whole or streamed), without usage
    (token ids echoed as one " tok" each)."""
    body = json.loads(request.content)
    prompts = [body["prompt"]] if isinstance(body["prompt"], str) or isinstance(body["prompt"][0], int) else body["prompt"]
    prompts = [" tok" * len(prompt) if isinstance(prompt, list) else prompt for prompt in prompts]
    texts = [prompt + " word" * 20 for prompt in prompts]
    if not body.get("stream"):
        choices = [{"index": i, "text": text, "finish_reason": "length", "logprobs": None} for i, text in enumerate(texts)]
        return httpx2.Response(200, json={**HEAD, "object": "text_completion", "choices": choices})
    pieces = [(i, piece) for i, prompt in enumerate(prompts) for piece in [prompt, *[" word"] * 20]]
    chunks = [{**HEAD, "object": "text_completion", "choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]} for i, piece in pieces]
    chunks += [{**HEAD, "object": "text_completion", "choices": [{"index": i, "text": "", "finish_reason": "length", "logprobs": None}]} for i in range(len(prompts))]
    sse = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    return httpx2.Response(200, content=sse.encode(), headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("prompt", ["Repeat one word twenty times, please, as many times as I ask you to.",
                                    ["Repeat one word twenty times, please.", "Now say the same word twenty times again, please."],
                                    [1, 2, 3, 4, 5, 6, 7, 8], [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15]]],
                         ids=["one-prompt", "two-prompts", "token-ids", "two-token-id-prompts"])
def test_an_echoed_completion_without_usage_is_charged_for_what_it_generated_not_its_prompt_again(stream: bool, prompt: Any) -> None:
    """With echo the prompt comes back in front of each answer; it is billed as input already, and was counted as output too."""
    budget = Budget(total_usd=10.0, prices=PRICES)
    client = OpenAI(base_url="http://upstream.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(echoed_completion)),
                    max_retries=0, budget=budget)
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, echo=True, stream=stream)
    if stream:
        list(answer)
    prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
    assert answer.blackbox.usage_counted
    assert answer.blackbox.usage["completion_tokens"] == len(prompts) * count_tokens(" word" * 20, MODEL).tokens
    assert budget.spent() * 1e6 == pytest.approx(answer.blackbox.usage["total_tokens"])


def test_an_echoed_best_of_completion_without_a_budget_counts_its_unreturned_generations_without_the_prompt() -> None:
    """Without a budget the generations a server kept are counted as long as the longest answer seen: its generated
    part, not the prompt echoed in front of it."""
    client = OpenAI(base_url="http://upstream.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(echoed_completion)),
                    max_retries=0)
    answer = client.completions.create(model=MODEL, prompt="Repeat one word twenty times, please, as many times as I ask you to.",
                                       max_tokens=20, echo=True, best_of=3)
    assert answer.blackbox.usage_counted and answer.blackbox.usage["completion_tokens"] == 3 * count_tokens(" word" * 20, MODEL).tokens
