"""The asynchronous core: performs the flows' effects with awaits and asyncio.gather."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar, cast

from .._process import pid as this_pid
from .._shielded import to_the_end
from .._types import RESPONSES, Json, Route
from . import _flows as flows
from . import _raw_flows as raw_flows
from . import _responses_api as responses_api
from ._beam_steps import run_beam, step_options
from ._calibrate import refused_max_tokens
from ._call import Call, KeptHttp, keeping
from ._core import Core, advance, keep_http, replay
from ._lost import Retries, answered, note_lost
from ._relay import REST_READ_S, Relay
from ._responses import replay_response, whole_chunks
from ._streams import AsyncWholeStream, BlackBoxAsyncStream, answered_whole

T = TypeVar("T")
STORE_WORKERS = 4  # threads for async clients' store work: few, so they contend little with the event loop for the GIL
_workers: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child makes its own (threads don't cross a fork)
_workers_lock = threading.Lock()
SENDING = frozenset({"send", "open", "raw", "enter", "beam"})  # the effects that send a request upstream
CHECK_EVERY_S = 0.25  # while a call waits for its rate window, how often the `before_sending` check is asked
# A check its caller sets around a call (the proxy: that the client is still connected), awaited before the call's first
# request goes out, and while it waits for the rate window: its error ends the call unsent, its holds given back, logged as failed.
before_sending: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar("before_sending", default=None)


async def while_checked(work: Awaitable[T], check: Callable[[], Awaitable[None]], give_back: Callable[[T], Awaitable[object]]) -> T:
    """``work`` (a wait for the rate window), asking ``check`` every CHECK_EVERY_S meanwhile: once it raises (the proxy's
    client has gone), the wait ends and its error goes on, so a caller nobody waits for any more takes no room from
    those still waiting. Ended early (that error, or a cancel), an admission ``work`` took is given back."""
    waiting = asyncio.ensure_future(work)
    try:
        while not waiting.done():
            await asyncio.wait([waiting], timeout=CHECK_EVERY_S)
            if not waiting.done():
                await check()
    except BaseException:
        waiting.cancel()  # a pause for room ends at once; a store step under way runs on and gives back what it took
        while not waiting.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([waiting])
        if not waiting.cancelled() and waiting.exception() is None:  # admitted just before: the room back
            with contextlib.suppress(Exception):  # a store out of reach: the slot leaves with its window
                await to_the_end(give_back(waiting.result()))
        raise
    return waiting.result()


def _new_workers_lock() -> None:
    """In a forked child: a fresh lock (a parent thread may have held the old one at the fork, and it never releases it here)."""
    global _workers_lock
    _workers_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_workers_lock)


def store_workers() -> ThreadPoolExecutor:
    """The threads this process's async clients run their store work on (created on first use)."""
    with _workers_lock:
        pid = this_pid()
        if pid not in _workers:
            _workers.clear()
            _workers[pid] = ThreadPoolExecutor(max_workers=STORE_WORKERS, thread_name_prefix="blackbox-io")
        return _workers[pid]


