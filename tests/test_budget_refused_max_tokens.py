"""A reasoning model under a name of its own (an Azure OpenAI deployment, a gateway alias) refuses the
`max_tokens` a budget or token limit has the SDK send: the SDK learns, for that endpoint and model, to
send `max_completion_tokens`, and sends the refused request again at once, once, at the same cap and
on the same hold; a caller's own `max_tokens` gets the server's 400, and without a budget or token
limit nothing changes on the wire. No real server refuses `max_tokens`: a MockTransport double does."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, OpenAI, RateLimits

REASONER = "prod-reasoner"
PRICES = {REASONER: {"input": 1000.0, "output": 1000.0}}  # one token costs $0.001
QUESTION = [{"role": "user", "content": "Which colour comes after red in a rainbow?"}]
REFUSAL = {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
}}
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


class Reasoner:
    """A chat endpoint that refuses `max_tokens` for REASONER as OpenAI's reasoning models do, keeps every
    body it was sent, and answers the rest (streamed when asked)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if body["model"] == REASONER and "max_tokens" in body:
            return httpx2.Response(400, json=REFUSAL)
        head = {"id": "c", "created": 1, "model": body["model"]}
        if body.get("stream"):
            chunks = [{**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Orange"}, "finish_reason": "stop"}]}]
            chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
            events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=events.encode(), headers={"content-type": "text/event-stream"})
        choice = {"index": 0, "message": {"role": "assistant", "content": "Orange"}, "finish_reason": "stop"}
        return httpx2.Response(200, json={**head, "object": "chat.completion", "choices": [choice], "usage": USAGE})

    def caps(self) -> list[dict[str, int]]:
        """The output caps each request carried, in order."""
        return [{k: v for k, v in body.items() if k in ("max_tokens", "max_completion_tokens")} for body in self.bodies]


def _client(upstream: Reasoner, host: str, asynchronous: bool, **options: Any) -> Any:
    """The SDK's client (sync or async) sending to the double at `host`."""
    base_url = f"http://{host}/v1"
    if asynchronous:
        return AsyncOpenAI(base_url=base_url, api_key="sk-test", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)), max_retries=0, **options)
    return OpenAI(base_url=base_url, api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(upstream)), max_retries=0, **options)


def _ask(client: Any, asynchronous: bool, stream: bool, **caps: int) -> dict[str, Any] | None:
    """One chat call to REASONER, read to its end: its usage as the SDK saw it."""

    async def read_async() -> Any:
        answer = await client.chat.completions.create(model=REASONER, messages=QUESTION, stream=stream, **caps)
        if stream:
            [chunk async for chunk in answer]
        return answer

    if asynchronous:
        answer = asyncio.run(read_async())
    else:
        answer = client.chat.completions.create(model=REASONER, messages=QUESTION, stream=stream, **caps)
        if stream:
            list(answer)
    return answer.blackbox.usage  # type: ignore[no-any-return]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("caps", [{}, {"max_completion_tokens": 64}])
def test_a_budgeted_call_learns_the_endpoint_takes_max_completion_tokens(asynchronous: bool, stream: bool, caps: dict[str, int], tmp_path: Path) -> None:
    upstream, log = Reasoner(), CallLog(tmp_path / "calls.db")
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"), default_max_output_tokens=64)
    host = f"deploy-{asynchronous}-{stream}-{len(caps)}.test"
    client = _client(upstream, host, asynchronous, budget=budget, log=log)
    for _ in range(2):
        assert _ask(client, asynchronous, stream, **caps) == USAGE
    assert upstream.caps() == [{"max_tokens": 64}, {"max_completion_tokens": 64}, {"max_completion_tokens": 64}]  # one refused, then as it takes
    assert budget.report().spent_usd == pytest.approx(2 * 11 / 1000) and budget.report().reserved_usd == 0.0
    log.flush()
    records = list(log.calls())
    assert len(records) == 2 and all(record.error is None and record.retries == 0 for record in records)
    assert sum(record.cost_usd for record in records) == pytest.approx(budget.report().spent_usd)
    log.close()
    again = _client(upstream, host, asynchronous, budget=budget)  # another client of the same endpoint, in this process
    _ask(again, asynchronous, stream, **caps)
    assert upstream.caps()[-1] == {"max_completion_tokens": 64}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_tpm_limit_learns_it_too_and_a_raw_view_is_sent_again(asynchronous: bool) -> None:
    upstream = Reasoner()
    client = _client(upstream, f"tpm-{asynchronous}.test", asynchronous, rate_limit=RateLimits(tpm=100_000, default_max_output_tokens=32))

    async def raw_async() -> Any:
        return await client.chat.completions.with_raw_response.create(model=REASONER, messages=QUESTION)

    raw = asyncio.run(raw_async()) if asynchronous else client.chat.completions.with_raw_response.create(model=REASONER, messages=QUESTION)
    assert raw.status_code == 200 and raw.parse().choices[0].message.content == "Orange"
    assert upstream.caps() == [{"max_tokens": 32}, {"max_completion_tokens": 32}]


