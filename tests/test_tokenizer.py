"""`tokenizer=`: budgets count what the endpoint will count. A tiktoken name, a callable, the
model's own GGUF (its chat template rendered), or the server's tokenize route (llama.cpp's here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blackbox_sdk import ConfigError, OpenAI
from blackbox_sdk._pipeline._core import checked, prepare
from blackbox_sdk._tokenizer import ServerTokenizer, TokenCounter, open_tokenizer
from blackbox_sdk._types import CHAT, COMPLETIONS

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "The capital of France is"}]


def _counted(client: OpenAI, route: object, params: dict[str, object]) -> object:
    """The SDK's own prompt count for a request (what a budget reserves before sending)."""
    core = client._core
    return core.count.prompt(prepare(core, checked(core, route, {"model": MODEL, **params}, {})))


def test_a_tiktoken_name_and_a_callable_count_text() -> None:
    assert open_tokenizer("cl100k_base").count("hello world") == 2
    words = open_tokenizer(lambda text: len(text.split()))
    assert isinstance(words, TokenCounter) and words.count("one two three") == 3


@pytest.mark.parametrize("bad", ["no_such_encoding", "/no/such/folder", 3.5], ids=["name", "path", "number"])
def test_a_bad_tokenizer_is_refused_up_front(bad: object) -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", tokenizer=bad)


def test_the_models_gguf_renders_its_chat_template_exactly(gguf_path: Path) -> None:
    client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", tokenizer=gguf_path)
    local = OpenAI(base_url=f"hf:{gguf_path}")
    counted = _counted(client, CHAT, {"messages": QUESTION})
    assert counted.exact and counted.tokens == _counted(local, CHAT, {"messages": QUESTION}).tokens


def test_llama_cpp_counts_through_its_own_tokenize_route(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test")  # loopback: the server is asked by default
    reported = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=2).usage.prompt_tokens
    counted = _counted(client, COMPLETIONS, {"prompt": "The capital of France is"})
    assert counted.tokens == reported and counted.exact
    assert client._core.count.server.counter(MODEL).name == "llama.cpp server tokenizer"


def test_a_server_without_a_tokenize_route_falls_back_to_tiktoken() -> None:
    server = ServerTokenizer("http://127.0.0.1:9/v1", {})  # nothing listens there
    assert server.counter(MODEL) is None
