"""Text prompts of a model whose tokenizer starts each with a BOS (Llama's, Mistral's, Gemma's do; SmolLM2's does not):
the budget counts them as the endpoint bills them, BOS included, one per prompt, so a reservation is never short of
the bill. The model is the shipped SmolLM2 GGUF with its `tokenizer.ggml.add_bos_token` flag set, served by llama.cpp
and by the `hf:` backend."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from blackbox_sdk import Budget, BudgetExceededError, OpenAI
from blackbox_sdk._pipeline._core import checked, prepare
from blackbox_sdk._types import COMPLETIONS, EMBEDDINGS
from blackbox_sdk.local import LlamaServer

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 a token


@pytest.fixture(scope="module")
def bos_gguf(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Path:
    """A copy of the SmolLM2 GGUF whose tokenizer adds a BOS to every text it encodes."""
    path = tmp_path_factory.mktemp("bos") / "smollm2-bos.gguf"
    shutil.copyfile(gguf_path, path)
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    reader.data.flush()
    return path


@pytest.fixture(scope="module")
def bos_server(bos_gguf: Path) -> Iterator[str]:
    """llama.cpp's server on that GGUF (it tokenizes a text prompt with the model's special tokens)."""
    with LlamaServer(bos_gguf) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def bos_local(bos_gguf: Path) -> OpenAI:
    """The `hf:` backend on that GGUF."""
    return OpenAI(base_url=f"hf:{bos_gguf}")


def _counted(client: OpenAI, route: object, params: dict[str, object]) -> int:
    """The SDK's own prompt count for a request (what a budget reserves before sending, the endpoint's overhead aside)."""
    core = client._core
    return int(core.count.prompt(prepare(core, checked(core, route, {"model": MODEL, **params}, {}))).tokens)


def test_a_tokenizer_files_count_of_a_text_prompt_is_what_llama_cpp_bills(bos_server: str, bos_gguf: Path) -> None:
    client = OpenAI(base_url=bos_server, api_key="sk-test", tokenizer=bos_gguf, max_retries=0)
    billed = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=1).usage.prompt_tokens
    assert _counted(client, COMPLETIONS, {"prompt": "The capital of France is"}) == billed


@pytest.mark.parametrize("prompt", ["The capital of France is", ["The capital of France is", "Paris is", "Rome"]], ids=["text", "texts"])
def test_the_local_models_text_prompts_are_reserved_with_their_bos(bos_local: OpenAI, bos_gguf: Path, prompt: object) -> None:
    """A budget one token short of the call refuses it before it runs, never overspent."""
    billed = bos_local.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0).usage
    assert _counted(bos_local, COMPLETIONS, {"prompt": prompt}) == billed.prompt_tokens
    short = OpenAI(base_url=f"hf:{bos_gguf}", budget=Budget(total_usd=billed.total_tokens - 1, prices=PRICES))
    with pytest.raises(BudgetExceededError):
        short.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    assert short.options.budget.spent() == 0.0


def test_a_budget_of_exactly_the_local_bill_lets_a_text_prompt_through(bos_local: OpenAI, bos_gguf: Path) -> None:
    options = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0}
    billed = bos_local.completions.create(**options).usage.total_tokens
    exact = OpenAI(base_url=f"hf:{bos_gguf}", budget=Budget(total_usd=billed, prices=PRICES))
    assert exact.completions.create(**options).usage.total_tokens == billed == exact.options.budget.spent()


def test_the_local_models_embedding_inputs_are_counted_with_their_bos(bos_local: OpenAI) -> None:
    texts = ["The capital of France is", "Paris"]
    billed = bos_local.embeddings.create(model=MODEL, input=texts).usage.prompt_tokens
    assert _counted(bos_local, EMBEDDINGS, {"input": texts}) == billed


def test_an_answer_is_counted_without_a_bos(bos_local: OpenAI) -> None:
    """What a model generates carries no BOS: a counted answer is its text's tokens alone."""
    backend = bos_local.backend
    assert backend.text_prompt_tokens("Paris") == backend.count_tokens("Paris") + 1
