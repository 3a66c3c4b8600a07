"""Single flight: identical requests in flight at the same moment are sent once; the others get
that answer from the shared cache (on disk here, Redis across hosts), against the real server."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, OpenAI
from blackbox_sdk._pipeline import _flows

from servers import InstantUpstream

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def cache_target(store_at: Callable[[str], str]) -> str:
    """Where the store lives: cache in the test's folder, then a real redis-server."""
    return store_at("cache")


def test_eight_threads_asking_the_same_thing_send_it_once(llama_server: str, cache_target: str) -> None:
    client = OpenAI(base_url=llama_server, api_key="sk-test", cache=cache_target)
    ask = lambda _: client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)  # noqa: E731
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert sum(a.blackbox.requests for a in answers) == 1
    assert sum(a.blackbox.cache_hit for a in answers) == 7
    assert len({a.choices[0].message.content for a in answers}) == 1


def _ask_in_process(base_url: str, cache: str, start: Any, results: Any) -> None:
    """Child process: two threads ask the question when every process is ready; put each (requests, text)."""
    client = OpenAI(base_url=base_url, api_key="sk-test", cache=cache)
    start.wait()

    def ask(_: int) -> tuple[int, str | None]:
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
        return answer.blackbox.requests, answer.choices[0].message.content

    with ThreadPoolExecutor(2) as pool:
        for outcome in pool.map(ask, range(2)):
            results.put(outcome)
    client.close()


def test_four_processes_asking_the_same_thing_send_it_once(llama_server: str, cache_target: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_ask_in_process, args=(llama_server, cache_target, start, results)) for _ in range(4)]
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=120) for _ in range(8)]
    for process in workers:
        process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    assert sum(requests for requests, _ in outcomes) == 1
    assert len({text for _, text in outcomes}) == 1


async def test_async_streams_asking_the_same_thing_send_it_once(llama_server: str, cache_target: str) -> None:
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", cache=cache_target)

    async def ask() -> tuple[str, int]:
        stream = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return text, stream.blackbox.requests

    answers = await asyncio.gather(*(ask() for _ in range(6)))
    assert sum(requests for _, requests in answers) == 1
    assert len({text for text, _ in answers}) == 1
    await client.close()


def test_an_answer_stored_between_the_look_and_the_claim_is_not_sent_again(llama_server: str, tmp_path: Path) -> None:
    first = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache")
    second = OpenAI(base_url=llama_server, api_key="sk-test", cache=tmp_path / "cache")
    real_lookup = second._core.lookup
    looks: list[int] = []

    def late_look(call: object) -> object:  # the second caller looked before the first had stored its answer
        looks.append(1)
        return [] if len(looks) == 1 else real_lookup(call)

    second._core.lookup = late_look  # type: ignore[method-assign]
    first.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    answer = second.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    assert answer.blackbox.cache_hit and answer.blackbox.requests == 0


EMBEDDING = {"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 2, "total_tokens": 2},
             "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}]}


async def test_async_embeddings_asking_the_same_thing_send_it_once(cache_target: str) -> None:
    """Embeddings are cached whole: 20 identical calls at once send one request, the others wait for its answer."""
    sent: list[int] = []

    def slowly() -> None:
        sent.append(1)
        time.sleep(0.3)

    upstream = InstantUpstream(EMBEDDING, before=slowly, route="/embeddings")
    try:
        client = AsyncOpenAI(base_url=upstream.url, api_key="sk-test", cache=cache_target)
        answers = await asyncio.gather(*(client.embeddings.create(model="text-embedding-3-small", input="a colour") for _ in range(20)))
        assert len(sent) == 1 and sum(answer.blackbox.cache_hit for answer in answers) == 19
        assert {tuple(answer.data[0].embedding) for answer in answers} == {(0.25, -0.5)}
        await client.close()
    finally:
        upstream.close()


async def test_async_embeddings_left_by_a_cancelled_winner_send_it_once_more_not_each(cache_target: str) -> None:
    """The call sending an embeddings request is cancelled: of those waiting on it, one sends it again, the rest wait for that."""
    sent: list[int] = []
    released = threading.Event()

    def first_slow() -> None:
        sent.append(1)
        if len(sent) == 1:
            released.wait(10)

    upstream = InstantUpstream(EMBEDDING, before=first_slow, route="/embeddings")
    try:
        client = AsyncOpenAI(base_url=upstream.url, api_key="sk-test", cache=cache_target)
        embed = lambda: client.embeddings.create(model="text-embedding-3-small", input="a colour")  # noqa: E731
        winner = asyncio.create_task(embed())
        while not sent:
            await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(embed()) for _ in range(6)]
        await asyncio.sleep(0.3)  # waiting on the winner's claim (one not yet waiting would change nothing asserted)
        winner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await winner
        answers = await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
        assert len(sent) == 2 and sum(answer.blackbox.cache_hit for answer in answers) == 5
        await client.close()
    finally:
        released.set()
        upstream.close()


ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": MODEL,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "blue"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}