class AsyncCore(Core):
    """Runs the calls of `blackbox_sdk.AsyncOpenAI`."""

    async def create(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`create` for chat or legacy completions, streamed or not (`valid`: a check reranking prefers, for `parse`)."""
        return await self._run(flows.create(self, route, params, overrides, valid))

    async def whole_raw(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None, wrap: Callable[[Any, Any], Any]) -> Any:
        """A raw view's whole `create`/`parse` through the whole pipeline, its result wrapped with the last HTTP response."""
        kept = KeptHttp()
        flow = responses_api.create(self, params, overrides, valid, kept) if route is RESPONSES else flows.create(self, route, params, overrides, valid, kept)
        return wrap(await self._run(flow), kept.response)

    def kept(self, kept: KeptHttp, raw_create: Callable[..., Any], params: Callable[[], Json]) -> Callable[[], Any]:
        """A request through the raw view that keeps its HTTP response (`params`: built as it goes)."""

        async def send() -> Any:
            return keep_http(kept, await raw_create(**params()))

        return send

    async def respond(self, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`responses.create`, whole or streamed (`valid`: a check reranking prefers, for `parse`)."""
        return await self._run(responses_api.create(self, params, overrides, valid))

    async def embed(self, params: Json, overrides: Json) -> Any:
        """`embeddings.create`."""
        return await self._run(flows.embed(self, params, overrides))

    async def raw_create(self, route: Route, target: Any, kwargs: Json) -> Any:
        """`with_raw_response.create`: the raw response."""
        return await self._run(raw_flows.raw_create(self, route, target, kwargs))

    @asynccontextmanager
    async def streaming_response(self, route: Route, target: Any, kwargs: Json) -> AsyncIterator[Any]:
        """`with_streaming_response.create`: openai's unread response, entered with retries; settled and logged on exit."""
        call, context, response = await self._run(raw_flows.open_raw(self, route, target, kwargs))
        early: BaseException | None = None
        try:
            yield response
        except BaseException as error:
            early = raw_flows.left_early(call, response, error)
            raise
        finally:
            try:
                await context.__aexit__(None, None, None)
            finally:  # a close that fails (or is cancelled) must not leave the reservation held
                await self._io(call, partial(raw_flows.settle_view, self, call, response, early))

    def stream_of(self, chunks: list[Any], response: Any, info: Any) -> BlackBoxAsyncStream[Any]:
        """A stream over chunks the SDK already holds."""
        return BlackBoxAsyncStream(_iterate(chunks), response=response or replay_response(), info=info)

    def live_stream(self, relay: Relay, live: Any, head: Any) -> BlackBoxAsyncStream[Any]:
        """A stream over an opened live stream, accounted by the relay."""
        return BlackBoxAsyncStream(self._live(relay, live, head), response=live.response, info=relay.call.info, abandon=partial(relay.abort, None))

    # ---------------------------------------------------------------- effects
    async def _run(self, flow: flows.Flow) -> Any:
        """Drive a flow: perform each effect it yields and hand back the result, or throw in the error."""
        done, value = advance(flow, None, None)
        while not done:
            try:
                result, error = await self._perform(value), None
            except BaseException as raised:  # the flow releases, logs and re-raises it
                result, error = None, raised
            done, value = advance(flow, result, error)
        return value

    async def _perform(self, effect: flows.Effect) -> Any:
        """One effect's I/O; before a call's first request, the caller's `before_sending` check."""
        check = before_sending.get()
        if check is not None and effect.kind in SENDING and effect.call.info.requests == 0:
            await check()
        if effect.kind == "io":
            return await self._io(effect.call, effect.request, counts=effect.counts, blocks=effect.blocks)
        if effect.kind == "gate":
            return await asyncio.sleep(flows.GATE_PAUSE_S)
        if effect.kind == "wait":
            return await effect.call.opts.cache.wait_for_async(effect.call.key, effect.seconds, want=effect.call.want)
        if effect.kind == "admit":
            limits = effect.call.opts.rate_limit
            admitting = limits.aadmit(key=effect.call.meter.key, model=effect.call.model, tokens=effect.tokens)
            return await (admitting if check is None or effect.call.info.requests else while_checked(admitting, check, limits.arelease))
        if effect.kind == "send":
            return list(await asyncio.gather(*(self._outcome(effect.call, request) for request in effect.requests)))
        if effect.kind == "open":
            return await self._open(effect.call, effect.request)
        if effect.kind == "raw":
            return await self._retry(effect.call, effect.request)
        if effect.kind == "enter":
            return await self._retry(effect.call, keeping(effect.request, lambda: _entered(effect.request())))
        return await self._beam(effect.call)

    async def _io(self, call: Call, work: Callable[[], T], *, counts: bool = False, blocks: bool = False) -> T:
        """Store, tokenizer or reranker work, or opening what an override names: in a worker thread when it
        may block (`blocks`, else `offloads`), so the loop never waits on it."""
        if not (blocks or self.offloads(call, counts)):
            return work()
        return await offloaded(work)

    async def _retry(self, call: Call, send: Callable[[], Awaitable[T]], resend: bool = True) -> T:
        """One request with the call's retry policy, counted on the call; the policy steps in only once the first attempt fails.
        A `max_tokens` the SDK chose that the endpoint refused goes again at once, once, as `max_completion_tokens`."""
        try:
            response = await send()
        except Exception as first:  # noqa: BLE001 - the same attempts, waits and final error as the policy alone: see `replay`
            if resend and refused_max_tokens(self, call, first):  # learnt: `send` builds its request anew
                return await self._retry(call, send, resend=False)
            retries = Retries(self, call, send)
            try:
                response = await call.opts.retry.acall(replay(first, retries.again_async), on_retry=partial(self._hold_retry, retries))
            except Exception as last:
                note_lost(self, call, last, send)
                raise
        call.info.requests += 1
        return response

    async def _hold_retry(self, retries: Retries, error: BaseException) -> None:
        """`Retries.hold` off the event loop (it may take a hold on the budget)."""
        await self._io(retries.call, partial(retries.hold, error), blocks=True)

    async def _beam(self, call: Call) -> Any:
        """The beam search in a thread of its own (its steps' store work needs the shared workers); its
        step calls run on this event loop. Cancelled, it cancels the step call running (which accounts
        for itself) and starts no other, then waits, without blocking the loop, for the search to end."""
        loop = asyncio.get_running_loop()
        overrides = step_options(call)
        stopped, steps = False, set[asyncio.Task[Any]]()

        async def step(route: Route, params: Json) -> Any:
            if stopped:
                raise asyncio.CancelledError
            task = cast("asyncio.Task[Any]", asyncio.current_task())
            steps.add(task)
            try:
                return await self._run(flows.create(self, route, params, overrides, step_of=call))
            finally:
                steps.discard(task)

        def create(route: Route, params: Json) -> Any:
            return asyncio.run_coroutine_threadsafe(step(route, params), loop).result()

        own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blackbox-beam")
        searching = loop.run_in_executor(own, run_beam, call, create)
        own.shutdown(wait=False)  # its one thread ends with the search: never wait for it on the loop
        try:
            return await asyncio.shield(searching)
        except asyncio.CancelledError:
            stopped = True
            for task in steps:
                task.cancel()
            with contextlib.suppress(Exception):  # the step's own CancelledError, as the search raised it
                await searching
            raise

    async def _outcome(self, call: Call, send: Callable[[], Awaitable[Any]]) -> Any:
        """One request of a "send": its answer, or the error it ended with, as it comes (`answered`: a
        cancel while siblings are out still charges this one)."""
        try:
            return answered(self, call, send, await self._retry(call, send))
        except Exception as error:  # noqa: BLE001 - handed back in place of the answer
            return answered(self, call, send, error)

    async def _open(self, call: Call, request: Callable[[], Awaitable[Any]]) -> tuple[Any, Any]:
        """Open a stream and read its first chunk, retrying only until that chunk has arrived."""

        async def attempt() -> tuple[Any, Any]:
            stream = await request()
            try:
                if answered_whole(stream):  # the server ignored `stream`: its one JSON body, as chunks
                    await stream.response.aread()
                    stream = AsyncWholeStream(whole_chunks(call, stream.response), stream.response)
                return stream, await anext(stream, None)
            except BaseException:
                await stream.close()
                raise

        return await self._retry(call, attempt)

    async def _live(self, relay: Relay, live: Any, head: Any) -> AsyncIterator[Any]:
        """Stored chunks, then live ones; accounted (off the loop) when the last stream ends, aborted otherwise."""
        try:
            try:
                for replayed in relay.replayed():
                    yield replayed
                while True:
                    async for chunk in _with_head(head, live):
                        passed = relay.pass_on(chunk)
                        if passed is not None:
                            yield passed
                    await live.close()
                    request = relay.next_stream()
                    if request is None:
                        break
                    with relay.opening():
                        live, head = await self._open(relay.call, request)
                tail = await self._io(relay.call, relay.finish, counts=True)
            except BaseException as error:
                if isinstance(error, GeneratorExit) and relay.answered():  # closed after the whole answer: read to its end
                    await self._ended(relay, live)
                try:  # closed first: the server stops generating, so counting what came (its tokenize route) waits on none
                    await live.close()
                finally:
                    await self._io(relay.call, partial(relay.abort, error), counts=True)
                raise
            for chunk in tail:
                yield chunk
        finally:
            await live.close()  # after the account: a close that raises must not leave the reservation held


    async def _ended(self, relay: Relay, live: Any) -> None:
        """Account a stream closed after its whole answer, with what the server sent after it (its usage); a cancel
        of that read still accounts the answer (the text counted) before it goes on up."""
        rest: list[Any] = []
        try:
            rest = await _rest(live)
        finally:
            await self._io(relay.call, partial(relay.ended, rest), counts=True)


async def offloaded(work: Callable[[], T]) -> T:
    """`work()` in a store worker thread, so the loop never waits on it; cancelled meanwhile, it still runs to its
    end first (`to_the_end`), so that what it took (a hold, a claim) is on the call for the flow to give back."""
    return await to_the_end(asyncio.get_running_loop().run_in_executor(store_workers(), contextvars.copy_context().run, work))


async def _with_head(head: Any, stream: Any) -> AsyncIterator[Any]:
    """The already-read first chunk, then the rest of the stream."""
    if head is not None:
        yield head
    async for chunk in stream:
        yield chunk


async def _rest(stream: Any) -> list[Any]:
    """What is left of a live stream whose answer has all come (its usage chunk), read for `REST_READ_S` at
    most; what was read if it fails or the server stalls (the read is cancelled; the caller closes the stream)."""
    rest: list[Any] = []

    async def read() -> None:
        async for chunk in stream:
            rest.append(chunk)

    with contextlib.suppress(Exception):  # the timeout included; a cancel of the caller's task is not
        await asyncio.wait_for(read(), REST_READ_S)  # not `asyncio.timeout`: Python 3.10 has none
    return rest


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    """An async iterator over a list."""
    for item in items:
        yield item


async def _entered(context: Any) -> tuple[Any, Any]:
    """Enter an async context manager: it and what it yields."""
    return context, await context.__aenter__()
