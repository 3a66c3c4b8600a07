"""The rates a call is billed at depend on more than its model: `service_tier="priority"` bills about twice
the standard rates, and audio tokens several times text ones. A budget prices such a call at the rates its
price table gives for them, reserves audio at the dearer of text and audio, and refuses the call before it
is sent, under a cap, when those rates are missing (the built-in table has the standard text rates only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from blackbox_sdk import Budget, OpenAI, PriceMissingError
from blackbox_sdk.budget import ModelPrice

MODEL = "gpt-4o-audio-preview"
TEXT = {"input": 2.5, "output": 10.0, "cached_input": 1.25}
PRIORITY = {"input": 5.0, "output": 20.0}
AUDIO = {"audio_input": 40.0, "audio_output": 80.0}
QUESTION = [{"role": "user", "content": "Say hello."}]


def _usage(prompt: int, completion: int, audio_in: int = 0, audio_out: int = 0, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": audio_in},
        "completion_tokens_details": {"audio_tokens": audio_out},
    }


class Upstream:
    """A chat endpoint double that answers with a given usage and keeps every body it was sent."""

    def __init__(self, usage: dict[str, Any], tier: str = "default") -> None:
        self.usage, self.tier, self.bodies = usage, tier, []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        return httpx2.Response(200, json={
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL, "service_tier": self.tier,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
            "usage": self.usage,
        })


def _client(upstream: Upstream, folder: Path, price: dict[str, Any]) -> OpenAI:
    budget = Budget(total_usd=5.0, prices={MODEL: price}, ledger=str(folder / "ledger.db"))
    return OpenAI(api_key="sk-test", max_retries=0, budget=budget, http_client=httpx2.Client(transport=httpx2.MockTransport(upstream)))


def test_the_tier_and_audio_rates_price_a_call() -> None:
    price = ModelPrice.model_validate({**TEXT, "priority": PRIORITY, **AUDIO})
    assert price.at_tier(None) == price.at_tier("default") == price.at_tier("auto")
    assert price.at_tier("priority") == price.at_tier("scale") == ModelPrice(**PRIORITY, **AUDIO)
    assert price.at_tier("flex") == price.at_tier(None)  # no flex rates: the standard ones bound a flex call
    assert ModelPrice.model_validate(TEXT).at_tier("priority") is None
    # 1000 prompt tokens (400 audio) and 100 completion tokens (60 audio), in USD per million
    assert price.cost_usd(1000, 100, 0, (400, 60)) == pytest.approx((600 * 2.5 + 400 * 40 + 40 * 10 + 60 * 80) / 1e6)
    assert price.cost_usd(1000, 100, 300) == pytest.approx((700 * 2.5 + 300 * 1.25 + 100 * 10) / 1e6)
    assert price.ceiling() == ModelPrice(input=40.0, output=80.0)


@pytest.mark.parametrize("tier", ["priority", "scale"])
def test_a_priority_call_whose_rates_are_missing_is_refused_unsent(tmp_path: Path, tier: str) -> None:
    upstream = Upstream(_usage(10, 2))
    client = _client(upstream, tmp_path, TEXT)
    with pytest.raises(PriceMissingError, match=f"'{tier}' tier rates"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, service_tier=tier, max_tokens=5)
    assert upstream.bodies == []
    report = client.options.budget.report()
    assert (report.spent_usd, report.reserved_usd) == (0.0, 0.0)


def test_a_priority_call_is_reserved_and_charged_at_the_priority_rates(tmp_path: Path) -> None:
    upstream = Upstream(_usage(1000, 100), tier="priority")
    client = _client(upstream, tmp_path, {**TEXT, "priority": PRIORITY})
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, service_tier="priority", max_tokens=100)
    assert upstream.bodies[0]["service_tier"] == "priority"
    assert response.blackbox.cost_usd == pytest.approx((1000 * 5.0 + 100 * 20.0) / 1e6)  # the standard rates: half that
    assert client.options.budget.report().spent_usd == pytest.approx(response.blackbox.cost_usd)


def test_a_flex_call_without_flex_rates_goes_at_the_standard_rates(tmp_path: Path) -> None:
    upstream = Upstream(_usage(1000, 100), tier="flex")
    client = _client(upstream, tmp_path, TEXT)
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, service_tier="flex", max_tokens=100)
    assert response.blackbox.cost_usd == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)


@pytest.mark.parametrize("asks", [
    {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]},
])
def test_an_audio_call_whose_rates_are_missing_is_refused_unsent(tmp_path: Path, asks: dict[str, Any]) -> None:
    upstream = Upstream(_usage(10, 2))
    client = _client(upstream, tmp_path, TEXT)
    with pytest.raises(PriceMissingError, match="audio rates"):
        client.chat.completions.create(**{"model": MODEL, "messages": QUESTION, "max_tokens": 5, **asks})
    assert upstream.bodies == []
    assert client.options.budget.report().reserved_usd == 0.0


def test_an_audio_call_is_reserved_at_the_audio_rates_and_charged_per_kind_of_token(tmp_path: Path) -> None:
    upstream = Upstream(_usage(1000, 100, audio_in=400, audio_out=60, cached=500))
    client = _client(upstream, tmp_path, {**TEXT, **AUDIO})
    budget = client.options.budget
    held = budget.reserve(model=MODEL, prompt_tokens=1000, max_output_tokens=100, audio=True)
    assert held.worst_case_usd == pytest.approx((1000 * 40.0 + 100 * 80.0) / 1e6)  # every token might be audio
    budget.release(held)
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, modalities=["text", "audio"],
                                              audio={"voice": "alloy", "format": "wav"}, max_tokens=100)
    # audio in the prompt: no cached discount; 600 text + 400 audio in, 40 text + 60 audio out
    assert response.blackbox.cost_usd == pytest.approx((600 * 2.5 + 400 * 40.0 + 40 * 10.0 + 60 * 80.0) / 1e6)
    assert budget.report().spent_usd == pytest.approx(response.blackbox.cost_usd)


def test_a_report_of_more_audio_than_tokens_is_charged_the_worst_case(tmp_path: Path) -> None:
    upstream = Upstream(_usage(10, 5, audio_out=50))
    client = _client(upstream, tmp_path, {**TEXT, **AUDIO})
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, modalities=["text", "audio"],
                                              audio={"voice": "alloy", "format": "wav"}, max_tokens=100)
    assert response.blackbox.cost_usd >= 100 * 80.0 / 1e6  # the reserved worst case, not the 5 tokens reported


def test_without_a_cap_a_priority_call_is_recorded_at_the_standard_rates_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    budget = Budget(prices={MODEL: TEXT}, ledger=str(tmp_path / "ledger.db"))  # prices only: nothing capped
    held = budget.reserve(model=MODEL, prompt_tokens=1000, max_output_tokens=100, service_tier="priority")
    assert held.worst_case_usd == pytest.approx((1000 * 2.5 + 100 * 10.0) / 1e6)
    assert "has no 'priority' tier rates" in caplog.text
    budget.release(held)


def test_a_priority_call_to_a_real_server_is_charged_its_usage_at_the_priority_rates(llama_server: str, tmp_path: Path) -> None:
    budget = Budget(total_usd=5.0, prices={"smollm2": {**TEXT, "priority": PRIORITY}}, ledger=str(tmp_path / "ledger.db"))
    client = OpenAI(base_url=llama_server, api_key="none", max_retries=0, budget=budget)
    asked = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    standard = client.chat.completions.create(**asked)
    priority = client.chat.completions.create(**asked, service_tier="priority")
    for response, rates in ((standard, TEXT), (priority, PRIORITY)):
        usage = response.usage
        assert usage is not None
        expected = (usage.prompt_tokens * rates["input"] + usage.completion_tokens * rates["output"]) / 1e6
        assert response.blackbox.cost_usd == pytest.approx(expected)
    assert budget.report().spent_usd == pytest.approx(standard.blackbox.cost_usd + priority.blackbox.cost_usd)
    refusing = OpenAI(base_url=llama_server, api_key="none", max_retries=0,
                      budget=Budget(total_usd=5.0, prices={"smollm2": TEXT}, ledger=str(tmp_path / "other.db")))
    with pytest.raises(PriceMissingError, match="'priority' tier rates"):
        refusing.chat.completions.create(**asked, service_tier="priority")


def test_an_answer_served_at_priority_unasked_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = _client(Upstream(_usage(10, 2), tier="priority"), tmp_path, TEXT)  # the project's default tier is priority
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5)
    assert f"call {response.blackbox.call_id} was served at the 'priority' tier" in caplog.text
    caplog.clear()
    _client(Upstream(_usage(10, 2)), tmp_path, TEXT).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5)
    assert "tier" not in caplog.text
