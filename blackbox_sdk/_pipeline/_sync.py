"""The synchronous core: performs the flows' effects with blocking calls and threads."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

from .._types import RESPONSES, Json, Route
from . import _flows as flows
from . import _raw_flows as raw_flows
from . import _responses_api as responses_api
from ._beam_steps import run_beam, step_options
from ._calibrate import refused_max_tokens
from ._call import Call, KeptHttp, keeping
from ._core import MAX_FANOUT_WORKERS, Core, advance, keep_http, replay
from ._lost import Retries, answered, note_lost
from ._relay import REST_READ_S, Relay
from ._responses import replay_response, whole_chunks
from ._streams import BlackBoxStream, WholeStream, answered_whole


class SyncCore(Core):
    """Runs the calls of `blackbox_sdk.OpenAI`."""

    io_in_place = True  # blocking work blocks the caller's thread either way: no trip through `_perform` for it

    def create(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`create` for chat or legacy completions, streamed or not (`valid`: a check reranking prefers, for `parse`)."""
        return self._run(flows.create(self, route, params, overrides, valid))

    def whole_raw(self, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None, wrap: Callable[[Any, Any], Any]) -> Any:
        """A raw view's whole `create`/`parse` through the whole pipeline, its result wrapped with the last HTTP response."""
        kept = KeptHttp()
        flow = responses_api.create(self, params, overrides, valid, kept) if route is RESPONSES else flows.create(self, route, params, overrides, valid, kept)
        return wrap(self._run(flow), kept.response)

    def kept(self, kept: KeptHttp, raw_create: Callable[..., Any], params: Callable[[], Json]) -> Callable[[], Any]:
        """A request through the raw view that keeps its HTTP response (`params`: built as it goes)."""
        return lambda: keep_http(kept, raw_create(**params()))

    def respond(self, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None) -> Any:
        """`responses.create`, whole or streamed (`valid`: a check reranking prefers, for `parse`)."""
        return self._run(responses_api.create(self, params, overrides, valid))

    def embed(self, params: Json, overrides: Json) -> Any:
        """`embeddings.create`."""
        return self._run(flows.embed(self, params, overrides))

    def raw_create(self, route: Route, target: Any, kwargs: Json) -> Any:
        """`with_raw_response.create`: the raw response."""
        return self._run(raw_flows.raw_create(self, route, target, kwargs))

    @contextmanager
    def streaming_response(self, route: Route, target: Any, kwargs: Json) -> Iterator[Any]:
        """`with_streaming_response.create`: openai's unread response, entered with retries; settled and logged on exit."""
        call, context, response = self._run(raw_flows.open_raw(self, route, target, kwargs))
        early: BaseException | None = None
        try:
            yield response
        except BaseException as error:
            early = raw_flows.left_early(call, response, error)
            raise
        finally:
            try:
                context.__exit__(None, None, None)
            finally:  # a close that fails must not leave the reservation held
                raw_flows.settle_view(self, call, response, early)

    def stream_of(self, chunks: list[Any], response: Any, info: Any) -> BlackBoxStream[Any]:
        """A stream over chunks the SDK already holds."""
        return BlackBoxStream(iter(chunks), response=response or replay_response(), info=info)

    def live_stream(self, relay: Relay, live: Any, head: Any) -> BlackBoxStream[Any]:
        """A stream over an opened live stream, accounted by the relay."""
        return BlackBoxStream(self._live(relay, live, head), response=live.response, info=relay.call.info, abandon=partial(relay.abort, None))

    # ---------------------------------------------------------------- effects
    def _run(self, flow: flows.Flow) -> Any:
        """Drive a flow: perform each effect it yields and hand back the result, or throw in the error.
        The result leaves no reference behind in this frame, which outlives the call when a reference cycle
        holds a frame it called (an exception kept in a library): a stream returned is freed, and accounted,
        as soon as its caller lets it go (a `for` left by `break`), not at the next garbage collection."""
        done, value = advance(flow, None, None)
        while not done:
            try:
                result, error = self._perform(value), None
            except BaseException as raised:  # the flow releases, logs and re-raises it
                result, error = None, raised
            done, value = advance(flow, result, error)
        try:
            return value
        finally:
            del value

    def _perform(self, effect: flows.Effect) -> Any:
        """One effect's I/O."""
        if effect.kind == "gate":
            return time.sleep(flows.GATE_PAUSE_S)
        if effect.kind == "wait":
            return effect.call.opts.cache.wait_for(effect.call.key, effect.seconds, want=effect.call.want)
        if effect.kind == "admit":
            return effect.call.opts.rate_limit.admit(key=effect.call.meter.key, model=effect.call.model, tokens=effect.tokens)
        if effect.kind == "send":
            if len(effect.requests) == 1:
                return [self._outcome(effect.call, effect.requests[0])]
            return self._fan_out(effect.call, effect.requests)
        if effect.kind == "open":
            return self._open(effect.call, effect.request)
        if effect.kind == "raw":
            return self._retry(effect.call, effect.request)
        if effect.kind == "enter":
            return self._retry(effect.call, keeping(effect.request, lambda: _entered(effect.request())))
        overrides = step_options(effect.call)
        return run_beam(effect.call, lambda route, params: self._run(flows.create(self, route, params, overrides, step_of=effect.call)))

    def _retry(self, call: Call, send: Callable[[], Any], resend: bool = True) -> Any:
        """One request with the call's retry policy, counted on the call; the policy steps in only once the first attempt fails.
        A `max_tokens` the SDK chose that the endpoint refused goes again at once, once, as `max_completion_tokens`."""
        try:
            response = send()
        except Exception as first:  # noqa: BLE001 - the same attempts, waits and final error as the policy alone: see `replay`
            if resend and refused_max_tokens(self, call, first):  # learnt: `send` builds its request anew
                return self._retry(call, send, resend=False)
            retries = Retries(self, call, send)
            try:
                response = call.opts.retry.call(replay(first, retries.again), on_retry=retries.hold)
            except Exception as last:
                note_lost(self, call, last, send)
                raise
        call.info.requests += 1
        return response

    def _outcome(self, call: Call, send: Callable[[], Any]) -> Any:
        """One request of a "send": its answer, or the error it ended with, as it comes (`answered`: an
        interrupt while siblings are out still charges this one)."""
        try:
            return answered(self, call, send, self._retry(call, send))
        except Exception as error:  # noqa: BLE001 - handed back in place of the answer
            return answered(self, call, send, error)

    def _fan_out(self, call: Call, requests: Sequence[Callable[[], Any]]) -> list[Any]:
        """A "send"'s requests sent together, on daemon threads (at most MAX_FANOUT_WORKERS): their outcomes in order.
        An interrupt (Ctrl-C) surfaces at once, not once every request is answered: the requests out stay counted on
        the call (its failure charges them), those not yet sent are not, and what comes back later changes nothing."""
        pending = deque((Future[Any](), request) for request in requests)
        futures = [future for future, _ in pending]

        def work() -> None:
            while pending:
                try:
                    future, request = pending.popleft()
                except IndexError:  # another thread took the last one
                    return
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self._outcome(call, request))
                    except BaseException as error:  # noqa: BLE001 - raised in the caller's thread, as a thread pool does
                        future.set_exception(error)

        for _ in range(min(MAX_FANOUT_WORKERS, len(futures))):
            threading.Thread(target=work, name="blackbox-fan-out", daemon=True).start()
        try:
            return [future.result() for future in futures]
        except BaseException:
            with self._lock:
                call.cut_off = True
                call.in_flight -= sum(future.cancel() for future in futures)  # never sent: the server has nothing to bill
            raise

    def _open(self, call: Call, request: Callable[[], Any]) -> tuple[Any, Any]:
        """Open a stream and read its first chunk, retrying only until that chunk has arrived."""

        def attempt() -> tuple[Any, Any]:
            stream = request()
            try:
                if answered_whole(stream):  # the server ignored `stream`: its one JSON body, as chunks
                    stream.response.read()
                    stream = WholeStream(whole_chunks(call, stream.response), stream.response)
                return stream, next(stream, None)
            except BaseException:
                stream.close()
                raise

        return self._retry(call, attempt)

    def _live(self, relay: Relay, live: Any, head: Any) -> Iterator[Any]:
        """Stored chunks, then live ones; accounted when the last stream ends, aborted otherwise."""
        try:
            with relay.accounting():
                try:
                    yield from relay.replayed()
                    while True:
                        for chunk in _with_head(head, live):
                            passed = relay.pass_on(chunk)
                            if passed is not None:
                                yield passed
                        live.close()
                        request = relay.next_stream()
                        if request is None:
                            break
                        with relay.opening():
                            live, head = self._open(relay.call, request)
                    yield from relay.finish()
                except BaseException as error:
                    if isinstance(error, GeneratorExit) and relay.answered():  # closed after the whole answer: read to its end
                        relay.ended(_rest(live))
                    live.close()  # before the account: the server stops generating, so counting what came waits on none
                    raise
        finally:
            live.close()  # after the account: a close that raises must not leave the reservation held


