"""The output cap a budget or a tokens-per-minute limit relies on holds on servers that honour only
`max_tokens` (llama.cpp): a caller's lone `max_completion_tokens` goes out as `max_tokens` then,
except to OpenAI's reasoning models, which refuse it; without a budget or token limit the request
goes out as the caller wrote it; an answer past the cap sent is settled at its real usage and
warned about once per endpoint and model."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx2
import openai
import pytest

from blackbox_sdk import Budget, BudgetExceededError, OpenAI, RateLimits

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1.0, "output": 1.0}, "o3-mini": {"input": 1.0, "output": 1.0}}
QUESTION = [{"role": "user", "content": "List the colours of the rainbow, one per line."}]


def test_a_budget_holds_a_lone_max_completion_tokens_on_llama_cpp(llama_server: str) -> None:
    budget = Budget(total_usd=10.0, prices=PRICES)
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=8, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens <= 8
    assert budget.spent() == pytest.approx((answer.usage.prompt_tokens + answer.usage.completion_tokens) / 1e6)


def test_a_budgeted_stream_holds_a_lone_max_completion_tokens_on_llama_cpp(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", budget=Budget(total_usd=10.0, prices=PRICES), max_retries=0)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert stream.blackbox.usage is not None and stream.blackbox.usage["completion_tokens"] <= 8  # type: ignore[attr-defined]
    assert sum(1 for chunk in chunks for choice in chunk.choices if choice.delta.content) <= 8


def test_a_tpm_limit_holds_a_lone_max_completion_tokens_on_llama_cpp(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", rate_limit=RateLimits(tpm=5_000, per="model"), max_retries=0)
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=8, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens <= 8


class Upstream:
    """A MockTransport double that keeps every body it was sent and answers with `completion_tokens`
    used in all (a server past the cap reports more than it was sent), streamed when asked."""

    def __init__(self, completion_tokens: int = 2, choices: int = 1) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.completion_tokens, self.choices = completion_tokens, choices

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        usage = {"prompt_tokens": 9, "completion_tokens": self.completion_tokens, "total_tokens": 9 + self.completion_tokens}
        head = {"id": "c", "created": 1, "model": body["model"]}
        if body.get("stream"):
            chunks = [{**head, "object": "chat.completion.chunk", "choices": [{"index": i, "delta": {"role": "assistant", "content": "Red"},
                                                                               "finish_reason": "length"}]} for i in range(self.choices)]
            chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            events = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=events.encode(), headers={"content-type": "text/event-stream"})
        if "prompt" in body:  # the legacy completions route
            choices = [{"index": i, "text": "Red", "finish_reason": "length", "logprobs": None} for i in range(self.choices)]
            return httpx2.Response(200, json={**head, "object": "text_completion", "choices": choices, "usage": usage})
        choices = [{"index": i, "message": {"role": "assistant", "content": "Red"}, "finish_reason": "length"} for i in range(self.choices)]
        return httpx2.Response(200, json={**head, "object": "chat.completion", "choices": choices, "usage": usage})

    def client(self, base_url: str = "http://upstream.test/v1", **options: Any) -> OpenAI:
        """The SDK's client sending to this double."""
        return OpenAI(base_url=base_url, api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(self)), max_retries=0, **options)


@pytest.mark.parametrize("caps", [{"max_completion_tokens": 8}, {"max_tokens": 8}, {"max_tokens": 8, "max_completion_tokens": 16}, {}])
def test_without_a_budget_or_token_limit_the_request_goes_out_as_written(caps: dict[str, int]) -> None:
    ours, theirs = Upstream(), Upstream()
    ours.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **caps)
    plain = openai.OpenAI(base_url="http://upstream.test/v1", api_key="sk-test", http_client=httpx2.Client(transport=httpx2.MockTransport(theirs)))
    plain.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **caps)  # type: ignore[call-overload]
    assert ours.bodies == theirs.bodies
    assert list(ours.bodies[0]) == list(theirs.bodies[0])  # the same fields in the same order
    limited = Upstream()  # a limit on requests only relies on no cap either
    limited.client(rate_limit=RateLimits(rpm=100)).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **caps)
    assert limited.bodies == theirs.bodies


