"""`tokenizer=`: budgets count what the endpoint will count. A tiktoken name, a callable, the
model's own GGUF (its chat template rendered), or the server's tokenize route (llama.cpp's here)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import Budget, ConfigError, OpenAI, StoreUnavailableError, _tokenizer
from blackbox_sdk._pipeline._core import checked, prepare
from blackbox_sdk._tokenizer import ServerTokenizer, TokenCounter, Tokenizers, open_tokenizer
from blackbox_sdk.local import default_encoder_path
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


def test_text_no_request_can_carry_is_openais_error_not_a_tokenize_route_outage(llama_server: str, tmp_path: Path) -> None:
    """A lone surrogate in a message: openai's client raises UnicodeEncodeError as it encodes the request; counted
    through the server's tokenize route it was a StoreUnavailableError blaming the route (a store outage to retry),
    advising tokenizer=, with which the send fails the same. Nothing is held or spent; the route still counts after."""
    lone = [{"role": "user", "content": "Hi \ud800"}]
    with pytest.raises(UnicodeEncodeError):
        openai.OpenAI(base_url=llama_server, api_key="sk-test", max_retries=0).chat.completions.create(model=MODEL, messages=lone, max_tokens=2)
    budget = Budget(total_usd=1.0, prices={MODEL: {"input": 1.0, "output": 1.0}}, ledger=tmp_path / "ledger.db")
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, max_retries=0)
    with pytest.raises(UnicodeEncodeError):
        client.chat.completions.create(model=MODEL, messages=lone, max_tokens=2)
    assert budget.report().outstanding_reservations == 0 and budget.report().spent_usd == 0
    assert _counted(client, COMPLETIONS, {"prompt": "The capital of France is"}).exact


def test_a_server_without_a_tokenize_route_falls_back_to_tiktoken() -> None:
    server = ServerTokenizer("http://127.0.0.1:9/v1", {})  # nothing listens there
    assert server.counter(MODEL) is None


class _StallingTokenizeRoute:
    """A loopback llama.cpp look-alike whose tokenize route answers the SDK's probe, then stalls past the SDK's
    timeout (a busy server: counts queue behind generation); chat completions are counted, never answered."""

    def __init__(self) -> None:
        self.counts, self.chats = 0, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/tokenize/count"):
                    owner.counts += 1
                    if owner.counts > 1:
                        time.sleep(1.0)
                    body = json.dumps({"count": 1}).encode()
                else:
                    owner.chats += 1
                    body = b"{}"
                with contextlib.suppress(OSError):  # the SDK gave up waiting
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_a_tokenize_route_that_stops_answering_fails_closed_with_the_sdks_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A count the route found on the probe times out later: a StoreUnavailableError (a BlackBoxError) before anything
    is reserved or sent, not httpx's raw ReadTimeout."""
    monkeypatch.setattr(_tokenizer, "SERVER_TIMEOUT_S", 0.2)
    route = _StallingTokenizeRoute()
    try:
        budget = Budget(total_usd=1.0, prices={MODEL: {"input": 1.0, "output": 1.0}}, ledger=tmp_path / "ledger.db")
        client = OpenAI(base_url=route.url, api_key="sk-secret-key", budget=budget, max_retries=0)
        with pytest.raises(StoreUnavailableError, match="tokenize route") as refused:
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
        assert isinstance(refused.value.__cause__, httpx2.ReadTimeout) and "sk-secret-key" not in str(refused.value)
        assert route.chats == 0 and budget.report().outstanding_reservations == 0 and budget.report().spent_usd == 0
    finally:
        route.server.shutdown()
        route.server.server_close()


MINILM_TOKENIZER = ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every AutoTokenizer load from here on (the real one still loads), with the process's tokenizers forgotten."""
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained
    seen: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", counting)
    monkeypatch.setattr(_tokenizer, "TOKENIZERS", Tokenizers())
    return seen


def _tokenizer_folder(folder: Path) -> Path:
    """A HuggingFace tokenizer folder of our own (MiniLM's, from its package): files a test may replace."""
    folder.mkdir()
    for name in MINILM_TOKENIZER:
        shutil.copyfile(default_encoder_path() / name, folder / name)
    return folder


