"""Reranking in the client on a real llama.cpp server: best-of-K, streams, async, beam, budgets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import openai
import pytest
from servers import InstantUpstream

from blackbox_sdk import AdapterError, AsyncOpenAI, Budget, CallLog, ConfigError, OpenAI, RerankerError
from blackbox_sdk._pipeline._rerank import rank

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "Name a colour."}]


def shortest_first(question: str, answers: Sequence[str]) -> list[float]:
    """A real scorer with an easy rule to check: shorter answers score higher."""
    return [-float(len(a)) for a in answers]


def ask(client: OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    params = {"model": MODEL, "messages": QUESTION, "max_tokens": 12, "temperature": 1.0, "seed": 21, **kwargs}
    return client.chat.completions.create(**params)


@pytest.fixture
def client(llama_server: str, tmp_path: Path) -> OpenAI:
    return OpenAI(base_url=llama_server, api_key="sk-test", reranker=shortest_first, rerank_n=6, log=tmp_path / "calls.db")


def test_rerank_samples_k_and_returns_the_best_as_choice_zero(client: OpenAI) -> None:
    completion = ask(client)
    info = completion.blackbox
    assert len(info.candidates) == 6 and len(info.scores) == 6
    assert len(completion.choices) == 1
    assert completion.choices[0].message.content == min(info.candidates, key=len)
    assert info.scores[info.chosen[0]] == max(info.scores)


def test_rerank_with_n_returns_the_top_n_in_order(client: OpenAI) -> None:
    completion = ask(client, n=2)
    info = completion.blackbox
    texts = [c.message.content for c in completion.choices]
    assert texts == [info.candidates[i] for i in info.chosen] and len(texts) == 2
    assert info.scores[info.chosen[0]] >= info.scores[info.chosen[1]] >= sorted(info.scores)[-2]


def test_rerank_is_logged_with_candidates_scores_and_choice(client: OpenAI) -> None:
    completion = ask(client)
    record = CallLog(client.options.log.path).get(completion.blackbox.call_id)
    assert record.candidates == completion.blackbox.candidates
    assert record.scores == completion.blackbox.scores and record.chosen == completion.blackbox.chosen


def test_reranked_stream_streams_the_chosen_answer(client: OpenAI) -> None:
    stream = ask(client, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == min(stream.blackbox.candidates, key=len)


def test_a_reranker_that_misscores_is_a_reranker_error_and_the_paid_call_is_logged(client: OpenAI) -> None:
    with pytest.raises(RerankerError, match="1 scores for 6 answers") as raised:
        ask(client, reranker=lambda question, answers: [1.0])
    assert isinstance(raised.value, AdapterError) and isinstance(raised.value, ConfigError)  # ConfigError as before
    client.options.log.flush()
    [record] = CallLog(client.options.log.path).calls()
    assert "1 scores for 6 answers" in (record.error or "")


@pytest.mark.parametrize(
    "scores, said",
    [
        pytest.param(0.5, "one float", id="one-number"),  # a scorer of one answer, given all six
        pytest.param(None, "None", id="none"),
        pytest.param("123456", "a string", id="a-string-of-six-digits"),  # not read as six scores
        pytest.param(["high"] * 6, "6 values that are not all numbers ('high')", id="words"),
    ],
)
def test_a_reranker_that_returns_no_list_of_numbers_is_a_reranker_error_and_the_paid_call_is_logged(
    client: OpenAI, scores: object, said: str
) -> None:
    message = f"the reranker returned {said} for 6 answers: it must return one number per answer"
    with pytest.raises(RerankerError, match=re.escape(message)):
        ask(client, reranker=lambda question, answers: scores)
    client.options.log.flush()
    [record] = CallLog(client.options.log.path).calls()
    assert record.error == f"RerankerError: {message}"
    assert record.usage["completion_tokens"] > 0 and record.usage["prompt_tokens"] > 0  # its six answers were paid for


def test_a_beam_scorer_that_returns_one_number_is_a_reranker_error(llama_server: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", reranker=lambda question, prefixes: 1.0,
                    beam={"beam": 2, "candidates": 2, "max_steps": 1, "answer_marker": None})
    with pytest.raises(RerankerError, match="returned one float for 2 answers"):
        ask(client)


def test_nan_scores_rank_last() -> None:
    nan = float("nan")
    assert rank([nan, 1.0, nan, 2.0]) == [3, 1, 0, 2]
    assert rank([nan, nan]) == [0, 1]


def test_per_call_reranker_none_turns_it_off(client: OpenAI) -> None:
    completion = ask(client, reranker=None)
    assert completion.blackbox.candidates is None and completion.blackbox.requests == 1


async def test_async_rerank(llama_server: str) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", reranker=shortest_first, rerank_n=4)
    completion = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10, temperature=1.0)
    assert completion.choices[0].message.content == min(completion.blackbox.candidates, key=len)
    await client.close()


def test_shrink_budget_lowers_k_down_to_what_fits(llama_server: str) -> None:
    budget = Budget(per_call_usd=0.00013, prices={MODEL: {"input": 1.0, "output": 2.0}}, policy="shrink")
    client = OpenAI(base_url=llama_server, api_key="sk-test", reranker=shortest_first, rerank_n=8, budget=budget)
    completion = ask(client, max_tokens=16)
    assert 1 <= len(completion.blackbox.candidates or [completion.choices[0].message.content]) < 8


def steps_scorer(question: str, prefixes: Sequence[str]) -> list[float]:
    """Prefers prefixes with more lines, then shorter ones."""
    return [p.count("\n") * 100.0 - len(p) for p in prefixes]


def test_beam_search_builds_the_answer_step_by_step(llama_server: str, tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.db")
    client = OpenAI(base_url=llama_server, api_key="sk-test", reranker=steps_scorer, log=log,
                    beam={"beam": 2, "candidates": 2, "max_steps": 2, "answer_marker": None})
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "List two fruits, one per line."}], max_tokens=12, temperature=1.0
    )
    info = completion.blackbox
    assert completion.choices[0].message.content == info.candidates[0]
    assert info.scores == sorted(info.scores, reverse=True)
    assert info.requests >= 2  # one step call per kept beam per step, each fanned out to 2 samples
    step_records = [r for r in log.calls() if r.call_id != info.call_id]
    assert len(step_records) >= 2 and all(not r.scores for r in step_records)
    assert completion.usage.completion_tokens == sum(r.usage["completion_tokens"] for r in step_records)


def test_a_beam_search_stops_its_answers_at_the_callers_stop_sequence(llama_server: str) -> None:
    """The beam sampler replaced the caller's `stop` with its own step boundary: answers ran on past it."""
    client = OpenAI(base_url=llama_server, api_key="sk-test", reranker=steps_scorer,
                    beam={"beam": 2, "candidates": 2, "max_steps": 2, "answer_marker": None})
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=1.0, seed=5, reranker=None, beam=None)
    assert " " in (plain.choices[0].message.content or "")  # without the stop, SmolLM2's answers hold spaces
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=1.0, seed=5, stop=[" "])
    assert completion.blackbox.candidates and all(" " not in text for text in completion.blackbox.candidates)