def test_a_streaming_response_view_is_sent_again(tmp_path: Path) -> None:
    upstream = Reasoner()
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"), default_max_output_tokens=16)
    client = _client(upstream, "streaming-view.test", False, budget=budget)
    with client.chat.completions.with_streaming_response.create(model=REASONER, messages=QUESTION) as response:
        assert json.loads(response.read())["usage"] == USAGE
    assert upstream.caps() == [{"max_tokens": 16}, {"max_completion_tokens": 16}]
    [spend] = budget.settled_since(0)  # a view the caller reads whole is charged its body's usage: one request's, not two
    assert spend.completion_tokens == USAGE["completion_tokens"] and budget.report().reserved_usd == 0.0


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_a_caller_s_own_max_tokens_gets_the_server_s_400(asynchronous: bool, stream: bool, tmp_path: Path) -> None:
    upstream, log = Reasoner(), CallLog(tmp_path / "calls.db")
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    client = _client(upstream, f"own-cap-{asynchronous}-{stream}.test", asynchronous, budget=budget, log=log)
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(client, asynchronous, stream, max_tokens=64)
    assert refused.value.status_code == 400 and refused.value.body == REFUSAL["error"]
    assert upstream.caps() == [{"max_tokens": 64}]  # sent once, never renamed
    assert budget.report().spent_usd == 0.0 and budget.report().reserved_usd == 0.0
    log.flush()
    [record] = list(log.calls())
    assert record.error is not None and "BadRequestError" in record.error
    log.close()


@pytest.mark.parametrize("caps", [{}, {"max_completion_tokens": 64}, {"max_tokens": 64}])
@pytest.mark.parametrize("options", [{}, {"rate_limit": RateLimits(rpm=100)}])
def test_without_a_budget_or_token_limit_nothing_changes_on_the_wire(caps: dict[str, int], options: dict[str, Any]) -> None:
    ours, theirs = Reasoner(), Reasoner()
    plain = openai.OpenAI(base_url="http://plain.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(theirs)), max_retries=0)
    client = _client(ours, "plain.test", False, **options)
    outcomes = []
    for sender in (client, plain):
        try:
            outcomes.append(sender.chat.completions.create(model=REASONER, messages=QUESTION, **caps).choices[0].message.content)
        except openai.BadRequestError as error:
            outcomes.append(error.body)
    assert outcomes[0] == outcomes[1] and ours.bodies == theirs.bodies and len(ours.bodies) == 1


def test_another_400_is_not_sent_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bodies: list[dict[str, Any]] = []

    def refuse(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return httpx2.Response(400, json={"error": {"message": "messages is too long", "type": "invalid_request_error", "param": "messages", "code": None}})

    budget = Budget(total_usd=100.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"))
    client = OpenAI(base_url="http://other-400.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(refuse)), max_retries=0, budget=budget)
    with caplog.at_level(logging.INFO, logger="blackbox_sdk"), pytest.raises(openai.BadRequestError, match="too long"):
        client.chat.completions.create(model=REASONER, messages=QUESTION)
    assert len(bodies) == 1 and "max_tokens" in bodies[0] and "refused max_tokens" not in caplog.text


def test_what_is_learnt_is_kept_under_the_endpoint_without_its_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    upstream = Reasoner()
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=str(tmp_path / "ledger.db"), default_max_output_tokens=8)
    with caplog.at_level(logging.INFO, logger="blackbox_sdk"):
        for password in ("first-secret", "second-secret"):
            _client(upstream, f"user:{password}@gateway.test", False, budget=budget).chat.completions.create(model=REASONER, messages=QUESTION)
    assert upstream.caps() == [{"max_tokens": 8}, {"max_completion_tokens": 8}, {"max_completion_tokens": 8}]
    assert "http://gateway.test/v1/ refused max_tokens for prod-reasoner" in caplog.text and "secret" not in caplog.text
