"""The client on a local HuggingFace model (`hf:` URLs and the embedded default), no server."""

from __future__ import annotations

import logging
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion

from blackbox_sdk import AsyncOpenAI, BackendError, Budget, BudgetExceededError, OpenAI
from blackbox_sdk.local import default_encoder_path

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def local(gguf_path: Path) -> OpenAI:
    return OpenAI(base_url=f"hf:{gguf_path}")


def test_hf_url_answers_with_the_openai_type_and_true_usage(local: OpenAI) -> None:
    completion = local.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=6, temperature=0)
    assert isinstance(completion, ChatCompletion) and completion.choices[0].message.content
    assert completion.usage.prompt_tokens == local.backend.chat_prompt_tokens(QUESTION)
    assert completion.blackbox.usage_counted is False


def test_blackbox_usage_is_the_calls_usage_with_no_option_on(local: OpenAI) -> None:
    chat = local.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=3, temperature=0)
    text = local.completions.create(model="smollm2", prompt="Paris is", max_tokens=3, temperature=0)
    for answer in (chat, text):  # docs/client.md: `usage` is the whole call's, as it is once a stream has ended
        assert answer.usage is not None and answer.blackbox.usage == answer.usage.to_dict(warnings=False)


def test_local_n_is_one_batched_request(local: OpenAI) -> None:
    completion = local.chat.completions.create(model="smollm2", messages=QUESTION, n=3, max_tokens=4, temperature=1.0, seed=3)
    assert len(completion.choices) == 3 and completion.blackbox.requests == 1


def test_local_streaming_matches_the_whole_answer(local: OpenAI) -> None:
    whole = local.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=6, temperature=0)
    stream = local.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == whole.choices[0].message.content


def test_local_embeddings_are_cached_on_the_callers_arguments(gguf_path: Path, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache")
    first = client.embeddings.create(model="smollm2", input=["hello", "world"])
    again = client.embeddings.create(model="smollm2", input=["hello", "world"])
    assert len(first.data) == 2 and again.blackbox.cache_hit
    assert again.data[1].embedding == pytest.approx(first.data[1].embedding)


def test_local_model_costs_nothing_unless_priced(gguf_path: Path) -> None:
    free = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=0.01))
    assert free.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=3).blackbox.cost_usd == 0.0
    priced = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=0.01, prices={"smollm2": {"input": 1.0, "output": 1.0}}))
    assert priced.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=3).blackbox.cost_usd > 0.0


