"""The asynchronous core: performs the flows' effects with awaits and asyncio.gather."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .._types import Json, Route
from . import _flows as flows
from . import _responses_api as responses_api
from ._beam_steps import run_beam, step_options
from ._call import Call, KeptHttp
from ._core import SINGLE_FLIGHT_WAIT_S, Core, advance, keep_http, replay
from ._relay import Relay
from ._responses import replay_response
from ._streams import BlackBoxAsyncStream

T = TypeVar("T")


class AsyncCore(Core):
    """Runs the calls of `blackbox_sdk.AsyncOpenAI`."""

    async def create(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`create` for chat or legacy completions, streamed or not (`valid`: a check reranking prefers, for `parse`)."""
        return await self._run(flows.create(self, route, params, overrides, valid))

    async def whole_raw(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None, wrap: Callable[[Any, Any], Any]) -> Any:
        """A raw view's whole `create`/`parse` through the whole pipeline, its result wrapped with the last HTTP response."""
        kept = KeptHttp()
        return wrap(await self._run(flows.create(self, route, params, overrides, valid, kept)), kept.response)

    def kept(self, kept: KeptHttp, raw_create: Callable[..., Any], params: Json) -> Callable[[], Any]:
        """A request through the raw view that keeps its HTTP response."""

        async def send() -> Any:
            return keep_http(kept, await raw_create(**params))

        return send

    async def respond(self, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`responses.create`, whole or streamed (`valid`: a check reranking prefers, for `parse`)."""
        return await self._run(responses_api.create(self, params, overrides, valid))

    async def embed(self, params: Json, overrides: Json) -> Any:
        """`embeddings.create`."""
        return await self._run(flows.embed(self, params, overrides))

    async def raw_create(self, route: Route, target: Any, kwargs: Json) -> Any:
        """`with_raw_response.create`: the raw response."""
        return await self._run(flows.raw_create(self, route, target, kwargs))

    @asynccontextmanager
    async def streaming_response(self, route: Route, target: Any, kwargs: Json) -> AsyncIterator[Any]:
        """`with_streaming_response.create`: openai's unread response, entered with retries; settled and logged on exit."""
        call, context, response = await self._run(flows.open_raw(self, route, target, kwargs))
        try:
            yield response
        finally:
            await context.__aexit__(None, None, None)
            flows.settle_raw(self, call, None)

    def stream_of(self, chunks: list[Any], response: Any, info: Any) -> BlackBoxAsyncStream[Any]:
        """A stream over chunks the SDK already holds."""
        return BlackBoxAsyncStream(_iterate(chunks), response=response or replay_response(), info=info)

    def live_stream(self, relay: Relay, live: Any, head: Any) -> BlackBoxAsyncStream[Any]:
        """A stream over an opened live stream, accounted by the relay."""
        return BlackBoxAsyncStream(self._live(relay, live, head), response=live.response, info=relay.call.info)

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
        """One effect's I/O."""
        if effect.kind == "gate":
            return await asyncio.sleep(flows.GATE_PAUSE_S)
        if effect.kind == "wait":
            return await effect.call.opts.cache.wait_for_async(effect.call.key, SINGLE_FLIGHT_WAIT_S, want=effect.call.want)
        if effect.kind == "admit":
            return await effect.call.opts.rate_limit.aadmit(key=effect.call.opts.budget_key, model=effect.call.model, tokens=effect.tokens)
        if effect.kind == "send":
            return list(await asyncio.gather(*(self._retry(effect.call, request) for request in effect.requests)))
        if effect.kind == "open":
            return await self._open(effect.call, effect.request)
        if effect.kind == "raw":
            return await self._retry(effect.call, effect.request)
        if effect.kind == "enter":
            return await self._retry(effect.call, lambda: _entered(effect.request()))
        return await self._beam(effect.call)

    async def _retry(self, call: Call, send: Callable[[], Awaitable[T]]) -> T:
        """One request with the call's retry policy, counted on the call; the policy steps in only once the first attempt fails."""
        try:
            response = await send()
        except Exception as first:  # noqa: BLE001 - the same attempts, waits and final error as the policy alone: see `replay`
            response = await call.opts.retry.acall(replay(first, send), on_retry=lambda _: self.count_retry(call))
        call.info.requests += 1
        return response

    async def _beam(self, call: Call) -> Any:
        """The beam search in a worker thread; its step calls run on this event loop."""
        loop = asyncio.get_running_loop()
        overrides = step_options(call)

        def create(route: Route, params: Json) -> Any:
            return asyncio.run_coroutine_threadsafe(self.create(route, params, overrides), loop).result()

        return await asyncio.to_thread(run_beam, call, create)

    async def _open(self, call: Call, request: Callable[[], Awaitable[Any]]) -> tuple[Any, Any]:
        """Open a stream and read its first chunk, retrying only until that chunk has arrived."""

        async def attempt() -> tuple[Any, Any]:
            stream = await request()
            try:
                return stream, await anext(stream, None)
            except BaseException:
                await stream.close()
                raise

        return await self._retry(call, attempt)

    async def _live(self, relay: Relay, live: Any, head: Any) -> AsyncIterator[Any]:
        """Stored chunks, then live ones; accounted when the last stream ends, aborted otherwise."""
        try:
            with relay.accounting():
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
                    live, head = await self._open(relay.call, request)
                for tail in relay.finish():
                    yield tail
        finally:
            await live.close()  # after the account: a close that raises must not leave the reservation held


async def _with_head(head: Any, stream: Any) -> AsyncIterator[Any]:
    """The already-read first chunk, then the rest of the stream."""
    if head is not None:
        yield head
    async for chunk in stream:
        yield chunk


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    """An async iterator over a list."""
    for item in items:
        yield item


async def _entered(context: Any) -> tuple[Any, Any]:
    """Enter an async context manager: it and what it yields."""
    return context, await context.__aenter__()
