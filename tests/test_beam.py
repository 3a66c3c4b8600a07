"""Sentence-level beam search: the paper's rules on a deterministic step tree, with a plain scorer
and with the real adapter as scorer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from blackbox_sdk._exceptions import AdapterError, ConfigError, RerankerError
from blackbox_sdk.adapter import Adapter, AdapterConfig, beam_search, render_chatml
from blackbox_sdk.adapter._beam import CutStep

# The next steps the "black box" offers after each prefix (a deterministic step tree).
TREE: dict[str, list[str]] = {
    "": ["Add the ones.", "Add the tens.", "Add the ones.", "Guess.\nand more"],
    "Add the ones.": ["4 + 8 = 12, carry 1.", "4 + 8 = 11."],
    "Add the tens.": ["2 + 2 = 4."],
    "Guess.": ["#### 99"],
    "Add the ones.\n4 + 8 = 12, carry 1.": ["2 + 2 + 1 = 5.", "#### 52"],
    "Add the ones.\n4 + 8 = 11.": ["#### 51"],
    "Add the tens.\n2 + 2 = 4.": ["#### 40"],
    "Add the ones.\n4 + 8 = 12, carry 1.\n2 + 2 + 1 = 5.": ["#### 52"],
}


class TreeSampler:
    """Returns the tree's steps for a prefix (cycled to k), counting calls; '' when the tree ends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, question: str, prefix: str, k: int) -> list[str]:
        self.calls.append((prefix, k))
        steps = TREE.get(prefix, [""])
        return [steps[i % len(steps)] for i in range(k)]


def length_scorer(question: str, answers: Sequence[str]) -> list[float]:
    """Prefers longer answers, so the expected beams can be worked out by hand."""
    return [float(len(a)) for a in answers]


def test_beam_search_follows_the_best_prefixes_to_the_answer_marker() -> None:
    sampler = TreeSampler()
    result = beam_search("What is 24 plus 28?", sampler, length_scorer, beam=2, candidates=4, max_steps=8)
    assert result.text == "Add the ones.\n4 + 8 = 12, carry 1.\n2 + 2 + 1 = 5.\n#### 52"
    assert result.score == float(len(result.text))
    assert result.steps == 4
    assert "####" in result.beams[0][0] and len(result.beams) == 2


def test_steps_are_cut_to_one_line_and_deduplicated_before_scoring() -> None:
    scored: list[list[str]] = []

    def recording_scorer(question: str, answers: Sequence[str]) -> list[float]:
        scored.append(list(answers))
        return length_scorer(question, answers)

    result = beam_search("q", TreeSampler(), recording_scorer, beam=3, candidates=4, max_steps=1)
    assert scored[0] == ["Add the ones.", "Add the tens.", "Guess."]
    assert result.steps == 1 and result.candidates_scored == 3


def test_a_finished_beam_is_carried_and_not_sampled_again() -> None:
    sampler = TreeSampler()
    result = beam_search("q", sampler, lambda q, a: [10.0 if x.startswith("Guess") else 0.0 for x in a], beam=2, candidates=4)
    assert result.text == "Guess.\n#### 99" and result.score == 10.0
    assert result.steps == 4
    assert "Guess.\n#### 99" not in [prefix for prefix, _ in sampler.calls]


def test_an_empty_continuation_finishes_a_beam_without_a_marker() -> None:
    sampler = TreeSampler()
    result = beam_search("q", sampler, length_scorer, beam=1, candidates=1, max_steps=6, answer_marker=None)
    assert result.text == "Add the ones.\n4 + 8 = 12, carry 1.\n2 + 2 + 1 = 5.\n#### 52"
    assert result.steps == 5 and sampler.calls[-1][0] == result.text