@pytest.mark.parametrize("second", ["whole", "stream", "embedding"])
def test_a_caller_past_its_single_flight_wait_looks_again_after_the_calibration_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str
) -> None:
    """The fetcher holds the claim and the gate of an uncalibrated endpoint; an identical caller stops
    waiting for its answer, waits at the gate meanwhile, and finds the answer stored once it passes."""
    monkeypatch.setattr(_flows, "SINGLE_FLIGHT_WAIT_S", 0.3)
    sent, go = [], threading.Event()

    def held_first() -> None:
        sent.append(1)
        go.wait(30) if len(sent) == 1 else None

    embedding = second == "embedding"
    upstream = InstantUpstream(EMBEDDING if embedding else ANSWER, before=held_first, route="/embeddings" if embedding else "/chat/completions")
    budget = Budget(total_usd=1.0, prices={MODEL: {"input": 1.0, "output": 1.0}, EMBEDDING["model"]: {"input": 1.0, "output": 0.0}})
    client = OpenAI(base_url=upstream.url, api_key="sk-test", cache=tmp_path / "cache", budget=budget, max_retries=0)
    asks = {
        "whole": lambda: client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0),
        "stream": lambda: list(client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stream=True)),
        "embedding": lambda: client.embeddings.create(model=EMBEDDING["model"], input="a colour"),
    }
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(asks["embedding" if embedding else "whole"])
            while not sent:
                time.sleep(0.01)
            later = pool.submit(asks[second])
            time.sleep(1.0)  # past its single-flight wait: at the gate the first call holds
            go.set()
            first.result(30), later.result(30)
        assert len(sent) == 1
        assert budget.report().outstanding_reservations == 0
    finally:
        client.close()
        upstream.close()



def test_the_looks_after_fetchers_that_ended_with_no_answer_share_one_single_flight_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue: each look after a fetcher that ended with no answer (failed, cancelled) waited the whole SINGLE_FLIGHT_WAIT_S
    again, so a caller could wait up to eight times as long as promised. The flow is driven here as a core drives it,
    on a clock of its own: each fetcher it waits on ends after 20 s of a 60 s wait, and another has claimed the request."""
    clock = [1000.0]
    monkeypatch.setattr(_flows.time, "monotonic", lambda: clock[0])
    call = SimpleNamespace(opts=SimpleNamespace(has_stores=False), io_in_place=True)  # its looks are done where they are
    flow = _flows.single_flight(None, call, look=lambda: ([], True), again=lambda: [], enough=bool)  # type: ignore[arg-type]
    asked = []
    effect = next(flow)
    with pytest.raises(StopIteration):
        while True:
            assert effect.kind == "wait"
            asked.append(effect.seconds)
            clock[0] += min(effect.seconds, 20.0)  # the fetcher it waited on ended with no answer, or the wait was up
            effect = flow.send(None)
    assert asked == [60.0, 40.0, 20.0]  # one wait of SINGLE_FLIGHT_WAIT_S, shared by its looks, then it sends itself
