"""A type checker sees openai's own types on the SDK's clients (the package ships `py.typed`): each resource
the SDK runs is annotated with openai's class, resolves to it at run time, and is an instance of it, down
the views a caller reaches; copies are the client's own type, and `wrap` returns the matching client."""

from __future__ import annotations

import typing
from typing import Any

import openai
import openai.resources as oai
import pytest
from openai._client import AsyncOpenAIWithRawResponse, AsyncOpenAIWithStreamedResponse, OpenAIWithRawResponse, OpenAIWithStreamedResponse
from openai.resources.responses import responses as oai_responses
from typing_extensions import Self

from blackbox_sdk import AsyncOpenAI, OpenAI, wrap

URL = "http://127.0.0.1:9/v1"  # nothing listens there: nothing here sends
RESOURCES = {
    OpenAI: {
        "chat": oai.Chat, "completions": oai.Completions, "embeddings": oai.Embeddings, "responses": oai_responses.Responses,
        "with_raw_response": OpenAIWithRawResponse, "with_streaming_response": OpenAIWithStreamedResponse,
    },
    AsyncOpenAI: {
        "chat": oai.AsyncChat, "completions": oai.AsyncCompletions, "embeddings": oai.AsyncEmbeddings, "responses": oai_responses.AsyncResponses,
        "with_raw_response": AsyncOpenAIWithRawResponse, "with_streaming_response": AsyncOpenAIWithStreamedResponse,
    },
}
# Paths a caller walks from a client, each step typed by the annotation of the class the step before it declared.
VIEW_PATHS = (
    "chat.completions", "chat.completions.with_raw_response", "chat.completions.with_streaming_response",
    "chat.with_raw_response.completions", "chat.with_streaming_response.completions",
    "completions.with_raw_response", "embeddings.with_streaming_response", "responses.with_raw_response", "responses.with_streaming_response",
)
# The client-level views' resources (openai's own annotations there name classes imported only for type checkers).
CLIENT_VIEWS = {
    OpenAI: {"chat": (oai.ChatWithRawResponse, oai.ChatWithStreamingResponse), "completions": (oai.CompletionsWithRawResponse, oai.CompletionsWithStreamingResponse)},
    AsyncOpenAI: {"chat": (oai.AsyncChatWithRawResponse, oai.AsyncChatWithStreamingResponse), "completions": (oai.AsyncCompletionsWithRawResponse, oai.AsyncCompletionsWithStreamingResponse)},
}
CLIENTS = pytest.mark.parametrize("cls", [OpenAI, AsyncOpenAI], ids=["sync", "async"])


def _hint(owner: type[Any], name: str) -> Any:
    """The return annotation of a (cached) property, resolved as `typing.get_type_hints` resolves it."""
    attribute = getattr(owner, name)
    return typing.get_type_hints(getattr(attribute, "func", None) or attribute.fget)["return"]


@CLIENTS
@pytest.mark.parametrize("name", list(RESOURCES[OpenAI]))
def test_each_resource_the_sdk_runs_is_typed_as_openais_class_and_is_one(cls: type[Any], name: str) -> None:
    expected = RESOURCES[cls][name]
    assert _hint(cls, name) is expected
    assert isinstance(getattr(cls(api_key="sk-test", base_url=URL), name), expected)


@CLIENTS
@pytest.mark.parametrize("path", VIEW_PATHS)
def test_the_views_below_are_what_openais_annotations_say(cls: type[Any], path: str) -> None:
    value, declared = cls(api_key="sk-test", base_url=URL), cls
    for name in path.split("."):
        declared, value = _hint(declared, name), getattr(value, name)
        assert isinstance(value, declared), f"{path}: {name} is a {type(value).__name__}, typed {declared.__name__}"


@CLIENTS
def test_the_client_level_views_hold_openais_view_classes(cls: type[Any]) -> None:
    client = cls(api_key="sk-test", base_url=URL)
    for name, (raw, streamed) in CLIENT_VIEWS[cls].items():
        assert isinstance(getattr(client.with_raw_response, name), raw)
        assert isinstance(getattr(client.with_streaming_response, name), streamed)


@CLIENTS
def test_a_copy_is_typed_as_the_clients_own_class(cls: type[Any]) -> None:
    assert typing.get_type_hints(cls.copy)["return"] is Self and cls.with_options is cls.copy
    assert type(cls(api_key="sk-test", base_url=URL).with_options(timeout=3)) is cls


def test_wrap_is_typed_by_the_client_it_is_given() -> None:
    returns = [typing.get_type_hints(overload)["return"] for overload in typing.get_overloads(wrap)]
    assert returns == [OpenAI, AsyncOpenAI]
    assert [typing.get_type_hints(overload)["client"] for overload in typing.get_overloads(wrap)] == [openai.OpenAI, openai.AsyncOpenAI]


def test_the_backend_is_typed_as_the_local_model_or_none() -> None:
    from blackbox_sdk.local import HFBackend  # loads torch: named here only, as the client names it only for type checkers

    assert typing.get_type_hints(OpenAI.backend.fget, localns={"HFBackend": HFBackend})["return"] == HFBackend | None


def test_the_module_level_clients_resources_are_typed_as_openais(monkeypatch: pytest.MonkeyPatch) -> None:
    import blackbox_sdk

    monkeypatch.setattr(blackbox_sdk, "api_key", "sk-test")
    monkeypatch.setattr(blackbox_sdk, "base_url", URL)
    hints = typing.get_type_hints(blackbox_sdk)
    served = sorted(blackbox_sdk._CLIENT_ATTRIBUTES)
    assert {"chat", "responses", "with_raw_response"} <= set(served) and all(name not in vars(blackbox_sdk) for name in served)
    for name in served:
        assert isinstance(getattr(blackbox_sdk, name), hints[name]), name
    assert hints["chat"] is oai.Chat and hints["responses"] is oai_responses.Responses
