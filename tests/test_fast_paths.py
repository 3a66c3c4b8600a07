"""The call path's shortcuts give what the long way gives: one canonical walk keys the cache, an
untouched response comes back as the server sent it, and a first attempt outside the retry policy
waits and fails exactly as the policy would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import pydantic
import pytest

from blackbox_sdk import OpenAI, RetryPolicy
from blackbox_sdk.cache import Cache, canonical_params

ENDPOINT = "http://api.test/v1/"
HELLO = [{"role": "user", "content": "hi"}]


class Answer(pydantic.BaseModel):
    """A response format, keyed by its JSON schema."""

    value: int


def _body(usage: bool = True, **extra: Any) -> dict[str, Any]:
    """A chat completion with two choices, with or without usage, plus any extra top-level fields."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fast", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} for i, text in enumerate(("4", "four"))],
        **extra,
    }
    if usage:
        body["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return body


def _client(body: dict[str, Any], status: int = 200, **options: Any) -> OpenAI:
    """A client whose server always answers `body` (a quirky server's shape, served by a transport double)."""
    http = httpx2.Client(transport=httpx2.MockTransport(lambda request: httpx2.Response(status, json=body)))
    return OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, **options)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"model": "m", "messages": HELLO, "max_tokens": 4}, id="plain"),
        pytest.param({"model": "m", "messages": (HELLO[0],), "stop": ("a", "b"), "temperature": 0.5}, id="tuples"),
        pytest.param({"model": "m", "messages": HELLO, "response_format": Answer, "seed": openai.NOT_GIVEN}, id="model-class"),
        pytest.param({"model": "m", "messages": HELLO, "timeout": 3, "api_key": "sk-x", "extra_query": {"api-key": "k", "v": 1}}, id="dropped"),
    ],
)
def test_a_key_from_canonical_params_is_the_key_of_the_params(tmp_path: Path, params: dict[str, Any]) -> None:
    cache = Cache(tmp_path / "cache", namespace="tenant")
    made_once = cache.key_of_canonical(route="chat.completions", endpoint=ENDPOINT, canonical=canonical_params(params))
    assert made_once == cache.key(route="chat.completions", endpoint=ENDPOINT, params=params)


def test_the_cached_call_keys_its_request_as_cache_key_does(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    client = _client(_body(), cache=cache)
    client.chat.completions.create(model="m", messages=HELLO, n=2, stream=False, temperature=0.5)
    key = cache.key(route="chat.completions", endpoint=ENDPOINT, params={"model": "m", "messages": HELLO, "temperature": 0.5})
    assert len(cache.get(key)) == 2  # n and stream are left out of the key: a bucket serves any n, streamed or not


def test_an_untouched_response_is_the_servers_own_object() -> None:
    completion = _client(_body(provider="p")).chat.completions.create(model="m", messages=HELLO, n=2)
    assert completion.provider == "p"  # type: ignore[attr-defined]  # a field only the server's object has
    assert completion.blackbox.chosen == [0, 1] and completion.blackbox.requests == 1
    assert completion.blackbox.cache_hit is False and completion.blackbox.usage_counted is False
    assert completion.usage is not None and completion.usage.total_tokens == 5


def test_a_response_without_usage_is_counted_even_with_no_option_on() -> None:
    completion = _client(_body(usage=False, provider="p")).chat.completions.create(model="m", messages=HELLO, n=2)
    assert completion.blackbox.usage_counted is True
    assert completion.usage is not None and completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert [c.message.content for c in completion.choices] == ["4", "four"]


def test_the_log_keeps_the_texts_only_a_log_needs(tmp_path: Path) -> None:
    from blackbox_sdk import CallLog

    with CallLog(tmp_path / "calls.db") as log:
        completion = _client(_body(), log=log).chat.completions.create(model="m", messages=HELLO, n=2)
        assert log.get(completion.blackbox.call_id).candidates == ["4", "four"]


def test_a_failed_first_attempt_is_retried_with_the_policys_waits_and_count() -> None:
    answers = [httpx2.Response(503, json={"error": {"message": "busy"}}), httpx2.Response(200, json=_body())]
    sent: list[httpx2.Request] = []

    def server(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return answers[min(len(sent), len(answers)) - 1]

    waits: list[float] = []
    http = httpx2.Client(transport=httpx2.MockTransport(server))
    client = OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http,
                    retry=RetryPolicy(max_retries=2, sleep=waits.append, rand=lambda: 0.0))
    completion = client.chat.completions.create(model="m", messages=HELLO)
    assert len(sent) == 2 and waits == [0.5]
    assert completion.blackbox.retries == 1 and completion.blackbox.requests == 1


def test_a_first_attempt_that_is_not_retried_raises_the_servers_error_unchanged() -> None:
    client = _client({"error": {"message": "bad request"}}, status=400)
    with pytest.raises(openai.BadRequestError, match="bad request") as caught:
        client.chat.completions.create(model="m", messages=HELLO)
    assert caught.value.status_code == 400 and caught.value.response.request.url == "http://api.test/v1/chat/completions"