def test_no_key_and_no_url_uses_the_embedded_model(caplog: pytest.LogCaptureFixture, gguf_path: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        client = OpenAI()
    assert client.backend is not None and client.backend is OpenAI(base_url=f"hf:{gguf_path}").backend
    assert "embedded local model" in caplog.text


def test_an_api_key_means_the_real_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert OpenAI().backend is None


@pytest.mark.parametrize("env", [False, True], ids=["argument", "OPENAI_ADMIN_KEY"])
def test_an_admin_key_alone_means_the_real_endpoint(monkeypatch: pytest.MonkeyPatch, env: bool) -> None:
    """openai takes an admin key as the client's credential; the embedded model is only for a client with none."""
    if env:
        monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-test")
    client = OpenAI() if env else OpenAI(admin_api_key="sk-admin-test")
    assert client.backend is None and client.base_url.host == "api.openai.com"
    assert client.admin_api_key == "sk-admin-test"


async def test_async_local_client_streams(gguf_path: Path) -> None:
    client = AsyncOpenAI(base_url=f"hf:{gguf_path}")
    stream = await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4, temperature=0, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def test_local_bad_request_is_a_bad_request_error(local: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        local.chat.completions.create(model="smollm2", messages=QUESTION, n=0)


@pytest.mark.parametrize(
    "target",
    [pytest.param("/no/such/model.gguf", id="missing-file"), pytest.param(str(default_encoder_path()), id="an-encoder")],
)
def test_bad_local_models_raise_backend_error_at_construction(target: str) -> None:
    with pytest.raises(BackendError):
        OpenAI(base_url=f"hf:{target}")


def a_soft_prompt(local: OpenAI, seed: int = 0) -> object:
    import torch

    from blackbox_sdk.tuning import SoftPrompt

    table = local.backend.input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    embeds = table[torch.randint(0, table.shape[0], (4,), generator=generator)] * 3.0
    return SoftPrompt.create(embeds, model_id="smollm2", template="{text} It was {label}", verbalizer={"a": "good", "b": "bad"},
                             placement="prefix")


def test_a_soft_prompt_is_served_by_create_and_changes_the_answer(local: OpenAI, tmp_path: Path) -> None:
    prompt = a_soft_prompt(local)
    options = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, "temperature": 0, "logprobs": True}
    plain = local.chat.completions.create(**options)
    tuned = local.chat.completions.create(**options, soft_prompt=prompt)
    assert tuned.usage.prompt_tokens == plain.usage.prompt_tokens + 4
    first = lambda c: c.choices[0].logprobs.content[0].logprob  # noqa: E731
    assert first(tuned) != pytest.approx(first(plain), abs=1e-4)
    prompt.save(tmp_path / "prompt")
    bound = local.with_options(soft_prompt=tmp_path / "prompt")
    again = bound.chat.completions.create(**options)
    assert first(again) == pytest.approx(first(tuned), abs=1e-5)


def test_a_soft_prompt_folder_re_saved_is_served_again_as_an_adapter_folder_is_reloaded(
    local: OpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = a_soft_prompt(local, 0), a_soft_prompt(local, 1)
    options = {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0, "logprobs": True}
    logprob = lambda prompt: local.chat.completions.create(**options, soft_prompt=prompt).choices[0].logprobs.content[0].logprob  # noqa: E731
    expected = [logprob(first), logprob(second)]
    assert expected[0] != pytest.approx(expected[1], abs=1e-4)
    folder = first.save(tmp_path / "prompt")
    bound = local.with_options(soft_prompt=folder)
    assert logprob_of(bound, options) == pytest.approx(expected[0], abs=1e-5)
    second.save(folder)  # re-tuned, saved over the served folder
    bound.options.soft_prompt.reload_interval = 0.0  # looked at on each call (once a second by default)
    assert logprob_of(bound, options) == pytest.approx(expected[1], abs=1e-5)
    (folder / "soft_prompt.safetensors").write_bytes(b"cut short")  # a save that can't be read keeps the prompt loaded
    assert logprob_of(bound, options) == pytest.approx(expected[1], abs=1e-5)
    assert "can't be served" in caplog.text


def logprob_of(client: OpenAI, options: dict[str, object]) -> float:
    """The first token's logprob of the client's answer."""
    return client.chat.completions.create(**options).choices[0].logprobs.content[0].logprob


def test_two_soft_prompts_with_one_name_never_share_a_cached_answer(gguf_path: Path, local: OpenAI, tmp_path: Path) -> None:
    from blackbox_sdk.tuning import SoftPrompt

    first, second = (SoftPrompt(a_soft_prompt(local, seed).embeds, a_soft_prompt(local).info) for seed in (0, 1))
    assert first.name == second.name and not first.embeds.equal(second.embeds)  # say, a prompt re-tuned under its name
    options = {"model": "smollm2", "messages": QUESTION, "max_tokens": 4, "temperature": 0, "logprobs": True}
    cached = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache")
    cached.chat.completions.create(**options, soft_prompt=first)
    answer = cached.chat.completions.create(**options, soft_prompt=second)
    assert answer.blackbox.cache_hit is False
    fresh = local.chat.completions.create(**options, soft_prompt=second)
    assert answer.choices[0].logprobs.content[0].logprob == pytest.approx(fresh.choices[0].logprobs.content[0].logprob, abs=1e-5)


def test_a_soft_prompt_on_an_http_endpoint_is_refused_before_any_call(local: OpenAI) -> None:
    from blackbox_sdk import EmbeddingsNotSupportedError

    prompt = a_soft_prompt(local)
    with pytest.raises(EmbeddingsNotSupportedError):
        OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", soft_prompt=prompt)
    client = OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(EmbeddingsNotSupportedError):
        client.chat.completions.create(model="m", messages=QUESTION, soft_prompt=prompt)


def test_a_soft_prompt_registered_again_under_its_name_is_not_served_from_the_cache(
    gguf_path: Path, local: OpenAI, tmp_path: Path
) -> None:
    """extra_body={"soft_prompt": name}: the cache key follows the vectors registered under the name, not the name."""
    first, second = a_soft_prompt(local, 0), a_soft_prompt(local, 1)
    options = {"model": "smollm2", "messages": QUESTION, "max_tokens": 2, "temperature": 0, "logprobs": True}
    cached = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache")
    cached.backend.register_soft_prompt("re-tuned", first.embeds)
    cached.chat.completions.create(**options, extra_body={"soft_prompt": "re-tuned"})
    cached.backend.register_soft_prompt("re-tuned", second.embeds)  # the caller re-tuned the prompt under its name
    answer = cached.chat.completions.create(**options, extra_body={"soft_prompt": "re-tuned"})
    assert answer.blackbox.cache_hit is False
    fresh = local.chat.completions.create(**options, soft_prompt=second)
    assert answer.choices[0].logprobs.content[0].logprob == pytest.approx(fresh.choices[0].logprobs.content[0].logprob, abs=1e-5)
    again = cached.chat.completions.create(**options, extra_body={"soft_prompt": "re-tuned"})
    assert again.blackbox.cache_hit is True  # the same vectors under the same name: the same key


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_a_soft_prompts_positions_are_reserved_before_the_call(gguf_path: Path, local: OpenAI, route: str) -> None:
    """The budget's count of a request covers the soft prompt's L vectors, as its usage does: a limit one token short
    of the call is refused before it runs, never overspent."""
    prompt = a_soft_prompt(local)  # 4 vectors
    if route == "chat":
        tokens = local.backend.chat_prompt_tokens(QUESTION) + 4 + 1
        call = lambda client: client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=1, soft_prompt=prompt)  # noqa: E731
    else:
        tokens = local.backend.count_tokens("Paris is") + 4 + 1
        call = lambda client: client.completions.create(model="smollm2", prompt="Paris is", max_tokens=1, soft_prompt=prompt)  # noqa: E731
    prices = {"smollm2": {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 a token
    short = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=tokens - 1, prices=prices))
    with pytest.raises(BudgetExceededError):
        call(short)
    assert short.options.budget.spent() == 0.0
    exact = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=tokens, prices=prices))
    answer = call(exact)
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == tokens == exact.options.budget.spent()


