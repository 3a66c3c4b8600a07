"""The headers a request sends that may decide its answer are keyed (a gateway routes on them: Portkey's
``x-portkey-config``, ``OpenAI-Project``); credentials, the openai client's own headers and tracing ids are not."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import OpenAI
from blackbox_sdk.cache import Cache, canonical_params, with_headers

HELLO = [{"role": "user", "content": "Say hi"}]
PARAMS: dict[str, Any] = {"model": "m", "messages": HELLO}


@pytest.mark.parametrize(
    ("default", "call", "keyed"),
    [
        pytest.param({}, None, None, id="none"),
        pytest.param({"x-portkey-config": "a"}, None, {"x-portkey-config": "a"}, id="a-default"),
        pytest.param({"X-Portkey-Config": "a"}, {"x-portkey-config": "b"}, {"x-portkey-config": "b"}, id="the-call-wins-without-case"),
        pytest.param({"x-portkey-config": "a"}, {"x-portkey-config": openai.omit}, None, id="omit-removes-a-default"),
        pytest.param({"Authorization": "Bearer sk-1", "api-key": "k", "x-portkey-api-key": "k", "x-goog-api-key": "k"}, None, None, id="credentials"),
        pytest.param({"User-Agent": "u", "X-Stainless-Lang": "python", "Accept": "application/json"}, None, None, id="the-clients-own"),
        pytest.param({}, {"traceparent": "00-1-2-01", "x-request-id": "r", "Idempotency-Key": "i"}, None, id="tracing-ids"),
        pytest.param({"OpenAI-Organization": openai.omit, "OpenAI-Project": "proj_1"}, None, {"openai-project": "proj_1"}, id="project"),
        pytest.param({"x-tags": ["a", "b"], "x-tenant": "t"}, None, {"x-tenant": "t"}, id="a-value-that-cant-be-hashed"),
    ],
)
def test_the_headers_that_may_decide_an_answer_are_keyed_as_openai_merges_them(default: dict[str, Any], call: Any, keyed: Any) -> None:
    params = PARAMS if call is None else {**PARAMS, "extra_headers": call}
    result = with_headers(canonical_params(params), params, default)
    assert result.get("extra_headers") == keyed
    assert {k: v for k, v in result.items() if k != "extra_headers"} == canonical_params(PARAMS)


def test_a_clients_default_headers_changed_after_a_first_key_key_as_they_are_now() -> None:
    headers = {"x-portkey-config": "a", "Authorization": "Bearer sk-1"}
    first = with_headers(canonical_params(PARAMS), PARAMS, headers)  # worked out once per set of headers, then reused
    headers["x-portkey-config"] = "b"  # the same mapping, changed in place (a client's project or gateway config set anew)
    again = with_headers(canonical_params(PARAMS), PARAMS, headers)
    assert (first["extra_headers"], again["extra_headers"]) == ({"x-portkey-config": "a"}, {"x-portkey-config": "b"})


def test_a_clients_default_headers_are_worked_out_once_though_openai_lists_its_unset_ones_anew() -> None:
    """openai's client lists each unset header (OpenAI-Organization, OpenAI-Project) as a new `Omit()` each time, so the
    memo of a client's default headers never hit: every call worked them out again."""
    from blackbox_sdk.cache import _keys

    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    _keys._keyed_items.cache_clear()
    for _ in range(3):
        assert with_headers(canonical_params(PARAMS), PARAMS, client.default_headers) == canonical_params(PARAMS)
    assert (_keys._keyed_items.cache_info().hits, _keys._keyed_items.cache_info().misses) == (2, 1)


def test_cache_key_keys_the_headers_given_per_call_as_the_client_does(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        per_call = cache.key(route="chat.completions", endpoint="http://api.test/v1", params={**PARAMS, "extra_headers": {"x-portkey-config": "a"}})
        assert per_call != cache.key(route="chat.completions", endpoint="http://api.test/v1", params=PARAMS)
        default = with_headers(canonical_params(PARAMS), PARAMS, {"X-Portkey-Config": "a"})
        assert cache.key_of_canonical(route="chat.completions", endpoint="http://api.test/v1", canonical=default) == per_call


def _answer_by_route(request: httpx2.Request) -> httpx2.Response:
    """A gateway whose answer is the config header it routed on, so an answer shared across routes shows."""
    routed = request.headers.get("x-portkey-config", "none")
    message = {"role": "assistant", "content": routed}
    return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def test_clients_routed_apart_by_a_gateway_header_do_not_share_answers(tmp_path: Path) -> None:
    def ask(**options: Any) -> tuple[str | None, bool]:
        http = httpx2.Client(transport=httpx2.MockTransport(_answer_by_route))
        client = OpenAI(api_key="sk-test", base_url="http://gateway.test/v1", http_client=http, cache=str(tmp_path / "c"), **options)
        answer = client.chat.completions.create(model="m", messages=HELLO, extra_headers={"x-request-id": uuid.uuid4().hex})
        return answer.choices[0].message.content, answer.blackbox.cache_hit  # type: ignore[attr-defined]

    assert ask(default_headers={"x-portkey-config": "cheap"}) == ("cheap", False)
    assert ask(default_headers={"x-portkey-config": "smart"}) == ("smart", False)  # was ("cheap", True): the other route's answer
    assert ask(default_headers={"X-Portkey-Config": "cheap"}) == ("cheap", True)  # a new request id each time: still a hit


def test_on_llama_cpp_a_routing_header_keys_apart_and_a_tracing_id_does_not(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=str(tmp_path / "c"), max_retries=0)

    def hit(**headers: str) -> bool:
        answer = client.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=4, temperature=0, extra_headers=headers)
        return bool(answer.blackbox.cache_hit)  # type: ignore[attr-defined]

    assert not hit(traceparent="00-a-b-01")
    assert hit(traceparent="00-c-d-01")
    assert not hit(**{"x-route": "eu"})
    assert hit(**{"X-Route": "eu", "x-request-id": "r2"})