@pytest.mark.parametrize("options", [{"budget": Budget(total_usd=1.0, prices=PRICES)}, {"rate_limit": RateLimits(tpm=100_000)}])
@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_max_completion_tokens_goes_as_max_tokens_when_the_sdk_relies_on_it(options: dict[str, Any], stream: bool) -> None:
    upstream = Upstream()
    answer = upstream.client(**options).chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=8, stream=stream)
    if stream:
        list(answer)
    assert upstream.bodies[0]["max_tokens"] == 8 and "max_completion_tokens" not in upstream.bodies[0]


def test_a_reasoning_model_keeps_max_completion_tokens_under_a_budget() -> None:
    upstream = Upstream()
    upstream.client(budget=Budget(total_usd=1.0, prices=PRICES)).chat.completions.create(model="o3-mini", messages=QUESTION, max_completion_tokens=8)
    assert upstream.bodies[0]["max_completion_tokens"] == 8 and "max_tokens" not in upstream.bodies[0]


def test_both_caps_given_go_out_as_today_under_a_budget() -> None:
    upstream = Upstream()
    client = upstream.client(budget=Budget(total_usd=1.0, prices=PRICES))
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, max_completion_tokens=16)
    assert upstream.bodies[0]["max_tokens"] == 8 and upstream.bodies[0]["max_completion_tokens"] == 16


def test_a_server_past_the_cap_is_settled_at_its_usage_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream(completion_tokens=500)
    budget = Budget(total_usd=1.0, prices=PRICES)
    client = upstream.client("http://past-the-cap.test/v1", budget=budget)
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        for _ in range(2):
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert budget.spent() == pytest.approx(2 * 509 / 1e6)
    warned = [r.getMessage() for r in caplog.records if "ignored the output cap" in r.getMessage()]
    assert len(warned) == 1 and "http://past-the-cap.test/v1" in warned[0] and MODEL in warned[0] and "a cap of 8" in warned[0]


@pytest.mark.parametrize(("used", "warns"), [(16, False), (17, True)])
def test_a_stream_of_several_choices_is_held_to_the_cap_per_choice(used: int, warns: bool, caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream(completion_tokens=used, choices=2)  # two choices of 8 each may use 16 in all
    client = upstream.client(f"http://stream-{used}.test/v1", budget=Budget(total_usd=1.0, prices=PRICES))
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, n=2, stream=True))
    assert any("ignored the output cap" in r.getMessage() for r in caplog.records) is warns


@pytest.mark.parametrize(("used", "warns"), [(24, False), (25, True)])
def test_a_completion_of_best_of_is_held_to_the_cap_per_generation(used: int, warns: bool, caplog: pytest.LogCaptureFixture) -> None:
    upstream = Upstream(completion_tokens=used)  # best_of=3 generates three answers of 8 each, bills 24, returns one
    client = upstream.client(f"http://best-of-{used}.test/v1", budget=Budget(total_usd=1.0, prices=PRICES))
    with caplog.at_level(logging.WARNING, logger="blackbox_sdk"):
        client.completions.create(model=MODEL, prompt="Red, orange,", max_tokens=8, best_of=3)
    assert upstream.bodies[0]["max_tokens"] == 8 and upstream.bodies[0]["best_of"] == 3
    assert any("ignored the output cap" in r.getMessage() for r in caplog.records) is warns


