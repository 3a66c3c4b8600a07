"""What of a client's URL and query a cache key holds: its default query (an Azure api-version) yes,
the credentials a URL carries (``user:password@``, ``?key=...``) no."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import ConfigError, OpenAI, wrap
from blackbox_sdk._redact import is_secret_key, is_secret_query_param
from blackbox_sdk.cache import Cache, canonical_params
from blackbox_sdk.cache._keys import key_endpoint, with_default_query

HELLO = [{"role": "user", "content": "hi"}]
PARAMS: dict[str, Any] = {"model": "m", "messages": HELLO}


@pytest.mark.parametrize(
    ("endpoint", "keyed"),
    [
        pytest.param("http://user:pw@api.test/v1/", "http://api.test/v1/", id="user-and-password"),
        pytest.param("http://tenant@api.test:8080/v1/", "http://api.test:8080/v1/", id="user-only"),
        pytest.param("http://user:p@ss@api.test/v1/", "http://api.test/v1/", id="at-sign-in-password"),
        pytest.param("https://api.test/v1/?key=abc&api-version=1", "https://api.test/v1/?api-version=1", id="google-style-key"),
        pytest.param("https://api.test/v1/?api-version=1&api%2Dkey=abc", "https://api.test/v1/?api-version=1", id="percent-encoded-name"),
        pytest.param("https://acct.test/v1/?sig=abc&token=def", "https://acct.test/v1/", id="every-param-a-secret"),
        pytest.param("https://api.test/v1/?api-version=1", "https://api.test/v1/?api-version=1", id="no-secret-unchanged"),
        pytest.param("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1/", id="plain-unchanged"),
        pytest.param("hf:/models/tiny.gguf", "hf:/models/tiny.gguf", id="local-model-unchanged"),
    ],
)
def test_the_keyed_endpoint_drops_the_credentials_a_url_carries_and_nothing_else(endpoint: str, keyed: str) -> None:
    assert key_endpoint(endpoint) == keyed


def test_a_rotated_password_in_the_endpoint_keeps_the_key_and_another_host_does_not(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        def key(endpoint: str) -> str:
            return cache.key(route="chat", endpoint=endpoint, params=PARAMS)

        assert key("http://u:old@api.test/v1/") == key("http://u:new@api.test/v1/") == key("http://api.test/v1/")
        assert key("http://api.test/v1/?key=old") == key("http://api.test/v1/?key=new")
        assert key("http://api.test/v1/?api-version=1") != key("http://api.test/v1/?api-version=2")
        assert key("http://u:old@api.test/v1/") != key("http://u:old@other.test/v1/")


@pytest.mark.parametrize("name", ["key", "sig", "signature", "subscription-key", "api-key", "access_token", "token", "API_KEY"])
def test_query_credential_names(name: str) -> None:
    assert is_secret_query_param(name)


def test_query_only_credential_names_stay_ordinary_words_elsewhere() -> None:
    assert not is_secret_query_param("api-version") and not is_secret_query_param("deployment")
    assert not is_secret_key("key") and not is_secret_key("signature")  # a tool argument named "key" is kept in call logs


def test_a_credential_in_extra_query_under_a_query_only_name_is_left_out() -> None:
    assert canonical_params({"extra_query": {"key": "AIza-secret", "sig": "s", "api-version": "1"}}) == {"extra_query": {"api-version": "1"}}


@pytest.mark.parametrize(
    ("default_query", "call_query", "keyed"),
    [
        pytest.param({"api-version": "1"}, None, {"api-version": "1"}, id="default-alone"),
        pytest.param({"api-version": "1"}, {"x": 2}, {"api-version": "1", "x": 2}, id="merged"),
        pytest.param({"api-version": "1"}, {"api-version": "2"}, {"api-version": "2"}, id="the-call-wins"),
        pytest.param({"api-version": "1"}, {"api-version": openai.omit}, None, id="omit-removes-the-default"),
        pytest.param({"api-key": "s", "key": "s", "sig": "s"}, None, None, id="credentials-left-out"),
        pytest.param({}, {"x": 1}, {"x": 1}, id="no-default"),
    ],
)
def test_the_default_query_is_keyed_as_openai_merges_it(default_query: dict[str, Any], call_query: Any, keyed: Any) -> None:
    params = {**PARAMS, "extra_query": call_query}
    result = with_default_query(canonical_params(params), params, default_query)
    assert result.get("extra_query") == keyed and result["model"] == "m"


def test_a_default_query_keys_as_the_same_query_given_per_call(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        per_call = {**PARAMS, "extra_query": {"api-version": "1"}}
        default = with_default_query(canonical_params(PARAMS), PARAMS, {"api-version": "1"})
        endpoint = "http://api.test/v1/"
        assert cache.key_of_canonical(route="chat", endpoint=endpoint, canonical=default) == cache.key(route="chat", endpoint=endpoint, params=per_call)


def test_a_default_query_value_that_is_not_json_names_where_it_is() -> None:
    with pytest.raises(ConfigError, match=r"default_query\['v'\]"):
        with_default_query(canonical_params(PARAMS), PARAMS, {"v": b"bytes"})


# ------------------------------------------------------------------------------------------ through the client


def _answer_with_the_query(request: httpx2.Request) -> httpx2.Response:
    """A server whose answer is the api-version it was asked under, so an answer shared across versions shows."""
    version = request.url.params.get("api-version", "none")
    message = {"role": "assistant", "content": version}
    return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def _client(cache: Cache, base_url: str = "http://api.test/v1", **kwargs: Any) -> OpenAI:
    """A client on `cache` whose server is `_answer_with_the_query`."""
    http = httpx2.Client(transport=httpx2.MockTransport(_answer_with_the_query))
    return OpenAI(api_key="sk-test", base_url=base_url, http_client=http, cache=cache, **kwargs)


def _ask(client: openai.OpenAI) -> tuple[str | None, bool]:
    """The answer's text and whether the cache served it."""
    completion = client.chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]
    return completion.choices[0].message.content, completion.blackbox.cache_hit  # type: ignore[attr-defined]


def test_clients_with_different_default_queries_do_not_share_answers(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        assert _ask(_client(cache, default_query={"api-version": "2024-10-21"})) == ("2024-10-21", False)
        assert _ask(_client(cache, default_query={"api-version": "2025-01-01"})) == ("2025-01-01", False)
        assert _ask(_client(cache, default_query={"api-version": "2024-10-21"})) == ("2024-10-21", True)
        assert _ask(_client(cache).with_options(default_query={"api-version": "2025-01-01"})) == ("2025-01-01", True)


def test_wrapped_azure_clients_on_other_api_versions_do_not_share_answers(tmp_path: Path) -> None:
    http = httpx2.Client(transport=httpx2.MockTransport(_answer_with_the_query))
    with Cache(tmp_path / "c") as cache:
        for version, hit in (("2024-10-21", False), ("2025-01-01", False), ("2024-10-21", True)):
            azure = openai.AzureOpenAI(api_key="k", api_version=version, azure_endpoint="https://res.test", http_client=http)
            assert _ask(wrap(azure, cache=cache)) == (version, hit)


def test_a_rotated_password_in_the_base_url_still_hits(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        assert _ask(_client(cache, "http://user:old-secret@api.test/v1")) == ("none", False)
        assert _ask(_client(cache, "http://user:new-secret@api.test/v1")) == ("none", True)
        assert _ask(_client(cache, "http://user:new-secret@other.test/v1")) == ("none", False)
