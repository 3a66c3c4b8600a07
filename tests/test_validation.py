"""Bad input fails at the boundary with the right class, before anything is sent or spent."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import BlackBoxError, Budget, ConfigError, InvalidRequestError, OpenAI


@pytest.fixture
def sent() -> list[httpx2.Request]:
    return []


@pytest.fixture
def client(sent: list[httpx2.Request]) -> OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(500)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)


HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        pytest.param({"messages": HELLO, "n": 0}, "n", id="n-zero"),
        pytest.param({"messages": HELLO, "n": -2}, "n", id="n-negative"),
        pytest.param({"messages": HELLO, "n": 1.5}, "n", id="n-float"),
        pytest.param({"messages": HELLO, "max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
        pytest.param({"messages": HELLO, "temperature": 3}, "temperature", id="temperature-high"),
        pytest.param({"messages": HELLO, "top_p": -0.1}, "top_p", id="top-p-negative"),
        pytest.param({"messages": "hi"}, "messages", id="messages-a-string"),
        pytest.param({"messages": []}, "messages", id="messages-empty"),
        pytest.param({"messages": [{"content": "no role"}]}, "messages[0]", id="message-without-role"),
        pytest.param({"messages": [{"role": 5, "content": "x"}]}, "messages[0]", id="role-not-a-string"),
        pytest.param({"messages": HELLO, "n": 129}, "n", id="n-over-openai-limit"),
        pytest.param({"messages": HELLO, "stream": "true"}, "stream", id="stream-a-string"),
        pytest.param({"messages": HELLO, "stream": 1}, "stream", id="stream-an-int"),
        pytest.param({"messages": HELLO, "stream": True, "stream_options": "usage"}, "stream_options", id="stream-options-a-string"),
        pytest.param({"messages": HELLO, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", id="include-usage-a-string"),
        pytest.param({"messages": HELLO, "stream": True, "stream_options": {"include_usage": 0}}, "stream_options.include_usage", id="include-usage-an-int"),
        pytest.param({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", id="content-a-number"),
        pytest.param({"messages": HELLO, "user": 123}, "user", id="user-a-number"),
        pytest.param({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options", id="stream-options-without-stream"),
        pytest.param({"messages": HELLO, "stream": False, "stream_options": {}}, "stream_options", id="stream-options-not-streamed"),
        pytest.param({"messages": HELLO, "seed": "1"}, "seed", id="seed-a-string"),
        pytest.param({"messages": HELLO, "seed": 1.5}, "seed", id="seed-a-fraction"),
        pytest.param({"messages": HELLO, "seed": True}, "seed", id="seed-a-bool"),
        pytest.param({"messages": HELLO, "extra_body": {"seed": "7"}}, "seed", id="seed-in-extra-body-a-string"),
        pytest.param({"messages": HELLO, "tools": {"type": "function"}}, "tools", id="tools-an-object"),
        pytest.param({"messages": HELLO, "tools": ["get_weather"]}, "tools[0]", id="tool-a-string"),
        pytest.param({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]", id="content-part-a-number"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text", id="text-part-a-number"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]}, "messages[0].content[0].image_url", id="image-url-a-string"),
    ],
)
def test_bad_chat_requests_raise_bad_request_before_sending(client: OpenAI, sent: list[Any], kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", **kwargs)
    assert isinstance(caught.value, InvalidRequestError) and isinstance(caught.value, BlackBoxError)
    assert caught.value.status_code == 400 and caught.value.param == param
    assert sent == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        pytest.param({"input": [{"role": "user", "content": 42}]}, "input[0].content", id="item-content-a-number"),
        pytest.param({"input": [{"role": "user", "content": {"text": "hi"}}]}, "input[0].content", id="item-content-a-dict"),
        pytest.param({"input": ["hi", None]}, "input[0]", id="item-a-string"),
        pytest.param({"input": [{"role": "user", "content": "hi"}, None]}, "input[1]", id="item-none"),
        pytest.param({"input": "hi", "instructions": 7}, "instructions", id="instructions-a-number"),
    ],
)
def test_bad_responses_input_raises_bad_request_before_anything_is_spent(sent: list[Any], tmp_path: Any, kwargs: dict[str, Any], param: str) -> None:
    """Input items the SDK would otherwise trip over while counting the prompt (a bare TypeError after the
    reservation) or send for the server to refuse: the SDK's 400, naming the item, with nothing held or sent."""
    from blackbox_sdk import Budget

    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: sent.append(request) or httpx2.Response(500)))
    budget = Budget(total_usd=1.0, ledger=tmp_path / "ledger.db")
    client = OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, budget=budget, cache=tmp_path / "cache", max_retries=0)
    with pytest.raises(InvalidRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", max_output_tokens=16, **kwargs)
    assert caught.value.param == param
    assert sent == [] and budget.report().outstanding_reservations == 0 and budget.report().spent_usd == 0


BAD_VALUES_THE_SDK_READS = [
    pytest.param("chat", {"messages": HELLO, "seed": "abc"}, "seed", id="chat-seed-not-a-number"),
    pytest.param("chat", {"messages": HELLO, "tools": [None]}, "tools[0]", id="chat-tool-none"),
    pytest.param("chat", {"messages": HELLO, "functions": ["get_weather"]}, "functions[0]", id="chat-function-a-string"),
    pytest.param("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]}, "messages[0].content[0].image_url", id="chat-image-url-a-number"),
    pytest.param("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text", id="chat-text-a-number"),
    pytest.param("completions", {"prompt": "hi", "best_of": "x"}, "best_of", id="completions-best-of-a-string"),
    pytest.param("completions", {"prompt": "hi", "seed": "abc"}, "seed", id="completions-seed-not-a-number"),
    pytest.param("completions", {"prompt": [5, "a"]}, "prompt", id="completions-prompt-mixed"),
    pytest.param("embeddings", {"input": ["a", None]}, "input", id="embeddings-input-with-none"),
    pytest.param("embeddings", {"input": [[1, "a"]]}, "input", id="embeddings-token-ids-with-a-string"),
    pytest.param("responses", {"input": "hi", "tools": ["web_search"]}, "tools[0]", id="responses-tool-a-string"),
]


@pytest.mark.parametrize(("route", "kwargs", "param"), BAD_VALUES_THE_SDK_READS)
def test_bad_values_the_sdk_reads_are_its_400_before_anything_is_spent(
    sent: list[Any], tmp_path: Any, route: str, kwargs: dict[str, Any], param: str,
) -> None:
    """Values the SDK itself reads (a seed it adds to, `best_of` it reserves for, tools and prompts it counts, the
    text a reranker scores against) were a bare ValueError, TypeError or AttributeError, or a ConfigError mid-call
    (logged), or a paid answer the reranker then tripped over: now the SDK's 400 naming the value, with nothing
    sent, held, charged, logged or cached, under a budget, a cache, a call log and a reranker."""
    from blackbox_sdk import Budget, Cache, CallLog

    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: sent.append(request) or httpx2.Response(200, json=answer)))
    budget = Budget(total_usd=1.0, prices={"m": {"input": 1.0, "output": 1.0}}, ledger=tmp_path / "ledger.db")
    client = OpenAI(
        api_key="sk-test", base_url="http://api.test/v1", http_client=http, budget=budget, cache=tmp_path / "cache",
        log=tmp_path / "calls.db", reranker=lambda question, answers: [1.0] * len(answers), rerank_n=3, max_retries=0,
    )
    create = {"chat": client.chat.completions.create, "completions": client.completions.create, "embeddings": client.embeddings.create}
    with pytest.raises(InvalidRequestError) as caught:
        create.get(route, client.responses.create)(model="m", **kwargs)
    client.close()
    assert caught.value.param == param and caught.value.status_code == 400
    assert sent == [] and budget.report().outstanding_reservations == 0 and budget.report().spent_usd == 0
    with CallLog(tmp_path / "calls.db") as log, Cache(tmp_path / "cache") as cache:
        assert list(log.calls()) == [] and cache.stats.keys == 0


