"""`client.responses` through the SDK's pipeline: cache (streams replayed as events), budget
(reserved from instructions + input and max_output_tokens, settled from input/output tokens),
rate limits, retries, the call log (route "responses"), `response.blackbox`, reranking over
`rerank_n` requests, and `parse` / `stream` built on them.

The real path is the local `hf:` backend, which answers /responses itself. Faults no real server
shows on demand (a stream cut before `response.completed`, a failed response, 500s before an
answer) use `responses_upstream.ResponsesUpstream`, a loopback double of the same wire format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.lib._parsing._responses import type_to_text_format_param
from pydantic import BaseModel

from blackbox_sdk import AsyncOpenAI, Budget, BudgetExceededError, CallLog, ConfigError, InvalidRequestError, OpenAI, PriceMissingError, RateLimitExceededError
from blackbox_sdk._pipeline import _flows
from blackbox_sdk.budget import count_tokens
from blackbox_sdk.limits import RateLimits
from blackbox_sdk.resources._responses_api import AsyncResponses, Responses

from pdfs import data_url, pdf
from responses_upstream import ResponsesUpstream
from servers import sse_upstream

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 2000.0}}  # dollars per million tokens: every token shows
QUESTION = "What is the capital of France?"


class City(BaseModel):
    name: str


def spent(usage: openai.types.responses.ResponseUsage) -> float:
    """What a response's usage costs at PRICES."""
    return (usage.input_tokens * 1000.0 + usage.output_tokens * 2000.0) / 1e6


@pytest.fixture
def budget(tmp_path: Path) -> Budget:
    return Budget(total_usd=100.0, prices=PRICES, ledger=tmp_path / "ledger.db")


@pytest.fixture
def log(tmp_path: Path) -> CallLog:
    return CallLog(tmp_path / "calls.db")


@pytest.fixture
def local(gguf_path: Path, tmp_path: Path, budget: Budget, log: CallLog) -> Iterator[OpenAI]:
    """The SDK client on the real local backend, with a cache, a budget and a log."""
    client = OpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache", budget=budget, log=log)
    yield client
    client.close()


def ask(client: OpenAI, **kwargs: object) -> object:
    params: dict[str, object] = {"model": MODEL, "input": QUESTION, "max_output_tokens": 8, "temperature": 0.0, **kwargs}
    return client.responses.create(**params)


def records(log: CallLog) -> list[object]:
    return list(log.calls())


def test_the_clients_responses_resource_is_the_sdks(gguf_path: Path) -> None:
    client = OpenAI(base_url=f"hf:{gguf_path}")
    assert isinstance(client.responses, Responses)
    assert isinstance(AsyncOpenAI(base_url=f"hf:{gguf_path}").responses, AsyncResponses)


def test_create_is_budgeted_logged_and_then_served_from_the_cache(local: OpenAI, budget: Budget, log: CallLog) -> None:
    first = ask(local)
    assert isinstance(first, openai.types.responses.Response) and first.output_text
    assert first.blackbox.cost_usd == pytest.approx(spent(first.usage)) and not first.blackbox.cache_hit
    assert budget.report().spent_usd == pytest.approx(spent(first.usage))
    again = ask(local)
    assert again.output_text == first.output_text and again.blackbox.cache_hit and again.blackbox.cost_usd == 0
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(spent(first.usage))
    logged = records(log)
    assert [r.route for r in logged] == ["responses", "responses"]
    assert [r.cache_hit for r in logged] == [False, True] and logged[0].candidates == [first.output_text]
    assert logged[0].usage["prompt_tokens"] == first.usage.input_tokens


def test_a_whole_raw_create_and_parse_repeat_from_the_cache(local: OpenAI, log: CallLog) -> None:
    raw = local.responses.with_raw_response.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0)
    first = raw.parse()
    assert raw.headers["content-type"].startswith("application/json") and not first.blackbox.cache_hit
    again = local.responses.with_raw_response.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0).parse()
    assert again.output_text == first.output_text and again.blackbox.cache_hit  # LangChain's ChatOpenAI calls this on invoke
    asked = {"model": MODEL, "input": QUESTION, "text_format": City, "max_output_tokens": 24, "temperature": 0}
    parsed = [local.responses.with_raw_response.parse(**asked).parse() for _ in range(2)]
    assert isinstance(parsed[1], openai.types.responses.ParsedResponse) and parsed[1].output_parsed == parsed[0].output_parsed
    assert [r.cache_hit for r in records(log)] == [False, True, False, True]