def test_a_beam_step_cut_by_max_tokens_ends_its_answer_with_finish_reason_length(llama_server: str) -> None:
    """A step the token cap cut was taken for a whole line: the next step started a new line after half a word, and the
    answer said finish_reason "stop". With one token a step, every step is cut: each beam ends after its first."""
    client = OpenAI(base_url=llama_server, api_key="sk-test", reranker=steps_scorer,
                    beam={"beam": 2, "candidates": 2, "max_steps": 3, "answer_marker": None})
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "List two fruits, one per line."}], max_tokens=1, temperature=1.0, seed=5
    )
    text = completion.choices[0].message.content or ""
    assert text and "\n" not in text and completion.choices[0].finish_reason == "length"


def test_a_stream_of_n_at_least_rerank_n_carries_the_reranked_order(client: OpenAI) -> None:
    stream = ask(client, n=6, stream=True)
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    info = stream.blackbox
    assert info.scores is not None and len(info.scores) == 6  # it was reranked, not passed through
    assert info.chosen == rank(info.scores)
    assert [texts[i] for i in range(6)] == [info.candidates[i] for i in info.chosen]


def test_answers_that_only_call_tools_are_scored_by_their_calls() -> None:
    import json

    import httpx2

    def answer(request: httpx2.Request) -> httpx2.Response:  # a double: SmolLM2 on llama.cpp makes no tool calls on demand
        seed = json.loads(request.content).get("seed") or 0
        call = {"id": f"call_{seed}", "type": "function", "function": {"name": "pick", "arguments": json.dumps({"larger": 84 if seed % 2 else 43})}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
                                          "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                                          "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})

    seen: list[list[str]] = []

    def prefers_84(question: str, answers: Sequence[str]) -> list[float]:
        seen.append(list(answers))
        return [1.0 if "84" in a else 0.0 for a in answers]

    client = OpenAI(base_url="http://double.test/v1", api_key="sk-test", reranker=prefers_84, rerank_n=4,
                    http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    tools = [{"type": "function", "function": {"name": "pick", "parameters": {"type": "object", "properties": {"larger": {"type": "integer"}}}}}]
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=tools, seed=2)
    assert all('"name":"pick"' in text for text in seen[0])  # scored on their calls, not as four empty texts
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"larger": 84}


