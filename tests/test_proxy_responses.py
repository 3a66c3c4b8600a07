"""`POST /v1/responses` through the proxy: the Responses API on the real `hf:` backend (SmolLM2 in the
proxy's process), called by openai's own client with only `base_url` changed, and by raw HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from openai.types.responses import Response
from prometheus_client.parser import text_string_to_metric_families

from blackbox_sdk import Budget, CallLog
from blackbox_sdk.serve import ProxyConfig
from responses_upstream import ResponsesUpstream
from servers import Proxy

pytestmark = pytest.mark.slow
TIMES = re.compile(r'"(created_at|completed_at)":([^,}]+)')  # each time field and its raw JSON value

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # $1000 per million tokens: a call costs cents


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-responses")


@pytest.fixture(scope="module")
def proxy(gguf_path: Path, folder: Path) -> Iterator[Proxy]:
    """The proxy with a cache, a call log and a priced budget, on the local model."""
    budget = {"total_usd": 100.0, "prices": PRICES, "ledger": str(folder / "ledger.db")}
    config = ProxyConfig(upstream=f"hf:{gguf_path}", cache=str(folder / "cache"), log=str(folder / "calls.db"), budget=budget)
    with Proxy(config) as running:
        yield running


def _sse(body: str) -> list[tuple[str | None, dict]]:
    """The (event name, JSON data) of each server-sent event in a body."""
    found = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        found.append((lines.get("event"), json.loads(lines["data"])))
    return found


def test_a_response_is_created_charged_logged_and_then_served_from_the_cache(proxy: Proxy, folder: Path) -> None:
    client = proxy.client()
    asked = {"model": MODEL, "input": "Name a colour.", "max_output_tokens": 8, "temperature": 0}
    first = client.responses.with_raw_response.create(**asked)
    response = first.parse()
    assert isinstance(response, Response) and response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    assert first.headers["x-blackbox-cache-hit"] == "false" and float(first.headers["x-blackbox-cost-usd"]) > 0
    again = client.responses.with_raw_response.create(**asked)
    assert again.headers["x-blackbox-cache-hit"] == "true" and float(again.headers["x-blackbox-cost-usd"]) == 0
    assert again.parse().output_text == response.output_text
    log = CallLog(folder / "calls.db")
    try:
        record = log.get(first.headers["x-blackbox-call-id"])
    finally:
        log.close()
    assert record.route == "responses" and record.cost_usd == pytest.approx(float(first.headers["x-blackbox-cost-usd"]))
    assert Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().spent_usd >= record.cost_usd > 0


def test_a_stream_is_sent_as_named_events_without_done(proxy: Proxy) -> None:
    body = {"model": MODEL, "input": "Count to three.", "max_output_tokens": 8, "temperature": 0, "stream": True}
    answer = httpx2.post(f"{proxy.base_url}/responses", json=body, timeout=120)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in answer.text
    events = _sse(answer.text)
    assert all(name == data["type"] for name, data in events)  # every event is named by its type, as OpenAI sends it
    assert events[0][0] == "response.created" and events[-1][0] in {"response.completed", "response.incomplete"}
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert deltas and deltas == events[-1][1]["response"]["output"][0]["content"][0]["text"]


def test_openai_stream_helper_reads_the_proxys_events(proxy: Proxy) -> None:
    client = proxy.client()
    with client.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas and final.output_text == deltas


async def test_async_client_streams_through_the_proxy(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-unused")
    stream = await client.responses.create(model=MODEL, input="Name a fruit.", max_output_tokens=8, temperature=0, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] in {"response.completed", "response.incomplete"} and "response.output_text.delta" in kinds


def test_bad_requests_are_refused_before_any_work(proxy: Proxy, folder: Path) -> None:
    spent = Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().spent_usd
    missing = proxy.post("/responses", json.dumps({"input": "hi"}).encode())
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    option = proxy.post("/responses", json.dumps({"model": MODEL, "input": "hi", "cache": False}).encode())
    assert option.status_code == 400 and option.json()["error"]["code"] == "unknown_parameter"
    bad = proxy.post("/responses", json.dumps({"model": MODEL, "input": "hi", "max_output_tokens": 0}).encode())
    assert bad.status_code == 400
    stored = httpx2.get(f"{proxy.base_url}/responses/resp_0123", timeout=30)  # the upstream's stored responses are not proxied
    assert stored.status_code == 404 and stored.json()["error"]["type"] == "invalid_request_error"
    assert Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().spent_usd == spent


@pytest.mark.parametrize("body", [{"model": MODEL}, {"model": MODEL, "input": None}], ids=["no-input", "input-null"])
def test_no_input_under_a_budget_is_the_backends_400_not_a_500(proxy: Proxy, folder: Path, body: dict[str, object]) -> None:
    # under a budget the prompt is counted first: an empty conversation is nothing to count, not a crash of the tokenizer
    answer = proxy.post("/responses", json.dumps(body).encode())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error" and "input" in answer.json()["error"]["message"]
    assert Budget(prices=PRICES, ledger=str(folder / "ledger.db")).report().outstanding_reservations == 0


def test_responses_tokens_are_counted_in_the_metrics(proxy: Proxy) -> None:
    proxy.client().responses.create(model=MODEL, input="Name a tree.", max_output_tokens=6, temperature=0)
    text = httpx2.get(f"{proxy.url}/metrics", timeout=30).text
    tokens = {
        sample.labels["direction"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "blackbox_proxy_tokens_total" and sample.labels.get("model") == MODEL
    }
    requests = [
        sample for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "blackbox_proxy_requests_total" and sample.labels.get("route") == "responses"
    ]
    assert tokens.get("in", 0) > 0 and tokens.get("out", 0) > 0 and requests


def test_times_go_out_in_whole_seconds_as_openai_sends_them(proxy: Proxy) -> None:
    asked = {"model": MODEL, "input": "Name a bird.", "max_output_tokens": 6, "temperature": 0}
    whole = proxy.post("/responses", json.dumps(asked).encode())
    streamed = httpx2.post(f"{proxy.base_url}/responses", json={**asked, "stream": True}, timeout=120)
    for answer in (whole, streamed):
        found = TIMES.findall(answer.text)
        assert ("created_at" in dict(found)) and all(value == "null" or value.isdigit() for _, value in found), found
    assert isinstance(whole.json()["created_at"], int)


def test_a_failure_mid_stream_is_sent_as_openais_error_event(tmp_path: Path) -> None:
    upstream = ResponsesUpstream(["one two three four five"])
    upstream.mode = "error"  # created, two parts and two deltas, then an error frame the SDK's openai client raises
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, log=str(tmp_path / "calls.db"))) as proxy:
            body = {"model": "gpt-4o-mini", "input": "Count.", "stream": True}
            events = _sse(httpx2.post(f"{proxy.base_url}/responses", json=body, timeout=60).text)
            (name, error), before = events[-1], events[:-1]
            assert [n for n, _ in before][-1] == "response.output_text.delta" and all(n == d["type"] for n, d in before)
            assert name == "error" and set(error) == {"type", "code", "message", "param", "sequence_number"}
            assert error["type"] == "error" and error["message"] and error["sequence_number"] == before[-1][1]["sequence_number"] + 1
            stream = proxy.client().responses.create(**body)  # openai's client yields it, as it does OpenAI's error event
            assert [event.type for event in stream][-1] == "error"
    finally:
        upstream.close()


def _statuses(proxy: Proxy, route: str) -> dict[str, float]:
    """requests_total of `route` by status, scraped from /metrics (a proxy without keys: loopback reads it)."""
    text = httpx2.get(f"{proxy.url}/metrics", timeout=60).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "blackbox_proxy_requests_total" and sample.labels["route"] == route:
                found[sample.labels["status"]] = found.get(sample.labels["status"], 0) + sample.value
    return found


def test_a_stream_cut_before_response_completed_ends_with_an_incomplete_error_event(tmp_path: Path) -> None:
    from openai.types.responses import ResponseErrorEvent

    upstream = ResponsesUpstream(["one two three four five"])
    upstream.mode = "cut"  # created, two parts and two deltas, then the connection closes: no response.completed
    try:
        with Proxy(ProxyConfig(upstream=upstream.url, log=str(tmp_path / "calls.db"), max_retries=0)) as proxy:
            body = {"model": "gpt-4o-mini", "input": "Count.", "stream": True}
            events = _sse(httpx2.post(f"{proxy.base_url}/responses", json=body, timeout=60).text)
            (name, error), before = events[-1], events[:-1]
            assert [n for n, _ in before][-1] == "response.output_text.delta" and name == "error", events
            assert error["code"] == "upstream_stream_incomplete" and "response.completed" in error["message"]
            assert error["sequence_number"] == before[-1][1]["sequence_number"] + 1
            assert ResponseErrorEvent.model_validate(error).type == "error" and set(error) == {"type", "code", "message", "param", "sequence_number"}
            with proxy.client(max_retries=0).responses.stream(model="gpt-4o-mini", input="Count.") as stream:
                seen = list(stream)  # openai's stream helper: the error event, not a stream that just stops
            assert seen[-1].type == "error" and seen[-1].code == "upstream_stream_incomplete"  # type: ignore[union-attr]
            assert _statuses(proxy, "responses") == {"502": 2.0}  # an upstream failure, not a 200
    finally:
        upstream.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_upstream_with_no_responses_api_is_a_404_that_says_so(llama_server: str, stream: bool) -> None:
    """llama.cpp's server has no /responses route: its bare 404 ("Error code: 404") is said as what it is."""
    with Proxy(ProxyConfig(upstream=llama_server, max_retries=0)) as running:
        with pytest.raises(openai.NotFoundError) as caught:
            running.client().responses.create(model=MODEL, input="hi", stream=stream)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    assert error["message"].startswith("The upstream has no Responses API") and caught.value.status_code == 404