def test_the_output_cap_bounds_the_reservation_and_a_small_budget_refuses_before_sending(gguf_path: Path, tmp_path: Path, log: CallLog) -> None:
    tight = Budget(per_call_usd=0.001, prices=PRICES, ledger=tmp_path / "tight.db")
    client = OpenAI(base_url=f"hf:{gguf_path}", budget=tight, log=log)
    with pytest.raises(BudgetExceededError):
        ask(client, max_output_tokens=4096)
    with pytest.raises(BudgetExceededError):
        client.responses.parse(model=MODEL, input=QUESTION, text_format=City, max_output_tokens=4096)
    with pytest.raises(BudgetExceededError), client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=4096) as stream:
        stream.until_done()
    refused = records(log)
    assert [r.route for r in refused] == ["responses"] * 3
    assert all("BudgetExceededError" in r.error and r.extra["requests"] == 0 for r in refused)
    assert tight.report().spent_usd == 0 and tight.report().outstanding_reservations == 0


def test_a_finished_stream_is_stored_and_replayed_as_events(local: OpenAI, log: CallLog) -> None:
    events = list(ask(local, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text
    replayed = ask(local, stream=True)
    again = list(replayed)
    assert replayed.blackbox.cache_hit and [e.type for e in again] == [e.type for e in events]
    whole = ask(local)  # a whole request shares the streamed answer's bucket
    assert whole.blackbox.cache_hit and whole.output_text == text
    assert [r.cache_hit for r in records(log)] == [False, True, True]


def test_the_stream_helper_parses_the_final_response_and_an_early_close_is_accounted_at_once(local: OpenAI, budget: Budget, log: CallLog) -> None:
    with local.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0.0) as stream:
        final = stream.get_final_response()  # the helper needs `response.completed`: an answer that ends by itself
    assert final.output_text and budget.report().spent_usd == pytest.approx(spent(final.usage))
    assert final.blackbox is stream.blackbox and stream.blackbox.call_id == records(log)[-1].call_id  # for feedback
    with local.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0.0, cache=None) as stream:
        stream.until_done()  # the SDK's options per call: this one neither reads nor writes the cache
    assert [r.cache_hit for r in records(log)] == [False, False]
    with local.responses.stream(model=MODEL, input="Tell me a long story about a dragon.", max_output_tokens=32) as stream:
        next(e for e in stream if e.type == "response.output_text.delta")
    cut = records(log)[-1]
    assert cut.error is not None and cut.cost_usd > 0  # charged for what arrived, logged before the `with` ends
    assert cut.usage is not None and cut.usage["completion_tokens"] > 0  # with the tokens charged (the log keeps chat's usage fields)
    assert budget.report().outstanding_reservations == 0
    with local.responses.stream(model=MODEL, input="Tell me a long story about a dragon.", max_output_tokens=32) as stream:
        stream.until_done()
    assert not records(log)[-1].cache_hit  # the stream closed early was never stored


def test_rerank_sends_k_requests_and_returns_the_best_scored_answer(local: OpenAI, log: CallLog) -> None:
    def longest(question: str, answers: list[str]) -> list[float]:
        assert question == QUESTION
        return [float(len(a)) for a in answers]

    best = ask(local, temperature=1.0, reranker=longest, rerank_n=3)
    info = best.blackbox
    assert info.requests == 3 and len(info.candidates) == 3 and info.scores == [float(len(a)) for a in info.candidates]
    assert best.output_text == max(info.candidates, key=len)
    [logged] = records(log)
    assert logged.candidates == info.candidates and logged.chosen == info.chosen and logged.scores == info.scores
    streamed = ask(local, temperature=1.0, reranker=longest, rerank_n=3, stream=True)
    events = list(streamed)
    assert streamed.blackbox.cache_hit and events[-1].response.output_text == best.output_text


def test_parse_returns_output_parsed_through_the_pipeline(local: OpenAI, log: CallLog) -> None:
    parsed = local.responses.parse(model=MODEL, input="Name the capital of France as JSON.", text_format=City, max_output_tokens=24)
    assert isinstance(parsed.output_parsed, City) and parsed.blackbox.call_id == records(log)[-1].call_id


def test_reranked_stream_helpers_parse_on_the_real_backend(local: OpenAI, log: CallLog) -> None:
    """The real path of the stream helpers with a reranker and a schema: K answers of the local model
    (held to the schema), the chosen one streamed and parsed by openai's helper, for chat and Responses."""
    longest = lambda q, answers: [float(len(a)) for a in answers]  # noqa: E731
    asked = {"model": MODEL, "temperature": 0.7, "reranker": longest, "rerank_n": 2}
    with local.responses.stream(input="Name the capital of France as JSON.", text_format=City, max_output_tokens=48, **asked) as stream:
        response = stream.get_final_response()
    with local.chat.completions.stream(messages=[{"role": "user", "content": "Name the capital of France as JSON."}], response_format=City, max_tokens=48, **asked) as chat:
        completion = chat.get_final_completion()
    assert isinstance(response.output_parsed, City) and isinstance(completion.choices[0].message.parsed, City)
    assert [len(r.candidates) for r in records(log)] == [2, 2]