def test_a_list_of_prompts_is_reserved_its_prompts_once_as_the_local_model_bills_them(gguf_path: Path, local: OpenAI) -> None:
    """The local model answers `n` itself, so a list of prompts is reserved each prompt once, not once per choice of every
    prompt as for a server not yet seen to honour `n`: a limit of exactly the bill lets it through, one token less refuses it."""
    prompts = ["Paris is", "The sky is", "Two and two make"]
    used = local.completions.create(model="smollm2", prompt=prompts, max_tokens=1, temperature=0).usage
    prices = {"smollm2": {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 a token
    exact = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=used.total_tokens, prices=prices))
    answer = exact.completions.create(model="smollm2", prompt=prompts, max_tokens=1, temperature=0)
    assert answer.usage.total_tokens == used.total_tokens == exact.options.budget.spent()
    short = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=used.total_tokens - 1, prices=prices))
    with pytest.raises(BudgetExceededError):
        short.completions.create(model="smollm2", prompt=prompts, max_tokens=1, temperature=0)
    assert short.options.budget.spent() == 0.0


HISTORIES = {
    "text-parts": [{"role": "user", "content": [{"type": "input_text", "text": "The capital"}, {"type": "input_text", "text": "of France?"}]}],
    "tool-calls": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ],
}


@pytest.mark.parametrize("history", list(HISTORIES))
def test_a_responses_input_is_reserved_as_the_local_model_reads_it(gguf_path: Path, local: OpenAI, history: str) -> None:
    """The budget counts a Responses input's items as the local model renders them (parts joined by newlines, calls as
    an assistant's lines, outputs as tool turns): a limit one token short of the call refuses it before it runs."""
    options = {"model": "smollm2", "input": HISTORIES[history], "instructions": "Be brief.", "max_output_tokens": 1}
    used = local.responses.create(**options).usage
    prices = {"smollm2": {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 a token
    short = OpenAI(base_url=f"hf:{gguf_path}", budget=Budget(total_usd=used.total_tokens - 1, prices=prices))
    with pytest.raises(BudgetExceededError):
        short.responses.create(**options)
    assert short.options.budget.spent() == 0.0


def test_digest_named_soft_prompts_are_bounded_and_one_dropped_is_served_again_by_its_name(
    local: OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tuning run re-registers candidates under one name and sends each through extra_body: the backend keeps its
    digest-named copies for the most recent few only; the name sent again serves its vectors again, and a dropped
    digest name sent by itself is a 400 that says what happened."""
    from blackbox_sdk.local._soft_prompts import SoftPrompts

    backend = local.backend
    monkeypatch.setattr(backend, "_soft_prompts", SoftPrompts(kept=2))
    options = {"model": "smollm2", "prompt": "Paris is", "max_tokens": 1, "temperature": 0, "logprobs": 1}
    candidates = [a_soft_prompt(local, seed).embeds for seed in range(4)]
    sent = []
    for embeds in candidates:
        backend.register_soft_prompt("candidate", embeds)
        sent.append(backend.served_soft_prompt("candidate"))
        local.completions.create(**options, extra_body={"soft_prompt": "candidate"})
    assert len(set(sent)) == 4 and len(backend._soft_prompts) == 1 + 2  # the caller's name, the two latest digests
    with pytest.raises(openai.BadRequestError, match="most recently used"):
        local.completions.create(**options, extra_body={"soft_prompt": sent[0]})
    backend.register_soft_prompt("candidate", candidates[0])  # the first candidate, named again
    again = local.completions.create(**options, extra_body={"soft_prompt": "candidate"})
    first = local.completions.create(**options, soft_prompt=a_soft_prompt(local, 0))  # the option registers its own
    assert again.choices[0].logprobs.token_logprobs == pytest.approx(first.choices[0].logprobs.token_logprobs, abs=1e-5)
    assert len(backend._soft_prompts) == 1 + 2