def test_requests_openai_sends_are_sent(sent: list[Any]) -> None:
    """What openai sends as it is goes out: a server's own role (vLLM's "ipython"), a prompt scored with
    `max_tokens=0` and `echo`, Responses `instructions` without `input`, messages from a generator."""
    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(400, json={"error": {"message": "the server decides", "type": "invalid_request_error"}})

    client = OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(answer)), max_retries=0)
    calls = [
        lambda: client.chat.completions.create(model="m", messages=[{"role": "ipython", "content": "42"}]),
        lambda: client.completions.create(model="m", prompt="score me", max_tokens=0, echo=True, logprobs=1),
        lambda: client.responses.create(model="m", instructions="Say hi."),
        lambda: client.chat.completions.create(model="m", messages=(m for m in HELLO)),
        lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": ["vLLM's plain part"]}], seed=-5, tools=[]),
        lambda: client.completions.create(model="m", prompt=[[1, 2], [3]], best_of=2),
        lambda: client.embeddings.create(model="m", input=[1, 2, 3]),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert not isinstance(caught.value, InvalidRequestError)  # the server's 400, not the SDK's
    assert len(sent) == len(calls)
    assert json.loads(sent[3].content)["messages"] == HELLO  # the generator's messages, read once


def test_missing_required_arguments_raise_type_error_like_openai(client: OpenAI) -> None:
    with pytest.raises(TypeError):
        client.chat.completions.create(model="m")  # type: ignore[call-arg]


def test_bad_prompt_and_embedding_input(client: OpenAI, sent: list[Any]) -> None:
    with pytest.raises(InvalidRequestError):
        client.completions.create(model="m", prompt=None)
    with pytest.raises(InvalidRequestError):
        client.embeddings.create(model="m", input=[])
    assert sent == []


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rerank_n": 0}, id="rerank-n-zero"),
        pytest.param({"cache": 42}, id="cache-a-number"),
        pytest.param({"budget": {"total_usd": 1}}, id="budget-a-dict"),
        pytest.param({"log": 3.5}, id="log-a-float"),
        pytest.param({"reranker": 7}, id="reranker-a-number"),
    ],
)
def test_bad_sdk_options_raise_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        OpenAI(api_key="sk-test", base_url="http://api.test/v1", **kwargs)