def test_a_stop_sequence_ends_its_beam_where_it_appears() -> None:
    """The caller's `stop` was dropped by the beam sampler: answers ran on past it, as no plain call would."""
    sampler = TreeSampler()
    result = beam_search("q", sampler, length_scorer, beam=2, candidates=4, max_steps=8, stop=["carry", "2 + 2 ="])
    assert [text for text, _ in result.beams] == ["Add the ones.\n4 + 8 = 11.\n#### 51", "Add the ones.\n4 + 8 = 12,"]
    assert result.steps == 3
    assert all(not prefix.endswith("12,") for prefix, _ in sampler.calls)  # a stopped beam is not extended


def test_a_step_that_opens_with_a_stop_sequence_finishes_the_beam_as_it_is() -> None:
    result = beam_search("q", TreeSampler(), length_scorer, beam=1, candidates=1, max_steps=8, answer_marker=None, stop="4 +")
    assert result.text == "Add the ones." and result.steps == 2


def test_a_step_the_token_cap_cut_ends_its_beam_and_is_reported_truncated() -> None:
    def sampler(question: str, prefix: str, k: int) -> list[str]:
        return {"": [CutStep("Add the on"), "Add the tens."], "Add the tens.": ["2 + 2 = 4."]}.get(prefix, [""])

    result = beam_search("q", sampler, length_scorer, beam=2, candidates=2, max_steps=4, answer_marker=None)
    assert [text for text, _ in result.beams] == ["Add the tens.\n2 + 2 = 4.", "Add the on"]
    assert result.truncated == ("Add the on",)


def test_max_steps_bounds_the_search() -> None:
    result = beam_search("q", TreeSampler(), length_scorer, beam=2, candidates=4, max_steps=2)
    assert result.steps == 2 and result.text.count("\n") == 1


def test_nothing_sampled_gives_an_empty_answer() -> None:
    result = beam_search("q", lambda q, p, k: [""] * k, length_scorer)
    assert result.text == "" and result.score == float("-inf") and result.candidates_scored == 0


def test_each_step_asks_for_candidates_per_open_beam() -> None:
    sampler = TreeSampler()
    beam_search("q", sampler, length_scorer, beam=2, candidates=3, max_steps=2)
    assert [k for _, k in sampler.calls] == [3, 3, 3]


@pytest.mark.parametrize(
    "kwargs",
    [pytest.param({"beam": 0}, id="beam"), pytest.param({"candidates": 0}, id="candidates"), pytest.param({"max_steps": 0}, id="steps"), pytest.param({"separator": ""}, id="separator")],
)
def test_bad_search_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        beam_search("q", TreeSampler(), length_scorer, **kwargs)  # type: ignore[arg-type]


def test_a_scorer_returning_the_wrong_count_is_a_reranker_error() -> None:
    with pytest.raises(RerankerError, match="scores for") as raised:
        beam_search("q", TreeSampler(), lambda q, a: [1.0])
    assert isinstance(raised.value, AdapterError) and isinstance(raised.value, ConfigError)  # ConfigError as before


def test_with_the_real_adapter_the_kept_beams_are_its_top_scored_prefixes() -> None:
    torch.set_num_threads(1)
    adapter = Adapter.create(AdapterConfig(trainable_layers=0), seed=3, device="cpu")
    question = "What is 24 plus 28?"
    result = beam_search(question, TreeSampler(), adapter.score, beam=2, candidates=4, max_steps=1)
    first = ["Add the ones.", "Add the tens.", "Guess."]
    expected = sorted(zip(adapter.score(question, first), first), reverse=True)[:2]
    assert [text for text, _ in result.beams] == [text for _, text in expected]
    assert [score for _, score in result.beams] == pytest.approx([score for score, _ in expected], abs=1e-5)
    full = beam_search(question, TreeSampler(), adapter.score, beam=2, candidates=4, max_steps=8)
    assert "####" in full.text.splitlines()[-1]
    assert full.score == pytest.approx(adapter.score(question, [full.text])[0], abs=1e-5)


def test_render_chatml_ends_inside_the_assistant_turn() -> None:
    prompt = render_chatml([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "Step 1\n")
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nStep 1\n"
