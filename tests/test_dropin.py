"""Drop-in to the letter: the SDK's clients are openai's own classes; `parse`, `stream` and the raw
views go through cache, budget and log on the real llama.cpp server; what the SDK does not run
passes through with openai's retries; a budget that refuses `create` refuses every generating call
before it is sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ParsedChatCompletion
from pydantic import BaseModel
from servers import InstantUpstream

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, CallLog, OpenAI, PriceMissingError, wrap

MODEL = "smollm2"
HI = [{"role": "user", "content": "Say hi in two words."}]
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}


class City(BaseModel):
    name: str
    country: str


class _Counting:
    """A loopback endpoint that counts the requests it gets; GET /models fails `failures` times with 500 first."""

    def __init__(self, failures: int = 0) -> None:
        self.posts: list[str] = []
        self.gets = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.gets += 1
                ok = owner.gets > failures
                body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "me"}]} if ok else {"error": {"message": "down"}}).encode()
                self.send_response(200 if ok else 500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts.append(self.path)
                self.send_response(500)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def counting() -> Iterator[_Counting]:
    server = _Counting(failures=1)
    yield server
    server.close()


def test_the_clients_are_openais_own_classes(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=None)
    assert isinstance(client, openai.OpenAI) and isinstance(client.with_options(timeout=5), openai.OpenAI)
    assert isinstance(client.with_options(max_retries=1), OpenAI)
    assert isinstance(AsyncOpenAI(base_url=llama_server, api_key="sk-test"), openai.AsyncOpenAI)
    wrapped = wrap(openai.OpenAI(base_url=llama_server, api_key="sk-test", default_headers={"X-Team": "a"}))
    assert isinstance(wrapped, OpenAI) and isinstance(wrapped, openai.OpenAI)
    assert wrapped.default_headers["X-Team"] == "a" and wrapped._core.inner.max_retries == 0
    assert isinstance(client.chat.completions, openai.resources.chat.Completions)


@pytest.mark.parametrize("cls", [OpenAI, AsyncOpenAI])
def test_data_residency_names_the_endpoint_as_in_openai(cls: type[OpenAI] | type[AsyncOpenAI]) -> None:
    """openai's `data_residency=` picks a regional URL when no base_url is given; the SDK's clients and their inner one too."""
    client = cls(api_key="sk-test", data_residency="eu")
    assert client.base_url == openai.OpenAI(api_key="sk-test", data_residency="eu").base_url
    assert client._core.inner.base_url == client.base_url and client.backend is None


def test_what_the_sdk_does_not_run_passes_through_with_openais_retries(counting: _Counting) -> None:
    client = OpenAI(base_url=counting.url, api_key="sk-test", max_retries=2)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert counting.gets == 2  # the 500 was retried by openai's own loop, as with a bare openai client


def test_parse_goes_through_cache_log_and_budget(llama_server: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache", log=tmp_path / "calls.db", budget=budget)
    first = client.chat.completions.parse(model=MODEL, messages=HI, max_tokens=12, temperature=0)
    again = client.chat.completions.parse(model=MODEL, messages=HI, max_tokens=12, temperature=0)
    assert isinstance(first, ParsedChatCompletion) and first.choices[0].message.content
    assert again.blackbox.cache_hit and again.choices[0].message.content == first.choices[0].message.content
    assert budget.report().spent_usd == pytest.approx(first.blackbox.cost_usd) and first.blackbox.cost_usd > 0
    assert len(list(CallLog(tmp_path / "calls.db").calls())) == 2


@pytest.mark.parametrize("cls", [OpenAI, AsyncOpenAI])
async def test_beta_chat_is_the_sdks_chat_as_openais_is_its_chat(cls: type[OpenAI] | type[AsyncOpenAI], llama_server: str, tmp_path: Path) -> None:
    """openai keeps `client.beta.chat` (where `parse` lived before 1.50) as its `client.chat`: code written for it is
    cached, budgeted and logged too, not sent around the SDK (refused, under a budget, as a route it can't price)."""
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = cls(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache", log=tmp_path / "calls.db", budget=budget)
    plain = (openai.OpenAI if cls is OpenAI else openai.AsyncOpenAI)(base_url=llama_server, api_key="sk-test")
    assert type(client.beta.chat) is type(client.chat) and type(plain.beta.chat) is type(plain.chat)
    answers = []
    for _ in range(2):
        answer = client.beta.chat.completions.parse(model=MODEL, messages=HI, max_tokens=12, temperature=0)
        answers.append(await answer if cls is AsyncOpenAI else answer)
    assert isinstance(answers[0], ParsedChatCompletion) and answers[1].blackbox.cache_hit
    assert budget.report().spent_usd == pytest.approx(answers[0].blackbox.cost_usd) and answers[0].blackbox.cost_usd > 0
    assert len(list(CallLog(tmp_path / "calls.db").calls())) == 2


def test_the_stream_helper_runs_on_the_sdks_create(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache", log=tmp_path / "calls.db")
    texts = []
    for _ in range(2):
        with client.chat.completions.stream(model=MODEL, messages=HI, max_tokens=40, temperature=0) as stream:
            deltas = [event.delta for event in stream if event.type == "content.delta"]
            final = stream.get_final_completion()
        assert "".join(deltas) == final.choices[0].message.content
        texts.append(final.choices[0].message.content)
    assert texts[0] == texts[1]
    records = list(CallLog(tmp_path / "calls.db").calls())
    assert len(records) == 2 and records[1].cache_hit
    assert final.blackbox is stream.blackbox and (stream.blackbox.call_id, stream.blackbox.cache_hit) == (records[1].call_id, True)


def test_raw_views_are_openais_with_parse_and_pass_through_methods(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", log=tmp_path / "calls.db")
    raw = client.chat.completions.with_raw_response.parse(model=MODEL, messages=HI, max_tokens=40, temperature=0)
    assert raw.headers.get("content-type", "").startswith("application/json")
    assert isinstance(raw.parse(), ParsedChatCompletion) and raw.blackbox.call_id
    assert callable(client.chat.completions.with_raw_response.retrieve)  # openai's, passed through
    assert callable(client.with_raw_response.models.list)
    cut = client.chat.completions.with_raw_response.parse(model=MODEL, messages=HI, max_tokens=2)
    with pytest.raises(openai.LengthFinishReasonError):
        cut.parse()  # the caller's parse raises what openai raises; the SDK still charged and logged the answer
    records = list(CallLog(tmp_path / "calls.db").calls())
    assert [r.call_id for r in records] == [raw.blackbox.call_id, cut.blackbox.call_id]
    assert all(r.error is None and r.usage for r in records)


async def test_async_parse_stream_and_raw_views(llama_server: str, tmp_path: Path) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", log=tmp_path / "calls.db")
    parsed = await client.chat.completions.parse(model=MODEL, messages=HI, max_tokens=12, temperature=0)
    assert isinstance(parsed, ParsedChatCompletion) and parsed.blackbox.call_id
    async with client.chat.completions.stream(model=MODEL, messages=HI, max_tokens=40, temperature=0) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_completion()
    assert events and final.choices[0].message.content
    assert final.blackbox is stream.blackbox and stream.blackbox.call_id == list(CallLog(tmp_path / "calls.db").calls())[-1].call_id
    raw = await client.chat.completions.with_raw_response.parse(model=MODEL, messages=HI, max_tokens=40, temperature=0)
    assert isinstance(raw.parse(), ParsedChatCompletion)
    async with client.with_streaming_response.chat.completions.create(model=MODEL, messages=HI, max_tokens=4) as response:
        assert json.loads(await response.read())["choices"]
    await client.close()
    assert len(list(CallLog(tmp_path / "calls.db").calls())) == 4


def _refused(call: Any) -> None:
    with pytest.raises(BudgetExceededError):
        call()


def test_a_budget_that_refuses_create_refuses_every_generating_call_before_sending(counting: _Counting, tmp_path: Path) -> None:
    budget = Budget(total_usd=1e-6, prices={**PRICES, "emb": {"input": 1000.0, "output": 0.0}}, ledger=tmp_path / "ledger.db", estimate_margin=0.25)
    client = OpenAI(base_url=counting.url, api_key="sk-test", budget=budget, max_retries=0)
    big = {"model": MODEL, "messages": HI, "max_tokens": 500}
    _refused(lambda: client.chat.completions.create(**big))
    _refused(lambda: client.chat.completions.parse(**big))
    _refused(lambda: client.chat.completions.stream(**big).__enter__())
    _refused(lambda: client.chat.completions.with_raw_response.parse(**big))
    _refused(lambda: client.completions.create(model=MODEL, prompt="Hi", max_tokens=500))
    _refused(lambda: client.embeddings.create(model="emb", input="a long text " * 200))
    _refused(lambda: client.embeddings.with_raw_response.create(model="emb", input="a long text " * 200))
    with pytest.raises(PriceMissingError, match="images/generations"):
        client.images.generate(prompt="a cat", model="dall-e-3")  # openai's own resource, which the SDK can't price
    with pytest.raises(PriceMissingError):
        client.post("/chat/completions", body={"model": MODEL, "messages": HI}, cast_to=object)
    generating = [p for p in counting.posts if not p.endswith(("/tokenize", "/tokenize/count"))]  # the tokenizer probe may ask
    assert generating == []  # nothing was sent
    with pytest.raises(openai.InternalServerError):
        client.with_options(budget=None).images.generate(prompt="a cat", model="dall-e-3")  # without the budget: sent
    assert counting.posts[-1].endswith("/images/generations")


def test_a_whole_raw_create_runs_the_whole_pipeline_with_the_servers_headers(llama_server: str, tmp_path: Path) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache", log=tmp_path / "calls.db")
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=6, temperature=0, n=2)
    assert first.headers.get("server") == "uvicorn"  # llama.cpp's server answered: its headers come through
    completion = first.parse()
    assert len(completion.choices) == 2 and not completion.blackbox.cache_hit  # fanned out: the server ignores n
    again = client.with_raw_response.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=0, n=2)
    assert again.blackbox.cache_hit and again.parse().choices[1].message.content == completion.choices[1].message.content
    assert "server" not in again.headers and again.headers["content-type"] == "application/json"  # nothing was sent
    assert [r.cache_hit for r in CallLog(tmp_path / "calls.db").calls()] == [False, True]


TWO_ANSWERS = {  # every answer has two choices: a cut JSON and a whole one (a reranker's candidates)
    "id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                for i, c in enumerate(['{"name": "Paris", "coun', '{"name": "Paris", "country": "France"}'])],
    "usage": {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29},
}


@pytest.fixture
def two_answers() -> Iterator[InstantUpstream]:
    """A chat endpoint that answers TWO_ANSWERS."""
    server = InstantUpstream(TWO_ANSWERS)
    yield server
    server.close()


def _prefers_the_first(question: str, answers: list[str]) -> list[float]:
    """A reranker that scores the candidates in the order they came."""
    return [1.0 - i for i in range(len(answers))]


def test_reranking_a_parse_prefers_answers_that_fit_the_schema(two_answers: InstantUpstream) -> None:
    client = OpenAI(base_url=two_answers.url, api_key="sk-test", reranker=_prefers_the_first, rerank_n=2)
    completion = client.chat.completions.parse(model=MODEL, messages=HI, response_format=City)
    assert completion.choices[0].message.parsed == City(name="Paris", country="France")
    assert completion.blackbox.scores == [1.0, 0.0] and completion.blackbox.chosen == [1]  # ranked second, chosen: it fits
    plain = client.chat.completions.create(model=MODEL, messages=HI)
    assert plain.blackbox.chosen == [0]  # without a schema the reranker's order stands


def test_a_reranked_stream_helper_prefers_answers_that_fit_the_schema(two_answers: InstantUpstream, tmp_path: Path) -> None:
    """`chat.completions.stream(response_format=...)` streams the best-scored answer that fits, as `parse` returns."""
    client = OpenAI(base_url=two_answers.url, api_key="sk-test", reranker=_prefers_the_first, rerank_n=2, log=tmp_path / "calls.db")
    with client.chat.completions.stream(model=MODEL, messages=HI, response_format=City) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == City(name="Paris", country="France")
    with client.chat.completions.stream(model=MODEL, messages=HI, rerank_n=2, cache=None) as stream:  # the SDK's options per call
        plain = stream.get_final_completion()
    assert plain.choices[0].message.content == '{"name": "Paris", "coun'  # without a schema the reranker's order stands
    assert [r.chosen for r in CallLog(tmp_path / "calls.db").calls()] == [[1], [0]]


async def test_a_reranked_async_stream_helper_prefers_answers_that_fit_the_schema(two_answers: InstantUpstream) -> None:
    client = AsyncOpenAI(base_url=two_answers.url, api_key="sk-test", reranker=_prefers_the_first, rerank_n=2)
    async with client.chat.completions.stream(model=MODEL, messages=HI, response_format=City) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == City(name="Paris", country="France")


def test_an_answer_passed_back_as_history_is_sent_as_openai_sends_it(llama_server: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache", log=tmp_path / "calls.db", budget=budget)
    first = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=0)
    history: list[Any] = [*HI, first.choices[0].message, {"role": "user", "content": "Again."}]  # the agent loop's habit
    answer = client.chat.completions.create(model=MODEL, messages=history, max_tokens=6, temperature=0)
    dumped = [*HI, first.choices[0].message.model_dump(mode="json", exclude_unset=True), history[-1]]
    again = client.chat.completions.create(model=MODEL, messages=dumped, max_tokens=6, temperature=0)
    assert answer.choices[0].message.content and not answer.blackbox.cache_hit
    assert again.blackbox.cache_hit and again.choices[0].message.content == answer.choices[0].message.content
    logged = list(CallLog(tmp_path / "calls.db").calls())[1]
    assert logged.request["messages"] == json.loads(json.dumps(dumped))


def test_responses_output_items_passed_back_as_input_go_through_the_pipeline(gguf_path: Path, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache", log=tmp_path / "calls.db")
    first = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, temperature=0)
    said, again = {"role": "user", "content": "Say hi."}, {"role": "user", "content": "Again."}
    follow = client.responses.create(model=MODEL, input=[said, *first.output, again], max_output_tokens=4, temperature=0)
    dumped = [said, *(item.model_dump(mode="json", exclude_unset=True) for item in first.output), again]
    hit = client.responses.create(model=MODEL, input=dumped, max_output_tokens=4, temperature=0)
    assert follow.output_text and not follow.blackbox.cache_hit
    assert hit.blackbox.cache_hit and hit.output_text == follow.output_text
    assert list(CallLog(tmp_path / "calls.db").calls())[1].request["input"] == json.loads(json.dumps(dumped))


def test_content_parts_given_as_a_tuple_or_generator_are_sent_as_a_list(gguf_path: Path, tmp_path: Path) -> None:
    client = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache", log=tmp_path / "calls.db")  # llama.cpp's server takes no parts
    part = {"type": "text", "text": "Say hi in two words."}
    asked = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0)
             for parts in ((part,), (p for p in [part]), [part])]
    assert [a.blackbox.cache_hit for a in asked] == [False, True, True]
    assert list(CallLog(tmp_path / "calls.db").calls())[0].request["messages"] == [{"role": "user", "content": [part]}]
    prompts = client.completions.create(model=MODEL, prompt=("1 2 3", "a b c"), max_tokens=2, temperature=0)  # a tuple of prompts too
    assert len(prompts.choices) == 2