def test_a_rate_limit_refuses_the_call_past_its_window(gguf_path: Path) -> None:
    client = OpenAI(base_url=f"hf:{gguf_path}", rate_limit=RateLimits(rpm=1, per="client"))
    ask(client)
    with pytest.raises(RateLimitExceededError):
        ask(client, input="Another question?")


def test_a_malformed_request_is_refused_before_anything_is_spent(local: OpenAI, budget: Budget) -> None:
    with pytest.raises(InvalidRequestError):
        local.responses.create(model=MODEL, input=42)
    with pytest.raises(InvalidRequestError):
        local.responses.create(model=MODEL, input=QUESTION, max_output_tokens=0)
    assert budget.report().spent_usd == 0


async def test_async_create_stream_helper_and_parse(gguf_path: Path, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    client = AsyncOpenAI(base_url=f"hf:{gguf_path}", cache=tmp_path / "cache", budget=budget, log=log)
    resource = AsyncResponses(client)
    whole = await resource.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0.0)
    events = [e async for e in await resource.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0.0, stream=True)]
    assert events[-1].response.output_text == whole.output_text  # replayed from the cache
    async with resource.stream(model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0.0) as stream:
        final = await stream.get_final_response()
    assert final.output_text and final.blackbox is stream.blackbox and stream.blackbox.call_id == records(log)[-1].call_id
    parsed = await resource.parse(model=MODEL, input="Name the capital of France as JSON.", text_format=City, max_output_tokens=24)
    assert isinstance(parsed.output_parsed, City) and parsed.blackbox.call_id == records(log)[-1].call_id
    assert [r.cache_hit for r in records(log)] == [False, True, False, False]
    assert budget.report().outstanding_reservations == 0
    await client.close()


# ---------------------------------------------------------------- faults, on the loopback double


@pytest.fixture
def upstream() -> Iterator[ResponsesUpstream]:
    server = ResponsesUpstream(["Paris is the capital of France", "It is Paris", "Lyon"])
    yield server
    server.close()


def double_client(kind: type, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, **options: object) -> object:
    return kind(api_key="sk-test", base_url=upstream.url, cache=tmp_path / "cache", budget=budget, log=tmp_path / "calls.db", **options)


@pytest.mark.parametrize("mode", ["cut", "failed"])
def test_a_stream_that_never_completes_is_charged_never_cached_and_logged(mode: str, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    upstream.mode = mode
    client = double_client(OpenAI, upstream, tmp_path, budget)
    events = list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ("Paris is" if mode == "cut" else "Paris is the capital of France")
    [logged] = records(log)
    assert logged.route == "responses" and logged.cost_usd > 0
    assert logged.error.startswith("ConnectionError" if mode == "cut" else "RuntimeError: the response failed: boom")
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(logged.cost_usd)
    upstream.mode = "ok"
    list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True))
    assert len(upstream.bodies) == 2  # not served from the cache



