"""A client made before a fork, used by the children: gunicorn/uvicorn ``--preload`` workers, ``multiprocessing``
with the fork start method, celery's prefork pool. The parent calls first (so writer threads and store
connections exist), then forks; each child calls through the inherited client, and the parent checks that every
call is logged exactly once, the ledger's spend is the log's, nothing stays reserved, the cache is shared and no
child hangs (a deadlocked child fails its join's timeout rather than hanging the run)."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_databases import fresh_database
from servers import InstantUpstream, PostgresServer

from blackbox_sdk import Budget, Cache, CallLog, OpenAI, RateLimits

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 1000.0, "output": 1000.0}}  # a call costs a few cents
FORK = multiprocessing.get_context("fork")
JOIN_S = 60.0


def _answer() -> dict[str, Any]:
    """A chat answer whose usage the ledger charges."""
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    return {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Apple."}, "finish_reason": "stop"}]}


def _ask(client: OpenAI, question: str) -> tuple[str, float, bool]:
    """One call: its call id, cost and whether the cache answered it."""
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=4)
    return answer.blackbox.call_id, answer.blackbox.cost_usd, answer.blackbox.cache_hit


@pytest.fixture
def upstream() -> Iterator[InstantUpstream]:
    """The fake OpenAI server, in a thread of the parent (the children reach it over loopback)."""
    server = InstantUpstream(_answer())
    yield server
    server.close()


def _stores(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> tuple[Budget, Cache, RateLimits]:
    """The budget, cache and rate limits on real SQLite files in ``tmp_path``, or on a real redis-server."""
    if kind == "sqlite":
        shared: dict[str, Any] = {"ledger": tmp_path / "ledger.db", "cache": tmp_path / "cache", "limits": tmp_path / "rate.db"}
    else:
        url = request.getfixturevalue("redis_server").url
        shared = {"ledger": url, "cache": url, "limits": url}
    budget = Budget(total_usd=100.0, prices=PRICES, ledger=shared["ledger"])
    return budget, Cache(shared["cache"]), RateLimits(rpm=10_000, store=shared["limits"])


def _client(upstream: InstantUpstream, budget: Budget, cache: Cache, limits: RateLimits, log: CallLog | Path | str) -> OpenAI:
    """The client a preloading server makes at import."""
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=budget, cache=cache, log=log, rate_limit=limits, max_retries=0)
    budget.calibration.learn(f"{client._core.endpoint}#chat.completions", MODEL, 0, 0)  # calibrated: no gate in these tests
    return client


def _child_calls(client: OpenAI, index: int, out: Any) -> None:
    """A worker's calls: the parent's question (a cache hit) and two of its own; it leaves without closing anything."""
    out.put([_ask(client, question) for question in ("Name a fruit.", f"child {index} first", f"child {index} second")])


def _many_calls(client: OpenAI, index: int, out: Any) -> None:
    """A busy worker: twenty calls, each logged at once (the children's writes overlap)."""
    calls = []
    for number in range(20):
        calls.append(_ask(client, f"child {index} call {number}"))
        client._core.opts.log.flush()
    out.put(calls)


def _run_children(target: Callable[..., None], *args: Any, count: int = 3) -> list[Any]:
    """Fork ``count`` multiprocessing children running ``target(*args, index, queue)``; what each put, after each exited 0."""
    out = FORK.Queue()
    children = [FORK.Process(target=target, args=(*args, index, out)) for index in range(count)]
    for child in children:
        child.start()
    results = [out.get(timeout=JOIN_S) for _ in children]
    for child in children:
        child.join(JOIN_S)
        assert child.exitcode == 0, "a forked child hung or failed"
    return results


def _check_books(log_path: Path, budget: Budget, calls: list[tuple[str, float, bool]]) -> None:
    """Every call logged once, the ledger's spend the sum of the calls', nothing left held."""
    with CallLog(log_path) as log:
        logged = [record.call_id for record in log.calls()]
        assert sorted(logged) == sorted(call_id for call_id, _, _ in calls)  # each exactly once
    report = budget.report()
    assert report.spent_usd == pytest.approx(sum(cost for _, cost, _ in calls))
    assert report.reserved_usd == 0


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_three_forked_children_share_the_parents_client(kind: str, tmp_path: Path, upstream: InstantUpstream, request: pytest.FixtureRequest) -> None:
    budget, cache, limits = _stores(tmp_path, kind, request)
    client = _client(upstream, budget, cache, limits, tmp_path / "calls.db")
    first = _ask(client, "Name a fruit.")  # the writer thread, connections and the lease keeper exist now
    children = [call for calls in _run_children(_child_calls, client) for call in calls]
    assert [hit for _, _, hit in children] == [True, False, False] * 3  # the parent's answer came from the shared cache
    client._core.opts.log.flush()
    _check_books(tmp_path / "calls.db", budget, [first, *children])


def test_forked_children_log_to_postgresql_on_connections_of_their_own(
    tmp_path: Path, upstream: InstantUpstream, postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> None:
    """The PostgreSQL log's pooled connections are the parent's sessions: each child writes on its own, and the
    parent's pool still works after them."""
    budget, cache, limits = _stores(tmp_path, "sqlite", request)
    with fresh_database(postgres_server) as url:
        client = _client(upstream, budget, cache, limits, url)
        first = _ask(client, "Name a fruit.")
        log = client._core.opts.log
        log.flush()  # the parent's pool has a live connection at the fork
        children = [call for calls in _run_children(_many_calls, client) for call in calls]
        assert sorted(record.call_id for record in log.calls()) == sorted(call_id for call_id, _, _ in [first, *children])
        client.close()


def test_records_queued_in_the_parent_at_the_fork_are_written_once(tmp_path: Path, upstream: InstantUpstream, request: pytest.FixtureRequest) -> None:
    """The parent's writer holds queued records at the fork: the parent writes them, no child writes them again."""
    budget, cache, limits = _stores(tmp_path, "sqlite", request)
    log = CallLog(tmp_path / "calls.db", interval=3600.0, batch_size=10_000)  # records wait in the parent's queue
    client = _client(upstream, budget, cache, limits, log)
    first = [_ask(client, f"parent {index}") for index in range(5)]
    assert log.pending == 5
    children = [call for calls in _run_children(_child_calls, client) for call in calls]
    assert log.pending == 5  # still the parent's, to write
    log.flush()
    _check_books(tmp_path / "calls.db", budget, [*first, *children])


@pytest.mark.parametrize("store", ["log", "ledger", "limits"])
def test_a_store_mid_transaction_in_another_thread_at_the_fork_leaves_the_child_working(
    store: str, tmp_path: Path, upstream: InstantUpstream, request: pytest.FixtureRequest
) -> None:
    """A thread of the parent is inside a write transaction (its lock held, SQLite's write lock taken) when the
    parent forks: the fork waits for it, so the child neither deadlocks on the lock nor finds the file locked."""
    budget, cache, limits = _stores(tmp_path, "sqlite", request)
    client = _client(upstream, budget, cache, limits, tmp_path / "calls.db")
    first = _ask(client, "Name a fruit.")
    inside, done = threading.Event(), threading.Event()
    transactions = {
        "log": lambda: client._core.opts.log._write("hold the log"),
        "ledger": lambda: budget._ledger._immediate(),
        "limits": lambda: limits._store()._transaction("hold the window"),
    }

    def hold() -> None:
        with transactions[store]():
            inside.set()
            done.wait(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    children = [call for calls in _run_children(_child_calls, client) for call in calls]
    done.set()
    holder.join(10)
    client._core.opts.log.flush()
    _check_books(tmp_path / "calls.db", budget, [first, *children])


def test_children_keep_writing_after_the_parent_closes_its_client(tmp_path: Path, upstream: InstantUpstream, request: pytest.FixtureRequest) -> None:
    """The parent closes its connections (the last holder of the file's lock it knows of) while its children still
    write: what they write after that lands (a child's connection must not share the parent's SQLite lock state)."""
    budget, cache, limits = _stores(tmp_path, "sqlite", request)
    client = _client(upstream, budget, cache, limits, tmp_path / "calls.db")
    first = _ask(client, "Name a fruit.")
    started, closed, out = FORK.Event(), FORK.Event(), FORK.Queue()

    def work() -> None:
        calls = [_ask(client, "child before")]
        started.set()
        closed.wait(JOIN_S)
        out.put([*calls, *(_ask(client, f"child after {index}") for index in range(3))])

    child = FORK.Process(target=work)
    child.start()
    assert started.wait(JOIN_S)
    client.close()
    budget._ledger.close()
    closed.set()
    children = out.get(timeout=JOIN_S)
    child.join(JOIN_S)
    assert child.exitcode == 0
    _check_books(tmp_path / "calls.db", budget, [first, *children])


def _fork_running(work: Callable[[], None]) -> int:
    """A bare os.fork() child that runs ``work`` and exits 0, or 1 where it raised; its pid, in the parent."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exits_0(pid: int, timeout: float) -> bool:
    """Whether the child ``pid`` exits 0 within ``timeout`` seconds (one still running then is killed, and fails)."""
    deadline = time.monotonic() + timeout
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return False
    return os.waitstatus_to_exitcode(waited[1]) == 0


def test_an_os_fork_child_that_exits_normally_writes_its_queued_calls(tmp_path: Path, upstream: InstantUpstream, request: pytest.FixtureRequest) -> None:
    """A bare os.fork() child that makes calls and exits as a worker does at shutdown (atexit runs): its calls are
    written at exit, once; the parent's queued record stays the parent's."""
    budget, cache, limits = _stores(tmp_path, "sqlite", request)
    log = CallLog(tmp_path / "calls.db", interval=3600.0, batch_size=10_000)
    client = _client(upstream, budget, cache, limits, log)
    first = _ask(client, "Name a fruit.")
    read, write = os.pipe()

    def work() -> None:  # the child: its calls' ids go to the parent through the pipe, then the interpreter's exit steps
        os.close(read)
        os.write(write, " ".join(_ask(client, f"forked {index}")[0] for index in range(3)).encode())
        os.close(write)
        atexit._run_exitfuncs()  # what sys.exit would run, without unwinding into pytest in this child

    pid = _fork_running(work)
    os.close(write)
    assert _exits_0(pid, JOIN_S), "the forked child hung or failed"
    with os.fdopen(read) as pipe:
        ids = pipe.read().split()
    assert log.pending == 1
    log.flush()
    with CallLog(tmp_path / "calls.db") as reader:
        assert sorted(record.call_id for record in reader.calls()) == sorted([first[0], *ids])


def _forked_child_finishes(work: Callable[[], None], held: Any) -> bool:
    """Fork while another thread holds the lock ``held``; whether the child runs ``work`` and exits 0 in time
    (a child deadlocked on the copy of the held lock is killed, and fails)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        pid = _fork_running(work)
    finally:
        release.set()
        holder.join(10)
    return _exits_0(pid, 10.0)


def test_a_fork_while_a_thread_holds_the_async_store_workers_lock_leaves_the_child_working() -> None:
    """An async client's first store work in another thread as the parent forks: the child still gets its workers."""
    from blackbox_sdk._pipeline import _async

    assert _forked_child_finishes(lambda: _async.store_workers().submit(int).result(10), _async._workers_lock)


def test_a_fork_while_a_thread_holds_the_log_writers_lock_leaves_the_child_working(tmp_path: Path) -> None:
    """A call log opened or flushed in another thread as the parent forks: the child still opens and flushes logs."""
    from blackbox_sdk.call_log import _sqlite_batches

    def work() -> None:
        with CallLog(tmp_path / "child.db") as log:
            log.flush()

    assert _forked_child_finishes(work, _sqlite_batches._writers_lock)


class _EchoServer:
    """A loopback OpenAI-compatible server that keeps connections alive (HTTP/1.1) and answers each chat call with
    its last message's text, a little late (so requests of several processes on one socket would overlap)."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
                answer = _answer()
                answer["choices"][0]["message"]["content"] = asked
                body = json.dumps(answer).encode()
                time.sleep(0.005)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def _echoed(client: OpenAI, who: str, count: int) -> list[str]:
    """``count`` calls, each asking for its own marker: what came back wrong (a crossed answer, an error)."""
    wrong = []
    for number in range(count):
        marker = f"{who} call {number}"
        try:
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": marker}])
            if answer.choices[0].message.content != marker:
                wrong.append(f"{marker} got {answer.choices[0].message.content!r}")
        except Exception as exc:  # noqa: BLE001 - the test reports every failure, whatever it raised
            wrong.append(f"{marker} raised {type(exc).__name__}: {exc}")
    return wrong


def _echo_child(client: OpenAI, index: int, out: Any) -> None:
    """A worker's calls through the parent's client."""
    out.put(_echoed(client, f"child {index}", 30))


def test_forked_children_never_read_answers_on_the_parents_pooled_http_connection() -> None:
    """The parent's call leaves a keep-alive connection in openai's pool; the children and the parent then call at
    once: each gets its own answer (a child sending on the parent's socket would read the parent's or a sibling's)."""
    server = _EchoServer()
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0, timeout=10.0)
    try:
        assert _echoed(client, "parent first", 1) == []  # one pooled connection now
        out = FORK.Queue()
        children = [FORK.Process(target=_echo_child, args=(client, index, out)) for index in range(3)]
        for child in children:
            child.start()
        wrong = _echoed(client, "parent", 30)
        wrong += [line for _ in children for line in out.get(timeout=JOIN_S)]
        for child in children:
            child.join(JOIN_S)
            assert child.exitcode == 0, "a forked child hung or failed"
        assert wrong == []
    finally:
        client.close()
        server.close()


def test_a_fork_while_a_thread_writes_the_disk_cache_leaves_the_childs_cache_writable(tmp_path: Path) -> None:
    """Another thread is inside a disk cache write transaction when the parent forks: the fork waits for it, so
    the child's cache writes go through (an inherited connection mid-transaction held SQLite's write lock for good)."""
    store = Cache(tmp_path / "cache", timeout=2.0)._store
    inside = threading.Event()

    def change(current: str | None) -> str:
        inside.set()
        time.sleep(0.5)
        return "parent"

    holder = threading.Thread(target=lambda: store.update("held", change, expire=None, action="write"))
    holder.start()
    assert inside.wait(10)

    def work() -> None:
        store.update("child", lambda current: "child", expire=None, action="write")
        assert store.get("child") == "child"

    pid = _fork_running(work)
    holder.join(10)
    assert _exits_0(pid, JOIN_S), "the child's cache write failed"  # it gives up after the store's 2 s timeout at worst
    assert store.get("held") == "parent" and store.get("child") == "child"