def test_an_answer_cut_at_a_budgets_default_cap_is_not_served_to_a_call_without_that_cap(llama_server: str, tmp_path: Any) -> None:
    """The budget sends its `default_max_output_tokens` for a call that gave no cap; an answer cut there is
    not the request's answer, so a client without a budget (no cap: the whole answer) sends it again,
    while the budgeted client's own repeat is served from the cache."""
    cache = str(tmp_path / "cache")
    budget = Budget(total_usd=10.0, prices=PRICES, default_max_output_tokens=4)
    capped = OpenAI(base_url=llama_server, api_key="sk-test", budget=budget, cache=cache, max_retries=0)
    cut = capped.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None and cut.usage.completion_tokens <= 4
    assert capped.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0).blackbox.cache_hit  # type: ignore[attr-defined]
    whole = OpenAI(base_url=llama_server, api_key="sk-test", cache=cache, max_retries=0).chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert not whole.blackbox.cache_hit  # type: ignore[attr-defined]
    assert whole.choices[0].finish_reason == "stop" and len(whole.choices[0].message.content or "") > len(cut.choices[0].message.content or "")


def test_a_response_cut_at_a_budgets_default_cap_is_not_served_to_a_call_without_that_cap(tmp_path: Any) -> None:
    """The Responses API's form: status incomplete for max_output_tokens (a double: llama.cpp has no /v1/responses)."""
    sent: list[dict[str, Any]] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        sent.append(body)
        cut = body.get("max_output_tokens") is not None
        message = {"type": "message", "id": "m", "role": "assistant", "status": "incomplete" if cut else "completed",
                   "content": [{"type": "output_text", "text": "Red" if cut else "Red, orange", "annotations": []}]}
        return httpx2.Response(200, json={
            "id": f"resp_{len(sent)}", "object": "response", "created_at": 1, "model": MODEL, "output": [message],
            "status": "incomplete" if cut else "completed", "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "usage": {"input_tokens": 9, "output_tokens": 1 if cut else 3, "total_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0}},
        })

    def client(**options: Any) -> OpenAI:
        http = httpx2.Client(transport=httpx2.MockTransport(respond))
        return OpenAI(base_url="http://api.test/v1", api_key="sk-test", http_client=http, cache=str(tmp_path / "cache"), max_retries=0, **options)

    capped = client(budget=Budget(total_usd=10.0, prices=PRICES, default_max_output_tokens=1))
    assert capped.responses.create(model=MODEL, input="Colours?").status == "incomplete"
    assert capped.responses.create(model=MODEL, input="Colours?").blackbox.cache_hit  # type: ignore[attr-defined]
    assert client().responses.create(model=MODEL, input="Colours?").output_text == "Red, orange"
    assert [body.get("max_output_tokens") for body in sent] == [1, None]


def test_a_zero_output_cap_is_reserved_as_no_cap_for_llama_cpp_reads_it_so(llama_server: str, tmp_path: Any) -> None:
    """A scoring call (`max_tokens=0`, `echo`): llama.cpp reads a cap of 0 as none and generates on to the end of its
    context. A budget reserves it as uncapped (its default cap), so one that can't pay for that refuses it unsent, even
    under `policy="shrink"` (no smaller cap can be sent in place of 0); one that can is charged what llama.cpp used."""
    prices = {MODEL: {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 a token
    options = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 0, "echo": True, "temperature": 0}
    for policy in ("raise", "shrink"):
        tight = Budget(total_usd=1000.0, prices=prices, policy=policy, ledger=tmp_path / f"{policy}.db")
        with pytest.raises(BudgetExceededError):
            OpenAI(base_url=llama_server, api_key="sk-test", budget=tight, max_retries=0).completions.create(**options)
        assert tight.spent() == 0.0
    roomy = Budget(total_usd=10_000.0, prices=prices, ledger=tmp_path / "roomy.db")
    answer = OpenAI(base_url=llama_server, api_key="sk-test", budget=roomy, max_retries=0).completions.create(**options)
    assert answer.usage.completion_tokens > 0 and roomy.spent() == answer.usage.total_tokens