@pytest.mark.parametrize("kind", ["response.function_call_arguments.delta", "response.refusal.delta", "response.reasoning_summary_text.delta"])
def test_a_cut_stream_is_charged_for_every_output_that_arrived(kind: str, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    """A stream cut before its final response is charged for what arrived: a function call's arguments, a refusal or a
    reasoning summary streamed are output tokens the server bills, as an answer's text is (they were charged as none)."""
    started = {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "in_progress", "output": []}
    where = {"item_id": "item_1", "output_index": 0, "content_index": 0, "summary_index": 0}
    events = [{"type": "response.created", "response": started}]
    events += [{"type": kind, **where, "delta": piece} for piece in ['{"city": "Paris", ', '"country": "France", ', '"population": 2102650}']]
    body = "".join(f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n" for i, e in enumerate(events)).encode()
    with sse_upstream(lambda headers: body) as url:
        client = OpenAI(api_key="sk-test", base_url=url, budget=budget, log=log, max_retries=0)
        assert [e.type for e in client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=64, stream=True)][-1] == kind
    [logged] = records(log)
    assert logged.error is not None and logged.error.startswith("ConnectionError")  # cut: no final response came
    assert logged.usage is not None and logged.usage["completion_tokens"] > 0
    assert budget.report().spent_usd == pytest.approx(logged.cost_usd) and budget.report().outstanding_reservations == 0


@pytest.mark.parametrize("item_type", ["function_call", "custom_tool_call"])
def test_a_stream_cut_inside_a_tool_call_is_charged_the_call_s_name(item_type: str, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    """A call's name comes whole in its `response.output_item.added`, not in a delta: a stream cut after it (before or
    among the arguments) was charged no output for it, though the server generated and bills it."""
    name = "look_up_the_current_weather_forecast_for_a_city_by_its_name"
    started = {"id": "resp_1", "object": "response", "created_at": 1, "model": MODEL, "status": "in_progress", "output": []}
    item = {"type": item_type, "id": "fc_1", "call_id": "call_1", "name": name, "status": "in_progress", "arguments" if item_type == "function_call" else "input": ""}
    events = [{"type": "response.created", "response": started}, {"type": "response.output_item.added", "output_index": 0, "item": item}]
    body = "".join(f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n" for i, e in enumerate(events)).encode()
    with sse_upstream(lambda headers: body) as url:
        client = OpenAI(api_key="sk-test", base_url=url, budget=budget, log=log, max_retries=0)
        list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=64, stream=True))
    [logged] = records(log)
    assert logged.error is not None and logged.usage is not None
    assert logged.usage["completion_tokens"] == count_tokens(name, MODEL).tokens


def test_a_stream_left_at_its_whole_text_is_closed_at_once_and_logged_as_cut_when_the_server_stalls(
    upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    """The SDK reads on from `response.output_text.done` (where openai's helper may stop) for a bounded time
    only: the client's read timeout (8 s here) used to hold the caller. Without the final response (its
    status and usage) the answer is not whole: charged for what arrived, never cached, logged as cut."""
    upstream.mode = "stall"
    client: Any = double_client(OpenAI, upstream, tmp_path, budget, timeout=8.0)
    stream = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True)
    for event in stream:
        if event.type == "response.output_text.done":
            started = time.monotonic()
            break
    stream.close()
    assert time.monotonic() - started < 5.0
    [logged] = records(log)
    assert logged.error.startswith("ConnectionError") and logged.cost_usd > 0
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(logged.cost_usd)


async def test_a_cut_async_stream_is_charged_and_never_cached(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    upstream.mode = "cut"
    client = double_client(AsyncOpenAI, upstream, tmp_path, budget)
    with contextlib.suppress(Exception):
        [e async for e in await AsyncResponses(client).create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True)]
    [logged] = records(log)
    assert logged.error is not None and logged.cost_usd > 0 and budget.report().outstanding_reservations == 0


def test_server_errors_are_retried_by_the_calls_policy(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    from blackbox_sdk import RetryPolicy

    upstream.errors = 2
    client = double_client(OpenAI, upstream, tmp_path, budget, retry=RetryPolicy(max_retries=2, sleep=lambda _: None))
    answer = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16)
    assert answer.output_text == "Paris is the capital of France" and answer.blackbox.retries == 2
    assert records(log)[0].retries == 2


@pytest.mark.parametrize("view", ["whole", "stream", "streaming response"])
def test_a_raw_response_counts_the_retries_taken_as_openais_does(view: str, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    """openai's raw responses say how many retries their request took (`retries_taken`); the SDK makes the
    retries itself, and its raw responses said 0 after them."""
    from blackbox_sdk import RetryPolicy

    upstream.errors = 2
    client = double_client(OpenAI, upstream, tmp_path, budget, retry=RetryPolicy(max_retries=2, sleep=lambda _: None))
    asked = {"model": MODEL, "input": QUESTION, "max_output_tokens": 16}
    if view == "streaming response":
        with client.responses.with_streaming_response.create(**asked) as response:
            assert response.retries_taken == 2 and response.parse().output_text == "Paris is the capital of France"
        return
    raw = client.responses.with_raw_response.create(**asked, stream=view == "stream")
    raw.http_response.close()  # a raw stream is the caller's to read; this one is left unread
    assert raw.retries_taken == 2 and raw.blackbox.retries == 2


def test_the_budget_settles_the_servers_input_and_output_tokens(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    client = double_client(OpenAI, upstream, tmp_path, budget)
    answer = client.responses.create(model=MODEL, instructions="Be brief.", input=QUESTION, max_output_tokens=16)
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (8, 6)  # words, as the double counts
    assert budget.report().spent_usd == pytest.approx(spent(answer.usage))
    body = upstream.bodies[0]
    assert body["max_output_tokens"] == 16 and "n" not in body and "seed" not in body


def test_the_raw_response_is_budgeted_and_logged(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    client = double_client(OpenAI, upstream, tmp_path, budget)
    raw = client.responses.with_raw_response.create(model=MODEL, input=QUESTION, max_output_tokens=16)
    answer = raw.parse()
    assert answer.output_text == "Paris is the capital of France" and raw.headers["content-type"] == "application/json"
    assert budget.report().spent_usd == pytest.approx(spent(answer.usage))
    assert records(log)[0].candidates == [answer.output_text]


@pytest.mark.parametrize("view", ["parse", "with_raw_response.parse"])
def test_a_streamed_parse_is_refused_before_anything_is_sent(view: str, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    """`parse` returns a whole response, through the raw view as well: asked to stream, it sends nothing (the
    raw view once sent a whole request with chat's helper header, not the stream asked for)."""
    client = double_client(OpenAI, upstream, tmp_path, budget)
    method = client.responses.parse if view == "parse" else client.responses.with_raw_response.parse
    with pytest.raises(ConfigError, match="parse\\(\\) returns a whole response"):
        method(model=MODEL, input=QUESTION, text_format=City, max_output_tokens=16, stream=True)
    assert upstream.bodies == [] and records(log) == [] and budget.report().calls == 0



@pytest.mark.parametrize("stream", [False, True])
def test_a_reranked_call_in_a_conversation_is_refused_before_anything_is_sent(
    stream: bool, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    """Each of `rerank_n` requests adds its input and answer to the conversation it names (the server appends every
    response to it), so a reranked call would leave K turns in it: refused, before anything is sent or reserved."""
    client = double_client(OpenAI, upstream, tmp_path, budget)
    with pytest.raises(ConfigError, match="conversation"):
        client.responses.create(model=MODEL, input=QUESTION, conversation="conv_1", stream=stream, reranker=lambda q, answers: [0.0] * len(answers), rerank_n=2)
    assert upstream.bodies == [] and records(log) == [] and budget.report().calls == 0
    client.responses.create(model=MODEL, input=QUESTION, conversation={"id": "conv_1"}, reranker=lambda q, answers: [0.0] * len(answers), rerank_n=1)
    assert len(upstream.bodies) == 1  # one request, one turn: sent

def test_parse_reranks_answers_that_fit_the_schema_first(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    upstream.answers = ["not json at all, and longer", '{"name": "Paris"}']
    client = double_client(OpenAI, upstream, tmp_path, budget)
    parsed = client.responses.parse(
        model=MODEL, input=QUESTION, text_format=City, max_output_tokens=16,
        reranker=lambda q, answers: [float(len(a)) for a in answers], rerank_n=2,
    )
    info = parsed.blackbox  # the two requests run concurrently: either may get either answer
    [chosen] = info.chosen
    assert parsed.output_parsed == City(name="Paris") and info.candidates[chosen] == '{"name": "Paris"}'
    assert info.scores[chosen] < max(info.scores)  # the reranker scored the other higher; the one that fits wins
    assert upstream.bodies[0]["text"]["format"]["type"] == "json_schema"


def test_the_stream_helper_reranks_answers_that_fit_the_schema_first(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog) -> None:
    upstream.answers = ["not json at all, and longer", '{"name": "Paris"}']
    client = double_client(OpenAI, upstream, tmp_path, budget)
    longest = lambda q, answers: [float(len(a)) for a in answers]  # noqa: E731 - scores the answer that does not fit higher
    with client.responses.stream(model=MODEL, input=QUESTION, text_format=City, max_output_tokens=16, reranker=longest, rerank_n=2) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == City(name="Paris") and records(log)[-1].candidates[records(log)[-1].chosen[0]] == '{"name": "Paris"}'


async def test_the_async_stream_helper_reranks_answers_that_fit_the_schema_first(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    upstream.answers = ["not json at all, and longer", '{"name": "Paris"}']
    client = double_client(AsyncOpenAI, upstream, tmp_path, budget)
    longest = lambda q, answers: [float(len(a)) for a in answers]  # noqa: E731
    async with client.responses.stream(model=MODEL, input=QUESTION, text_format=City, max_output_tokens=16, reranker=longest, rerank_n=2) as stream:
        final = await stream.get_final_response()
    assert final.output_parsed == City(name="Paris")


async def test_a_cache_hit_of_parse_serves_a_stored_answer_that_fits_before_one_that_does_not(
    upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog
) -> None:
    """A bucket holding an answer that does not parse, then one that does (a plain `create` with the same
    format, then a reranked call that topped it up): `parse` and `stream` without a reranker, sync or async,
    are served the one that parses, from the cache, rather than raising pydantic's ValidationError."""
    upstream.answers = ["not json at all", '{"name": "Paris"}']
    client = double_client(OpenAI, upstream, tmp_path, budget)
    asked: dict[str, Any] = {"model": MODEL, "input": QUESTION, "max_output_tokens": 16}
    first = client.responses.create(text={"format": type_to_text_format_param(City)}, **asked)
    topped = client.responses.create(text={"format": type_to_text_format_param(City)}, reranker=lambda q, a: [0.0] * len(a), rerank_n=2, **asked)
    assert first.output_text == "not json at all" and topped.blackbox.candidates == ["not json at all", '{"name": "Paris"}']
    parsed = client.responses.parse(text_format=City, **asked)
    assert parsed.output_parsed == City(name="Paris") and parsed.blackbox.cache_hit
    with client.responses.stream(text_format=City, **asked) as stream:
        assert stream.get_final_response().output_parsed == City(name="Paris")
    aclient = double_client(AsyncOpenAI, upstream, tmp_path, budget)
    assert (await aclient.responses.parse(text_format=City, **asked)).output_parsed == City(name="Paris")
    assert len(upstream.bodies) == 2 and budget.report().outstanding_reservations == 0
    assert [r.cache_hit for r in records(log)][-3:] == [True, True, True]
    await aclient.close()


@pytest.mark.parametrize(
    "state", [{"previous_response_id": "resp_0"}, {"conversation": "conv_0"}, {"prompt": {"id": "pmpt_0"}}],
    ids=["previous_response_id", "conversation", "stored-prompt"],
)
def test_a_continued_response_is_charged_its_history_but_neither_calibrates_nor_takes_the_gate(
    state: dict[str, object], upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream.history = 20_000  # the stored history, billed as input: the SDK can't count it
    client = double_client(OpenAI, upstream, tmp_path, budget)
    key = f"{client._core.endpoint}#responses"
    budget.calibration.open_gate(key, MODEL, "another-process")  # a plain call elsewhere is calibrating the endpoint
    monkeypatch.setattr(_flows, "CALIBRATION_WAIT_S", 0.0)  # a call that waited at the gate would be refused at once
    continued = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, **state)
    assert continued.usage.input_tokens > 20_000 and budget.report().spent_usd == pytest.approx(spent(continued.usage))
    assert budget.calibration.overhead(key, MODEL) is None  # its history taught the endpoint nothing
    assert not budget.calibration.open_gate(key, MODEL, "a-third-process")  # the gate is still the other process's
    budget.calibration.close_gate(key, MODEL, "another-process")
    client.responses.create(model=MODEL, input="And of Italy?", max_output_tokens=16)  # a plain call calibrates
    learnt = budget.calibration.overhead(key, MODEL)
    client.responses.create(model=MODEL, input="And of Spain?", max_output_tokens=16, **state)
    assert learnt is not None and learnt < 100 and budget.calibration.overhead(key, MODEL) == learnt


def _over_reservation(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The budget's warnings that a call cost more than what was held for it."""
    return [r.getMessage() for r in caplog.records if "more than its reservation" in r.getMessage()]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_continuation_reserves_the_context_it_continues_so_a_cap_refuses_it_before_sending(
    stream: bool, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.answers = [" ".join(["word"] * 300)]  # a long answer: the history a continuation is billed
    client = double_client(OpenAI, upstream, tmp_path, budget)

    def create(**params: object) -> Any:
        if not stream:
            return client.responses.create(model=MODEL, max_output_tokens=400, **params)
        with client.responses.stream(model=MODEL, max_output_tokens=400, **params) as events:
            return events.get_final_response()

    first = create(input=QUESTION)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        second = create(input="And of Italy?", previous_response_id=first.id)  # its history was seen: reserved
        third = create(input="And of Spain?", previous_response_id=second.id)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert _over_reservation(caplog) == [] and "has not seen" not in caplog.text
    tight = Budget(total_usd=budget.spent() + spent(third.usage) * 0.9, prices=PRICES, ledger=tmp_path / "ledger.db")
    sent = len(upstream.bodies)
    with pytest.raises(BudgetExceededError):  # another process on the same ledger knows the history too
        double_client(OpenAI, upstream, tmp_path, tight).responses.create(
            model=MODEL, input="And of Portugal?", previous_response_id=second.id, max_output_tokens=400,
        )
    assert len(upstream.bodies) == sent  # refused before sending: the cap holds


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_answer_served_from_the_cache_teaches_the_ledger_the_context_it_leaves(
    stream: bool, upstream: ResponsesUpstream, tmp_path: Path, store_at: Callable[[str], str], caplog: pytest.LogCaptureFixture,
) -> None:
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=store_at("ledger.db"))  # the context kept in SQLite, then in Redis
    upstream.answers = [" ".join(["word"] * 300)]
    filler = OpenAI(api_key="sk-test", base_url=upstream.url, cache=tmp_path / "cache")  # no budget: no ledger saw its answer
    filler.responses.create(model=MODEL, input=QUESTION, max_output_tokens=400)
    client = double_client(OpenAI, upstream, tmp_path, budget)
    if stream:
        with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=400) as events:
            hit = events.get_final_response()
    else:
        hit = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=400)
    assert hit.blackbox.cache_hit
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        client.responses.create(model=MODEL, input="And of Italy?", previous_response_id=hit.id, max_output_tokens=400)
    assert "has not seen" not in caplog.text and _over_reservation(caplog) == []  # its history was reserved


def test_a_conversation_and_a_stored_prompt_are_reserved_once_an_answer_showed_them(
    upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.history = 400  # what the stored prompt's template (and, at first, the conversation) is billed
    client = double_client(OpenAI, upstream, tmp_path, budget)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, conversation="conv_1")
        assert "has not seen (conversation)" in caplog.text and len(_over_reservation(caplog)) == 1  # unknown: charged at settle
        caplog.clear()
        client.responses.create(model=MODEL, input="And of Italy?", max_output_tokens=16, conversation={"id": "conv_1"})
        client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, prompt={"id": "pmpt_1", "version": "2"})
        assert "has not seen (prompt)" in caplog.text
        caplog.clear()
        client.responses.create(model=MODEL, input="And of Spain?", max_output_tokens=16, prompt={"id": "pmpt_1", "version": "2"})
    assert _over_reservation(caplog) == [] and "has not seen" not in caplog.text


def test_a_stored_prompt_without_a_model_is_sent_as_openai_sends_it_and_refused_under_a_budget(
    upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    client = OpenAI(api_key="sk-test", base_url=upstream.url, cache=tmp_path / "cache", log=log)
    prompt = {"id": "pmpt_1", "version": "3", "variables": {"city": "Paris"}}
    first = client.responses.create(prompt=prompt, input=QUESTION)  # the stored prompt names the model
    again = client.responses.create(prompt=prompt, input=QUESTION)
    assert "model" not in upstream.bodies[0] and first.output_text and again.blackbox.cache_hit
    assert records(log)[0].request == {"prompt": prompt, "input": QUESTION}
    with pytest.raises(PriceMissingError, match="names no model"):
        client.responses.create(prompt=prompt, input="And of Spain?", budget=budget)
    assert len(upstream.bodies) == 1 and budget.spent() == 0
    with pytest.raises(InvalidRequestError, match="model must be a non-empty string"):
        client.responses.create(model=None, prompt=prompt, input=QUESTION)  # type: ignore[arg-type]  # would go out as null


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_with_a_json_text_format_reranking_prefers_the_answers_that_are_json(kind: str) -> None:
    """`responses.create(text={"format": ...})` reranked answers cut short (not JSON) with the whole ones, as chat's did."""
    cut, whole = '{"colour": "a deep crimson red, like', '{"colour": "red"}'
    upstream = ResponsesUpstream([cut, whole, cut, whole])
    text_format: dict[str, object] = {"type": kind} if kind == "json_object" else {"type": kind, "name": "colour", "schema": {"type": "object"}}
    try:
        client = OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0,
                        reranker=lambda question, answers: [float(len(a)) for a in answers], rerank_n=4)
        response = client.responses.create(model=MODEL, input=QUESTION, text={"format": text_format})
        raw = client.responses.with_raw_response.create(model=MODEL, input=QUESTION, text={"format": text_format})
    finally:
        upstream.close()
    assert sorted(response.blackbox.candidates or []) == [cut, cut, whole, whole]
    assert response.output_text == whole and raw.parse().output_text == whole


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("conversation", ["conv_1", {"id": "conv_1"}])
def test_a_turn_in_a_conversation_always_reaches_the_server(
    conversation: object, stream: bool, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    """The server appends every turn to the conversation it names, so the same input later in it is asked in a longer
    context: a turn is never served from the cache (it would answer from the old context and leave the turn out of the
    conversation), nor stored; it is still budgeted and logged each time."""
    client = double_client(OpenAI, upstream, tmp_path, budget)
    for _ in range(2):
        answer = client.responses.create(model=MODEL, input="yes", conversation=conversation, stream=stream)
        if stream:
            list(answer)
    assert len(upstream.bodies) == 2 and [r.cache_hit for r in records(log)] == [False, False]
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(sum(r.cost_usd for r in records(log)))
    client.responses.create(model=MODEL, input="yes")  # without a conversation: cached as any call
    client.responses.create(model=MODEL, input="yes")
    assert len(upstream.bodies) == 3


def test_a_turn_named_in_extra_body_is_never_cached_either(upstream: ResponsesUpstream, tmp_path: Path, log: CallLog) -> None:
    """openai sends `extra_body`'s fields over the arguments: a conversation named there is one the server appends to too
    (with a budget such a hidden field is refused before sending; without one the cache must still see it)."""
    client = OpenAI(api_key="sk-test", base_url=upstream.url, cache=tmp_path / "cache", log=tmp_path / "calls.db")
    for _ in range(2):
        client.responses.create(model=MODEL, input="yes", extra_body={"conversation": "conv_1"})
    assert len(upstream.bodies) == 2 and [r.cache_hit for r in records(log)] == [False, False]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("where", ["argument", "extra_body"])
def test_a_stored_prompt_without_a_version_always_reaches_the_server(
    where: str, stream: bool, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    """A stored prompt named without a `version` is answered from its latest version, which its owner may change at any
    time: such a call is never served from the cache nor stored (a cached answer could come from an older template);
    one that names its version is cached as any call (a budget refuses a prompt hidden in `extra_body`: none there)."""
    client = double_client(OpenAI, upstream, tmp_path, budget) if where == "argument" else OpenAI(
        api_key="sk-test", base_url=upstream.url, cache=tmp_path / "cache", log=log)

    def ask_with(prompt: dict[str, object]) -> None:
        given: dict[str, object] = {"prompt": prompt} if where == "argument" else {"extra_body": {"prompt": prompt}}
        answer = client.responses.create(model=MODEL, input="yes", stream=stream, **given)  # type: ignore[call-overload]
        if stream:
            list(answer)

    for prompt in ({"id": "pmpt_1"}, {"id": "pmpt_1"}, {"id": "pmpt_1", "version": None}):
        ask_with(prompt)
    assert len(upstream.bodies) == 3 and [r.cache_hit for r in records(log)] == [False] * 3
    for _ in range(2):
        ask_with({"id": "pmpt_1", "version": "2"})
    assert len(upstream.bodies) == 4 and [r.cache_hit for r in records(log)][3:] == [False, True]
    assert budget.report().outstanding_reservations == 0


SCREENSHOT = "data:image/png;base64," + "iVBORw0KGgo" * 20_000  # an image of 220,000 base64 characters


@pytest.mark.parametrize("items", [
    [{"role": "user", "content": [{"type": "input_image", "image_url": SCREENSHOT, "detail": "high"}]}],
    [{"type": "function_call", "call_id": "call_1", "name": "screenshot", "arguments": "{}"},
     {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_image", "image_url": SCREENSHOT, "detail": "high"}]}],
    [{"type": "computer_call", "id": "cu_1", "call_id": "call_1", "action": {"type": "screenshot"}, "pending_safety_checks": [], "status": "completed"},
     {"type": "computer_call_output", "call_id": "call_1", "output": {"type": "computer_screenshot", "image_url": SCREENSHOT}}],
], ids=["message", "function_call_output", "computer_call_output"])
def test_an_image_a_tool_returns_is_reserved_as_an_image_not_as_its_base64_text(
    items: list[dict[str, object]], upstream: ResponsesUpstream, tmp_path: Path, budget: Budget,
) -> None:
    """A tool's output may be an image (a screenshot): it was counted as the JSON of its data URL, 165,000 tokens
    here, and refused under a budget that holds the call many times over; it is now counted as an image in a message is."""
    client = double_client(OpenAI, upstream, tmp_path, budget)
    answer = client.responses.create(model=MODEL, input=items, max_output_tokens=16)
    assert len(upstream.bodies) == 1 and budget.report().spent_usd == pytest.approx(spent(answer.usage))


def test_a_pdf_given_inline_is_reserved_at_its_pages_and_text_not_its_base64(upstream: ResponsesUpstream, tmp_path: Path, budget: Budget) -> None:
    """A ~1 MB PDF of 3 pages was counted as its base64 text, ~1 M tokens, and refused under a budget that holds the call
    many times over; it is reserved at 3 page images and what its strings can show now, and sent."""
    client = double_client(OpenAI, upstream, tmp_path, budget)
    document = {"type": "input_file", "filename": "report.pdf", "file_data": data_url(pdf(3, image_bytes=1_000_000))}
    answer = client.responses.create(model=MODEL, input=[{"role": "user", "content": [document, {"type": "input_text", "text": "Summarise"}]}],
                                     max_output_tokens=16)
    assert len(upstream.bodies) == 1 and budget.report().spent_usd == pytest.approx(spent(answer.usage))


@pytest.mark.parametrize("how", ["closed", "cut"])
def test_a_background_stream_that_ends_early_is_charged_the_answer_the_server_goes_on_to_generate(
    how: str, upstream: ResponsesUpstream, tmp_path: Path, budget: Budget, log: CallLog,
) -> None:
    """A `background=True` response goes on generating (and is billed) when its stream is closed or cut, as a whole
    background call that comes back queued does: it was charged only the text that had arrived."""
    upstream.mode = "cut" if how == "cut" else "ok"
    client = double_client(OpenAI, upstream, tmp_path, budget)
    stream = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True, background=True)
    for event in stream:
        if event.type == "response.output_text.delta" and how == "closed":
            break
    stream.close()
    [logged] = records(log)
    assert logged.error is not None and logged.usage["completion_tokens"] == 16  # the output cap: what the server may bill
    report = budget.report()
    assert report.outstanding_reservations == 0 and report.spent_usd == pytest.approx(logged.cost_usd)
    upstream.mode = "ok"
    list(client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, stream=True, background=True))
    assert len(upstream.bodies) == 2  # not served from the cache