@pytest.mark.parametrize(
    "response_format",
    [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "colour", "schema": {"type": "object"}}}],
    ids=["json_object", "json_schema"],
)
def test_with_a_json_response_format_reranking_prefers_the_answers_that_are_json(response_format: dict[str, object]) -> None:
    """`create(response_format=...)` reranked answers cut short by max_tokens (not JSON) with the whole ones: the pick
    could be broken JSON while a whole answer was at hand (`parse` already ranks the answers that fit first)."""
    import json

    import httpx2

    def answer(request: httpx2.Request) -> httpx2.Response:  # a double: which sample is cut must not depend on sampling
        seed = json.loads(request.content).get("seed") or 0
        whole = seed % 2 == 1
        content, finish = ('{"colour": "red"}', "stop") if whole else ('{"colour": "a deep crimson red, like', "length")
        return httpx2.Response(200, json={"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
                                          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                                          "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})

    def longest_first(question: str, answers: Sequence[str]) -> list[float]:
        return [float(len(a)) for a in answers]

    client = OpenAI(base_url="http://double.test/v1", api_key="sk-test", reranker=longest_first, rerank_n=4,
                    http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, response_format=response_format, seed=2)
    info = completion.blackbox
    assert info.candidates is not None and sum(text.startswith('{"colour": "a deep') for text in info.candidates) == 2
    assert json.loads(completion.choices[0].message.content or "") == {"colour": "red"}
    assert info.candidates[info.chosen[0]] == completion.choices[0].message.content
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, response_format=response_format, seed=2)
    assert json.loads(raw.parse().choices[0].message.content or "") == {"colour": "red"}
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, seed=2)  # no JSON asked: the scores decide
    assert plain.choices[0].message.content == '{"colour": "a deep crimson red, like'


def test_a_client_with_beam_search_still_embeds() -> None:
    """Embeddings are never reranked, so a client's beam option (chat only) does not refuse them."""
    vectors = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": MODEL,
               "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    upstream = InstantUpstream(vectors, route="/embeddings")
    try:
        client = OpenAI(base_url=upstream.url, api_key="sk-test", reranker=shortest_first, beam=True, max_retries=0)
        embedded = client.embeddings.create(model=MODEL, input="hi")
    finally:
        upstream.close()
    assert embedded.data[0].embedding == [0.1, 0.2] and embedded.blackbox.candidates is None