def _with_head(head: Any, stream: Any) -> Iterator[Any]:
    """The already-read first chunk, then the rest of the stream."""
    if head is not None:
        yield head
    yield from stream


def _rest(stream: Any) -> list[Any]:
    """What is left of a live stream whose answer has all come (its usage chunk), read for `REST_READ_S` at
    most (then its connection is shut, which ends a read the server stalls); what was read if it fails."""
    rest: list[Any] = []
    until, deadline = time.monotonic() + REST_READ_S, _Deadline(stream)
    try:
        with suppress(Exception):
            for chunk in stream:
                rest.append(chunk)
                if time.monotonic() >= until:  # a transport with no socket to shut, sending on and on
                    break
    finally:
        deadline.end()
    return rest


class _Deadline:
    """Shuts a stream's HTTP/1.1 connection once `REST_READ_S` have passed, unless the read ended first (a
    blocking read has no other way out before its read timeout; an idle pooled connection found shut is
    discarded by the pool)."""

    def __init__(self, stream: Any) -> None:
        response = getattr(stream, "response", None)
        network = getattr(response, "extensions", {}).get("network_stream")
        found = network.get_extra_info("socket") if network is not None else None
        self.sock: socket.socket | None = found if isinstance(found, socket.socket) else None
        self.lock, self.over = threading.Lock(), False
        self.timer = threading.Timer(REST_READ_S, self.shut)
        self.timer.daemon = True
        if self.sock is not None:
            self.timer.start()

    def shut(self) -> None:
        """Time is up: end the read (the socket's own `shutdown`, not TLS's, which would unwrap under the reader)."""
        with self.lock:
            if not self.over and self.sock is not None:
                with suppress(OSError):
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            self.over = True

    def end(self) -> None:
        """The read ended: nothing to shut (the timer's thread stops now)."""
        with self.lock:
            self.over = True
        self.timer.cancel()
        self.timer.cancel()


def _entered(context: Any) -> tuple[Any, Any]:
    """Enter a context manager: it and what it yields."""
    return context, context.__enter__()
