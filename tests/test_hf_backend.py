"""HFBackend on the real SmolLM2 GGUF: loading rules, validation before compute, and the tuning hooks."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blackbox_sdk._exceptions import BackendError, ConfigError
from blackbox_sdk.local import HFBackend, LocalRequestError, default_encoder_path, default_gguf_path, load_backend

COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
GREEDY = {"messages": COUNT, "max_tokens": 8, "temperature": 0}

pytest_plugins = ["local_model"]  # the backend fixture


def _without_the_model(backend: HFBackend, call: Callable[[], Any]) -> Any:
    """Run call while the model lock is held elsewhere: it can only finish if it never touches the model."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool, backend.lock:
        return pool.submit(call).exception(timeout=30)


def _text(chunks: list[dict[str, Any]]) -> str:
    """The content of a chat stream, joined."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_load_backend_loads_each_resolved_path_once(backend: HFBackend) -> None:
    path = default_gguf_path()
    assert load_backend(str(path)) is backend
    assert load_backend(path.parent / ".." / path.parent.name / path.name) is backend


@pytest.mark.parametrize(
    ("path", "says"),
    [
        pytest.param(lambda tmp: tmp / "missing.gguf", "no model at", id="missing-file"),
        pytest.param(lambda tmp: default_encoder_path() / "config.json", "not a GGUF file", id="json-file"),
        pytest.param(lambda tmp: default_encoder_path(), "not a causal language model", id="encoder-folder"),
        pytest.param(lambda tmp: tmp, "has no config.json", id="empty-folder"),
        pytest.param(lambda tmp: tmp / "a\0b.gguf", "can't look for a model at .*embedded null", id="nul-byte"),  # a raw ValueError before
        pytest.param(lambda tmp: tmp / ("a" * 5000), "can't look for a model at .*too long", id="name-too-long"),  # a raw OSError before
    ],
)
def test_bad_model_paths_raise_backend_error_at_construction(
    tmp_path: Path, path: Callable[[Path], Path], says: str
) -> None:
    with pytest.raises(BackendError, match=says):
        HFBackend(path(tmp_path))


def test_truncated_gguf_file_raises_backend_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(default_gguf_path().read_bytes()[:4096])
    with pytest.raises(BackendError, match="can't load"):
        HFBackend(broken)


@pytest.mark.parametrize(
    "options", [pytest.param({"device": "tpu9"}, id="device"), pytest.param({"dtype": "int3"}, id="dtype")]
)
def test_bad_device_or_dtype_raise_config_error(options: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        HFBackend(default_gguf_path(), **options)


def test_model_folder_loads_and_answers_chat(tmp_path: Path, backend: HFBackend) -> None:
    config = LlamaConfig(
        vocab_size=len(backend.tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        eos_token_id=backend.tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    backend.tokenizer.save_pretrained(tmp_path)
    local = HFBackend(tmp_path)
    reply = local.chat_completion({"messages": COUNT, "max_tokens": 3, "temperature": 0})
    assert local.model_id == tmp_path.name
    assert reply["usage"]["prompt_tokens"] == local.chat_prompt_tokens(COUNT)
    assert reply["usage"]["completion_tokens"] <= 3


def test_chat_prompt_tokens_counts_the_chat_template(backend: HFBackend) -> None:
    templated = backend.tokenizer.apply_chat_template(
        COUNT, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert backend.chat_prompt_tokens(COUNT) == len(templated)
    assert backend.count_tokens("Count from 1 to 10.") == len(backend.tokenizer.encode("Count from 1 to 10."))


def test_text_parts_read_like_the_same_string(backend: HFBackend) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Count from 1 to 10."}]}]
    assert backend.chat_prompt_tokens(parts) == backend.chat_prompt_tokens(COUNT)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param({"messages": []}, "messages", id="no-messages"),
        pytest.param({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", id="bad-role"),
        pytest.param({"messages": [{"role": "user"}]}, "messages[0].content", id="no-content"),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", id="image"
        ),
        pytest.param({"messages": COUNT, "n": 0}, "n", id="n-zero"),
        pytest.param({"messages": COUNT, "n": 1.5}, "n", id="n-float"),
        pytest.param({"messages": COUNT, "max_tokens": 0}, "max_tokens", id="max-tokens"),
        pytest.param({"messages": COUNT, "temperature": 2.5}, "temperature", id="temperature"),
        pytest.param({"messages": COUNT, "top_p": 1.5}, "top_p", id="top-p"),
        pytest.param({"messages": COUNT, "stop": ["a", "b", "c", "d", "e"]}, "stop", id="five-stops"),
        pytest.param({"messages": COUNT, "top_logprobs": 2}, "top_logprobs", id="top-logprobs-alone"),
        pytest.param({"messages": COUNT, "soft_prompt": "unknown"}, "soft_prompt", id="soft-prompt"),
        pytest.param({"messages": COUNT, "tools": [{"type": "function"}]}, "tools", id="tools"),
        pytest.param({**GREEDY, "web_search_options": {}}, "web_search_options", id="web-search-with-its-defaults"),
        pytest.param({**GREEDY, "modalities": ["text", "audio"]}, "modalities", id="audio-answer"),
        pytest.param({**GREEDY, "tool_choice": "required"}, "tool_choice", id="tool-choice-required"),
        pytest.param({**GREEDY, "function_call": {"name": "f"}}, "function_call", id="function-call-forced"),
        pytest.param({"messages": COUNT, "max_tokens": 10**6}, "messages", id="context"),
        pytest.param({"messages": COUNT, "n": 129, "max_tokens": 1}, "n", id="n-over-128"),
        pytest.param({"messages": COUNT, "temperature": "1", "max_tokens": 1}, "temperature", id="temperature-string"),
        pytest.param({"messages": COUNT, "top_p": "0.5", "max_tokens": 1}, "top_p", id="top-p-string"),
        pytest.param({**GREEDY, "stream_options": {"include_usage": True}}, "stream_options", id="not-streamed"),
        pytest.param({**GREEDY, "max_token": 4}, "max_token", id="unknown-param"),
        pytest.param({**GREEDY, "user": 5}, "user", id="ignored-but-mistyped"),
        pytest.param({**GREEDY, "messages": [{"role": "user", "content": []}]}, "messages[0].content", id="empty-parts"),
        pytest.param(
            {**GREEDY, "messages": [*COUNT, {"role": "tool", "content": "10"}]},
            "messages[1].tool_call_id",
            id="no-tool-call-id",
        ),
        pytest.param({**GREEDY, "response_format": {"type": "json_object"}}, "messages", id="json-unsaid"),
    ],
)
def test_invalid_chat_requests_fail_without_touching_the_model(
    backend: HFBackend, params: dict[str, Any], param: str
) -> None:
    error = _without_the_model(backend, lambda: backend.chat_completion(params))
    assert isinstance(error, LocalRequestError)
    assert error.param == param


@pytest.mark.parametrize(
    ("call", "params", "param"),
    [
        pytest.param("completion", {"prompt": ""}, "prompt[0]", id="empty-prompt"),
        pytest.param("completion", {"prompt": "Hi", "logprobs": 9}, "logprobs", id="logprobs-too-many"),
        pytest.param("embeddings", {"input": ""}, "input", id="empty-input"),
        pytest.param("embeddings", {"input": "hi", "encoding_format": "hex"}, "encoding_format", id="format"),
        pytest.param("embeddings", {"input": [10**9]}, "input[0]", id="token-out-of-vocab"),
        pytest.param("embeddings", {"input": "hi", "dimensions": 10**6}, "dimensions", id="dimensions-too-many"),
        pytest.param("embeddings", {"input": ["hi"] * 2049}, "input", id="inputs-over-2048"),
        pytest.param("embeddings", {"input": "hi", "dimension": 8}, "dimension", id="embeddings-unknown-param"),
        pytest.param("completion", {"prompt": "Hi", "max_tokens": 1, "sufix": "!"}, "sufix", id="completion-unknown"),
        pytest.param(
            "completion",
            {"prompt": "Hi", "max_tokens": 1, "stream_options": {"include_usage": True}},
            "stream_options",
            id="not-streamed",
        ),
    ],
)
def test_invalid_completion_and_embedding_requests_name_the_param(
    backend: HFBackend, call: str, params: dict[str, Any], param: str
) -> None:
    error = _without_the_model(backend, lambda: getattr(backend, call)(params))
    assert isinstance(error, LocalRequestError)
    assert error.param == param


def test_openai_fields_the_backend_ignores_and_tool_replies_are_accepted(backend: HFBackend) -> None:
    messages = [*COUNT, {"role": "assistant", "content": "1"}, {"role": "tool", "content": "2", "tool_call_id": "c1"}]
    ignored = {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "stream": False}
    reply = backend.chat_completion({**GREEDY, **ignored, "messages": messages, "max_tokens": 2, "temperature": 1})
    assert len(reply["choices"]) == 1 and reply["usage"]["completion_tokens"] >= 1  # an int temperature is a number
    said = [{"role": "user", "content": "Answer in JSON: count to 3."}]
    json_mode = {"response_format": {"type": "json_object"}}
    reply = backend.chat_completion({**GREEDY, "messages": said, "max_tokens": 2, **json_mode})
    assert reply["choices"][0]["message"]["content"].startswith("{")


WEATHER_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ASKED = {"role": "user", "content": "Weather in Paris?"}
ANSWERED = {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}


@pytest.mark.parametrize(
    "called",
    [
        pytest.param({"role": "assistant", "content": None, "tool_calls": [WEATHER_CALL]}, id="tool-calls"),
        pytest.param({"role": "assistant", "tool_calls": [WEATHER_CALL]}, id="content-left-out"),
        pytest.param({"role": "assistant", "content": None, "function_call": WEATHER_CALL["function"]}, id="function-call"),
    ],
)
def test_a_tool_call_history_is_read_with_the_calls_as_the_assistant_turns_text(
    backend: HFBackend, called: dict[str, Any]
) -> None:
    history = [ASKED, called, ANSWERED]
    written = [ASKED, {"role": "assistant", "content": 'get_weather({"city": "Paris"})'}, ANSWERED]
    assert backend.chat_prompt_tokens(history) == backend.chat_prompt_tokens(written)
    reply = backend.chat_completion({"messages": history, "max_tokens": 1, "temperature": 0})
    assert reply["usage"]["prompt_tokens"] == backend.chat_prompt_tokens(written)


@pytest.mark.parametrize("content", ["18C, sunny", None], ids=["text", "null"])
def test_a_legacy_function_message_answers_its_call_as_a_tool_message_does(backend: HFBackend, content: str | None) -> None:
    called = {"role": "assistant", "content": None, "function_call": WEATHER_CALL["function"]}
    answered = {"role": "function", "name": "get_weather", "content": content}  # OpenAI's deprecated answer to a function_call
    written = [ASKED, called, {"role": "tool", "tool_call_id": "call_1", "content": content or ""}]
    assert backend.chat_prompt_tokens([ASKED, called, answered]) == backend.chat_prompt_tokens(written)
    reply = backend.chat_completion({"messages": [ASKED, called, answered], "max_tokens": 1, "temperature": 0})
    assert reply["usage"]["prompt_tokens"] == backend.chat_prompt_tokens(written)


def test_an_assistant_turns_text_and_calls_are_read_together(backend: HFBackend) -> None:
    said = {"role": "assistant", "content": "Let me check.", "tool_calls": [WEATHER_CALL, {**WEATHER_CALL, "id": "call_2"}]}
    written = {"role": "assistant", "content": 'Let me check.\nget_weather({"city": "Paris"})\nget_weather({"city": "Paris"})'}
    assert backend.chat_prompt_tokens([ASKED, said]) == backend.chat_prompt_tokens([ASKED, written])


def test_an_assistant_refusal_part_is_read_as_its_text(backend: HFBackend) -> None:
    parts = [{"type": "text", "text": "Let me check."}, {"type": "refusal", "refusal": "I can't share that."}]
    said = {"role": "assistant", "content": parts, "tool_calls": [WEATHER_CALL]}
    written = {"role": "assistant", "content": 'Let me check.\nI can\'t share that.\nget_weather({"city": "Paris"})'}
    assert backend.chat_prompt_tokens([ASKED, said]) == backend.chat_prompt_tokens([ASKED, written])


TEXT = {"type": "text", "text": "Hi"}


@pytest.mark.parametrize(
    ("message", "says"),
    [
        pytest.param({"role": "user", "content": [TEXT, {"type": "input_audio"}]}, "reads text only", id="audio"),
        pytest.param({"role": "user", "content": [TEXT, {"type": "file", "file": {}}]}, "reads text only", id="file"),
        pytest.param({"role": "user", "content": [TEXT, {"type": "refusal", "refusal": "no"}]}, "'file', not 'refusal'", id="user-refusal"),
        pytest.param({"role": "system", "content": [TEXT, {"type": "image_url"}]}, "of type 'text', not 'image_url'", id="system-image"),
        pytest.param({"role": "assistant", "content": [TEXT, {"type": "image_url"}]}, "'refusal', not 'image_url'", id="assistant-image"),
        pytest.param({"role": "assistant", "content": [TEXT, {"type": "refusal"}]}, "needs its 'refusal' string", id="refusal-no-text"),
        pytest.param({"role": "user", "content": [TEXT, "Hi"]}, "not None", id="bare-string"),
    ],
)
def test_a_content_part_the_model_cannot_read_is_refused_by_its_index(
    backend: HFBackend, message: dict[str, Any], says: str
) -> None:
    error = _without_the_model(backend, lambda: backend.chat_completion({"messages": [message], "max_tokens": 1}))
    assert isinstance(error, LocalRequestError) and error.param == "messages[0].content[1]"
    assert says in str(error)


@pytest.mark.parametrize(
    ("messages", "param", "says"),
    [
        pytest.param([{"role": "user", "content": None}], "messages[0].content", "null only", id="user-null"),
        pytest.param([ASKED, {"role": "assistant", "content": None}], "messages[1].content", "null only", id="no-calls"),
        pytest.param([ASKED, {"role": "tool", "tool_call_id": "c", "content": None}], "messages[1].content", "null only", id="tool-null"),
        pytest.param([ASKED, {"role": "function", "content": "18C"}], "messages[1].name", "needs the name", id="function-no-name"),
        pytest.param(
            [ASKED, {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]}],
            "messages[1].tool_calls[0]", "function", id="call-without-function",
        ),
        pytest.param(
            [ASKED, {"role": "assistant", "tool_calls": [{**WEATHER_CALL, "function": {"name": "f"}}]}],
            "messages[1].tool_calls[0].function.arguments", "Field required", id="call-without-arguments",
        ),
    ],
)
def test_null_content_without_calls_and_malformed_calls_are_refused(
    backend: HFBackend, messages: list[dict[str, Any]], param: str, says: str
) -> None:
    error = _without_the_model(backend, lambda: backend.chat_completion({"messages": messages, "max_tokens": 1}))
    assert isinstance(error, LocalRequestError) and error.param == param
    assert says in str(error)


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]], ["Hi", [1, 2]]], ids=["ids", "lists-of-ids", "mixed"])
def test_token_id_prompts_are_refused_with_the_reason(backend: HFBackend, prompt: list[Any]) -> None:
    error = _without_the_model(backend, lambda: backend.completion({"prompt": prompt, "max_tokens": 1}))
    assert isinstance(error, LocalRequestError) and error.param == "prompt"
    assert "token-id prompts are not supported by the local backend; send text" in str(error)


def test_greedy_n_repeats_the_one_decoding_and_bills_each_choice(backend: HFBackend) -> None:
    reply = backend.chat_completion({**GREEDY, "n": 2})
    first, second = (c["message"]["content"] for c in reply["choices"])
    assert first == second
    assert reply["usage"]["completion_tokens"] == 2 * backend.chat_completion(GREEDY)["usage"]["completion_tokens"]


def test_seeded_generation_leaves_the_global_rng_alone(backend: HFBackend) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    backend.chat_completion({"messages": COUNT, "max_tokens": 2, "seed": 7})
    assert torch.equal(torch.rand(3), expected)


def test_stream_logprobs_match_the_non_streamed_ones(backend: HFBackend) -> None:
    params = {**GREEDY, "logprobs": True, "top_logprobs": 2}
    whole = backend.chat_completion(params)["choices"][0]["logprobs"]["content"]
    chunks = list(backend.chat_completion_stream(params))
    streamed = [e for c in chunks for e in ((c["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in whole], abs=1e-4)


def test_closing_a_stream_early_stops_generation(backend: HFBackend) -> None:
    stream = backend.chat_completion_stream({"messages": COUNT, "max_tokens": 200, "temperature": 0})
    chunks = [next(stream), next(stream)]
    assert backend.lock.locked()
    stream.close()
    assert not backend.lock.locked()
    assert chunks[1]["choices"][0]["delta"]["content"]


def test_completion_echo_and_logprobs_follow_the_legacy_shape(backend: HFBackend) -> None:
    prompt = "The capital of France is"
    echoed = backend.completion({"prompt": prompt, "max_tokens": 4, "temperature": 0, "echo": True})
    plain = backend.completion({"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 1})
    choice = plain["choices"][0]
    assert echoed["choices"][0]["text"] == prompt + choice["text"]
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"])
    assert plain["usage"]["prompt_tokens"] == backend.count_tokens(prompt)


def test_embeddings_are_unit_vectors_in_float_and_base64(backend: HFBackend) -> None:
    floats = backend.embeddings({"input": ["hello there", "tea"], "encoding_format": "float"})
    packed = backend.embeddings({"input": ["hello there", "tea"], "encoding_format": "base64"})
    hidden = backend.input_embeddings().embedding_dim
    for as_list, as_b64 in zip(floats["data"], packed["data"], strict=True):
        vector = torch.tensor(as_list["embedding"])
        decoded = torch.frombuffer(bytearray(base64.b64decode(as_b64["embedding"])), dtype=torch.float32)
        assert vector.shape == (hidden,)
        assert torch.allclose(vector, decoded)
        assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert floats["usage"]["prompt_tokens"] == backend.count_tokens("hello there") + backend.count_tokens("tea")


def test_embedding_of_a_text_does_not_depend_on_its_batch(backend: HFBackend) -> None:
    alone = backend.embeddings({"input": "tea", "encoding_format": "float"})["data"][0]["embedding"]
    padded = backend.embeddings({"input": ["tea", "a much longer sentence about tea"], "encoding_format": "float"})
    assert padded["data"][0]["embedding"] == pytest.approx(alone, abs=1e-4)


def test_embedding_dimensions_truncate_and_renormalise(backend: HFBackend) -> None:
    short = backend.embeddings({"input": "tea", "encoding_format": "float", "dimensions": 16})["data"][0]["embedding"]
    assert len(short) == 16
    assert torch.tensor(short).norm().item() == pytest.approx(1.0, abs=1e-5)


def test_forward_embeds_of_embedded_ids_equals_the_model_logits(backend: HFBackend) -> None:
    ids = torch.tensor([backend.tokenizer.encode("The capital of France is")])  # [1, T]
    embeds = backend.input_embeddings()(ids)  # [1, T, H]
    logits = backend.forward_embeds(embeds, torch.ones_like(ids), logits_to_keep=2)
    with torch.inference_mode():
        expected = backend.model(input_ids=ids).logits[:, -2:].float()
    assert logits.shape == (1, 2, backend.input_embeddings().num_embeddings)
    assert not logits.requires_grad
    assert torch.allclose(logits, expected, atol=1e-4)


def test_forward_embeds_gives_left_padded_rows_their_unpadded_logits(backend: HFBackend) -> None:
    long_ids = backend.tokenizer.encode("The capital of France is")
    short_ids = backend.tokenizer.encode("Paris is")
    pad = len(long_ids) - len(short_ids)
    ids = torch.tensor([long_ids, [0] * pad + short_ids])  # [2, T]
    mask = torch.tensor([[1] * len(long_ids), [0] * pad + [1] * len(short_ids)])  # [2, T]
    batch = backend.forward_embeds(backend.input_embeddings()(ids), mask)
    alone = backend.forward_embeds(backend.input_embeddings()(torch.tensor([short_ids])), torch.ones(1, len(short_ids)))
    assert torch.allclose(batch[1], alone[0], atol=1e-3)


def test_forward_embeds_rejects_a_wrong_hidden_size(backend: HFBackend) -> None:
    with pytest.raises(ConfigError, match="inputs_embeds"):
        backend.forward_embeds(torch.zeros(1, 3, 7), torch.ones(1, 3))


def test_registered_soft_prompt_changes_the_reply_and_counts_its_positions(backend: HFBackend) -> None:
    hidden = backend.input_embeddings().embedding_dim
    soft = torch.randn(4, hidden, generator=torch.Generator().manual_seed(0)) * 0.5
    backend.register_soft_prompt("test-soft", soft)
    params = {**GREEDY, "logprobs": True}
    plain = backend.chat_completion(params)
    tuned = backend.chat_completion({**params, "soft_prompt": "test-soft"})
    first_plain, first_tuned = (r["choices"][0]["logprobs"]["content"][0]["logprob"] for r in (plain, tuned))
    assert first_tuned != pytest.approx(first_plain, abs=1e-3)
    assert tuned["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 4
    assert _text(list(backend.chat_completion_stream({**GREEDY, "soft_prompt": "test-soft"}))) == (
        tuned["choices"][0]["message"]["content"]
    )


def test_register_soft_prompt_rejects_a_wrong_shape(backend: HFBackend) -> None:
    with pytest.raises(ConfigError, match="shape"):
        backend.register_soft_prompt("bad", torch.zeros(4, 3))

