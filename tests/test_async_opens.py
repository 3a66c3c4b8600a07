"""Per-call options that name a path (`cache="folder"`, `log="calls.db"`, `reranker="adapter"`) are
opened off an `AsyncOpenAI` client's event loop: a call log whose SQLite file another writer holds
keeps the call waiting, never the loop. A path opened once is reused, and a bad one is refused as
before. The server answers at once on a loopback port; the call log is the real SQLite one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from servers import InstantUpstream
from sqlite_locks import locked_while_the_loop_ticks

from blackbox_sdk import AdapterError, AsyncOpenAI, CallLog, OpenAI

HELLO = [{"role": "user", "content": "Say hi"}]
ANSWER = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


async def test_a_per_call_log_on_a_locked_file_is_opened_without_blocking_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    upstream = InstantUpstream(ANSWER)
    client = AsyncOpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0)
    try:
        async with locked_while_the_loop_ticks(path) as watch:  # opening the new log waits on SQLite's busy timeout
            completion = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, log=str(path))
            done = time.monotonic()
    finally:
        await client.close()
        upstream.close()
    assert completion.choices[0].message.content == "Hi."
    assert done >= watch.released  # the call did wait for the lock
    assert watch.ticks[0] < watch.released and watch.longest_stall() < 0.5  # the loop ran all the while
    with CallLog(path) as log:
        assert [record.call_id for record in log.calls()] == [completion.blackbox.call_id]


@pytest.mark.parametrize("client_class", [OpenAI, AsyncOpenAI], ids=["sync", "async"])
async def test_a_per_call_path_is_opened_once_and_a_bad_one_is_refused_before_sending(client_class: type, tmp_path: Path) -> None:
    upstream = InstantUpstream(ANSWER)
    client = client_class(base_url=upstream.url, api_key="sk-test", max_retries=0)

    async def create(**options: object) -> object:
        made = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **options)
        return await made if asyncio.iscoroutine(made) else made

    try:
        first = await create(cache=str(tmp_path / "cache"))
        second = await create(cache=str(tmp_path / "cache"))
        with pytest.raises(AdapterError, match="not an adapter folder"):
            await create(reranker=tmp_path / "no-such-adapter")
    finally:
        closed = client.close()
        if asyncio.iscoroutine(closed):
            await closed
        upstream.close()
    assert not first.blackbox.cache_hit and second.blackbox.cache_hit  # the second call saw the folder the first opened