def test_cache_mode_without_a_cache_is_refused(client: OpenAI, sent: list[Any]) -> None:
    with pytest.raises(ConfigError, match="needs a cache"):
        client.chat.completions.create(model="m", messages=HELLO, cache="refresh")
    assert sent == []


def test_negative_max_retries_is_refused() -> None:
    with pytest.raises(ValueError):
        OpenAI(api_key="sk-test", base_url="http://api.test/v1", max_retries=-1)


@pytest.mark.parametrize("model", [None, "", "  ", 42], ids=["none", "empty", "blank", "a-number"])
@pytest.mark.parametrize("budgeted", [False, True], ids=["no-budget", "budget"])
def test_a_missing_model_is_a_bad_request_not_a_null_on_the_wire(sent: list[Any], model: Any, budgeted: bool) -> None:
    from blackbox_sdk import Budget

    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: sent.append(request) or httpx2.Response(500)))
    client = OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, budget=Budget(total_usd=1.0) if budgeted else None)
    for call in (
        lambda: client.chat.completions.create(model=model, messages=HELLO),
        lambda: client.completions.create(model=model, prompt="hi"),
        lambda: client.embeddings.create(model=model, input="hi"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            call()
        assert caught.value.param == "model"
    assert sent == []


def test_include_usage_not_a_bool_is_refused_under_a_budget_before_anything_is_held(sent: list[httpx2.Request]) -> None:
    """A budget asks a stream for its usage: `include_usage="no"` was read as asked for and sent as true."""
    budget = Budget(total_usd=1.0, prices={"m": {"input": 1.0, "output": 1.0}})
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: sent.append(request) or httpx2.Response(500)))
    client = OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0, budget=budget)
    with pytest.raises(InvalidRequestError) as caught:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=5, stream=True, stream_options={"include_usage": "no"})
    assert caught.value.param == "stream_options.include_usage" and "expected a boolean, but got str" in str(caught.value)
    assert sent == [] and budget.report().outstanding_reservations == 0 and budget.report().spent_usd == 0
