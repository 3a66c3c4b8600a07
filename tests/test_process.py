"""The process's pid and random ids (call ids, claim tokens, reservation ids): drawn from the OS a block at a time,
they must stay unique across threads and across a fork, where the child would otherwise hand out the parent's bytes."""

from __future__ import annotations

import os
import threading

from blackbox_sdk._process import BLOCK_BYTES, pid, random_hex
from blackbox_sdk.call_log import new_call_id


def test_a_forked_child_draws_ids_of_its_own_and_knows_its_pid() -> None:
    random_hex(16)  # the parent holds a block, part drawn, at the fork
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next ids and its pid, then out without running the parent's cleanup
        try:
            os.write(writer, (" ".join(random_hex(16) for _ in range(100)) + f" {pid()} {os.getpid()}").encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        *child_ids, child_pid_seen, child_pid = pipe.read().split()
    os.waitpid(child, 0)
    parent_ids = [random_hex(16) for _ in range(100)]
    assert len(child_ids) == 100
    assert not set(child_ids) & set(parent_ids)
    assert child_pid_seen == child_pid != str(os.getpid())
    assert pid() == os.getpid()


def test_ids_drawn_by_many_threads_at_once_are_all_unique() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(random_hex(16) for _ in range(2000))  # 2000 x 16 bytes: several blocks each

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [token for into in drawn for token in into]
    assert len(every) == len(set(every)) == 16_000
    assert all(len(token) == 32 and int(token, 16) >= 0 for token in every)


def test_a_draw_larger_than_a_block_is_whole_and_call_ids_keep_their_form() -> None:
    assert len(random_hex(BLOCK_BYTES + 5)) == 2 * (BLOCK_BYTES + 5)
    stamp, tail = new_call_id().removeprefix("bb-").split("-")
    assert int(stamp, 16) > 0 and len(tail) == 16
