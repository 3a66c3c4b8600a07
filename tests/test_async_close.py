"""An `AsyncOpenAI` closed while one of its calls is still going (a stream half-read, a call on another task)
logs that call when it ends, on the call log the client opened from a path, and the log's spend stays the
ledger's; and a client whose connections can't close (an earlier event loop opened them) still closes the
stores it opened. The server is the real llama.cpp one; the ledger and call log are the real SQLite ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blackbox_sdk import AsyncOpenAI, Budget, CallLog, CallLogError

MODEL = "smollm2"
PRICES = {MODEL: {"input": 1.0, "output": 1.0}}
COUNT = [{"role": "user", "content": "Count from one to twenty."}]


def _client(llama_server: str, tmp_path: Path) -> tuple[AsyncOpenAI, Budget]:
    """A client with a budget on an SQLite ledger and a call log it opens from a path."""
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    client = AsyncOpenAI(base_url=llama_server, api_key="sk-test", max_retries=0, budget=budget, log=str(tmp_path / "calls.db"))
    return client, budget


def _logged(tmp_path: Path) -> list[tuple[str | None, float]]:
    """Each logged call's error and cost."""
    with CallLog(tmp_path / "calls.db") as log:
        return [(record.error, record.cost_usd) for record in log.calls()]


@pytest.mark.parametrize("end", ["close", "read"])
async def test_a_stream_half_read_when_its_client_closes_is_still_logged_when_it_ends(llama_server: str, tmp_path: Path, end: str) -> None:
    """Closing the client under a half-read stream: the stream ends as it would (closed early, or its connection
    gone), never with 'the call log is closed', and it has its record, charged as on the ledger."""
    client, budget = _client(llama_server, tmp_path)
    stream = await client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=48, stream=True)
    await anext(stream)
    await client.close()
    try:
        if end == "close":
            await stream.close()
        else:
            async for _ in stream:
                pass
    except CallLogError as error:
        pytest.fail(f"the stream's end raised {error!r}")
    except Exception:  # the connection closed under the rest of the stream: openai's error, as without the SDK
        pass
    await asyncio.sleep(0.2)  # the log closes in a thread of its own once the stream ended
    [(_, cost)] = _logged(tmp_path)
    report = budget.report()
    assert report.outstanding_reservations == 0
    assert cost == pytest.approx(report.spent_usd) and cost > 0


async def test_calls_in_flight_on_other_tasks_when_the_client_closes_are_all_logged(llama_server: str, tmp_path: Path) -> None:
    """`async with` left while calls go on on other tasks: each ends with its answer or a connection error, and
    the log holds every one of them, with the ledger's spend."""
    budget = Budget(total_usd=1.0, prices=PRICES, ledger=tmp_path / "ledger.db")
    async with AsyncOpenAI(base_url=llama_server, api_key="sk-test", max_retries=0, budget=budget, log=str(tmp_path / "calls.db")) as client:
        calls = [asyncio.create_task(client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=24, stream=i % 2 == 1)) for i in range(6)]
        await asyncio.sleep(0.3)
    ended = await asyncio.gather(*calls, return_exceptions=True)
    for stream in [e for e in ended if hasattr(e, "close")]:
        await stream.close()  # type: ignore[union-attr]
    assert not [e for e in ended if isinstance(e, CallLogError)]
    await asyncio.sleep(0.2)
    logged = _logged(tmp_path)
    assert len(logged) == 6
    assert sum(cost for _, cost in logged) == pytest.approx(budget.report().spent_usd)
    assert budget.report().outstanding_reservations == 0


def test_a_client_closed_on_a_later_event_loop_still_closes_its_call_log(llama_server: str, tmp_path: Path) -> None:
    """Closing the connections an earlier `asyncio.run` opened fails (their loop is gone): the log opened from a
    path is closed all the same, its record written."""
    client, _ = _client(llama_server, tmp_path)
    completion = asyncio.run(client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=4))
    with pytest.raises(RuntimeError, match="Event loop is closed"):  # httpx's own, as with openai.AsyncOpenAI
        asyncio.run(client.close())
    with pytest.raises(CallLogError, match="closed"):
        asyncio.run(client.feedback(completion.blackbox.call_id, reward=1.0))
    assert len(_logged(tmp_path)) == 1