def test_a_gguf_tokenizer_loads_once_for_the_client_its_copies_and_each_call(gguf_path: Path, loads: list[str]) -> None:
    client = OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1", tokenizer=gguf_path)
    copied = client.with_options(tokenizer=str(gguf_path))
    calls = [client.options.merge(client._core.opened, tokenizer=gguf_path) for _ in range(3)]  # what each call's begin merges
    assert len(loads) == 1
    assert all(options.tokenizer is client.options.tokenizer for options in (copied.options, *calls))
    assert _counted(copied, CHAT, {"messages": QUESTION}).exact  # the model's own chat template, as before


def test_a_tokenizer_whose_files_are_replaced_is_loaded_again(tmp_path: Path, loads: list[str]) -> None:
    folder = _tokenizer_folder(tmp_path / "tokenizer")
    (tmp_path / "link").symlink_to(folder)
    first = open_tokenizer(folder)
    assert open_tokenizer(str(folder)) is first and open_tokenizer(tmp_path / "link") is first and len(loads) == 1
    replacement = tmp_path / "tokenizer.json.new"
    shutil.copyfile(folder / "tokenizer.json", replacement)
    replacement.replace(folder / "tokenizer.json")  # a new file in its place, as a download or `mv` leaves it
    second = open_tokenizer(folder)
    assert second is not first and len(loads) == 2 and second.count("hello world") == first.count("hello world")
    os.utime(folder / "vocab.txt", ns=(1, 1))  # edited in place: another modification time
    assert open_tokenizer(folder) is not second and len(loads) == 3
    assert open_tokenizer(folder) is open_tokenizer(folder) and len(loads) == 3


def test_threads_asking_for_a_new_tokenizer_at_once_load_it_once(tmp_path: Path, loads: list[str]) -> None:
    folder = _tokenizer_folder(tmp_path / "tokenizer")
    with ThreadPoolExecutor(4) as pool:
        counters = list(pool.map(lambda _: open_tokenizer(folder), range(8)))
    assert len(loads) == 1 and all(counter is counters[0] for counter in counters)


def test_only_the_most_recently_used_tokenizers_are_kept(tmp_path: Path, loads: list[str]) -> None:
    kept = Tokenizers(size=1)
    one, two = _tokenizer_folder(tmp_path / "one"), _tokenizer_folder(tmp_path / "two")
    kept.get(one), kept.get(two), kept.get(two), kept.get(one)
    assert loads == [str(one), str(two), str(one)]


class _VLLMTokenizeRoute:
    """A loopback stand-in for vLLM's `POST /tokenize` (no vLLM runs here), counting with a real HuggingFace tokenizer
    that adds special tokens ([CLS] and [SEP]) as vLLM does: with them unless the body's `add_special_tokens` is false.
    llama.cpp's route is absent (404), as on vLLM."""

    def __init__(self, tokenizer: Any) -> None:
        owner = self
        self.tokenizer = tokenizer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path != "/tokenize":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                tokens = owner.tokenizer.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                answer = json.dumps({"count": len(tokens), "tokens": tokens, "max_model_len": 512}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_vllms_tokenize_route_counts_a_text_prompt_with_its_special_tokens_and_an_answer_without() -> None:
    """vLLM's completions add the tokenizer's special tokens to every text prompt (a BOS, or BERT's [CLS] and [SEP]):
    a prompt is counted with them, so a list of prompts is reserved as billed; an answer (and chat text) without."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_encoder_path()))
    route = _VLLMTokenizeRoute(tokenizer)
    try:
        client = OpenAI(base_url=route.url, api_key="sk-test")  # loopback: its tokenize route is asked by default
        prompts = ["The capital of France is", "Paris", "Rome is a city"]
        billed = sum(len(tokenizer.encode(text)) for text in prompts)  # what vLLM reports as prompt_tokens
        assert _counted(client, COMPLETIONS, {"prompt": prompts}).tokens == billed
        counter = client._core.count.server.counter(MODEL)
        assert counter.name == "vllm server tokenizer" and counter.count("Paris") == len(tokenizer.encode("Paris")) - 2
    finally:
        route.server.shutdown()
        route.server.server_close()
