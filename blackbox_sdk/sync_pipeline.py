"""The synchronous call path: fan-out over threads, live streams passed through as they come."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .candidates import CHAT, Candidate, Route, chunks_from_candidates, usage_chunk
from .pipeline import MAX_FANOUT_WORKERS, Call, Core, Json
from .streams import BlackBoxStream
from .validation import validate_chat, validate_completion

__all__ = ["SyncCore"]


class SyncCore(Core):
    """Runs the calls of `blackbox_sdk.OpenAI`."""

    def create(self, route: Route, params: Json, overrides: Json) -> Any:
        """`create` for chat or legacy completions, streamed or not."""
        (validate_chat if route is CHAT else validate_completion)(params)
        call = self.begin(route, params, overrides)
        if self.beaming(call):
            whole = self._beam(self.unstreamed(call))
        elif call.opts.reranker is not None and call.want > call.n:
            whole = self._complete(self.unstreamed(call))
        elif call.stream:
            return self._stream(call)
        else:
            return self._complete(call)
        if not call.stream:
            return whole
        return BlackBoxStream(iter(self.whole_stream_chunks(call, whole)), response=self.replay_response(), info=whole.blackbox)

    def _beam(self, call: Call) -> Any:
        """Adapter-guided beam search; each step is a call through this client, without reranking."""
        step_options = {**call.overrides, "reranker": None, "beam": None}
        result, tally = self.beam_run(call, lambda route, params: self.create(route, params, step_options))
        return self.beam_response(call, result, tally)

    def embed(self, params: Json, overrides: Json) -> Any:
        """`embeddings.create`: cached whole, budgeted on input tokens, retried, logged."""
        call = self.begin_embedding(params, overrides)
        stored = self.lookup_embedding(call)
        if stored is not None:
            return self.finish_embedding(call, None, stored)
        try:
            self.reserve(call, 1)
            response = self.send_with_retries(call, lambda: self.inner.embeddings.create(**params))
        except BaseException as error:
            self.fail(call, error)
            raise
        return self.finish_embedding(call, response, None)

    # ---------------------------------------------------------------- whole responses
    def send_with_retries(self, call: Call, send: Any) -> Any:
        """One request with the call's retry policy, counted on the call."""
        response = call.opts.retry.call(send, on_retry=lambda _: self.count_retry(call))
        call.info.requests += 1
        return response

    def _send(self, call: Call, count: int, max_tokens: int | None, seed: int | None) -> Any:
        """One chat/completions request for `count` choices."""
        params = self.request_params(call, count, max_tokens, seed)
        method = self.method(call.route)
        return self.send_with_retries(call, lambda: method(**params))

    def _fetch(self, call: Call, count: int, max_tokens: int | None) -> list[Any]:
        """`count` fresh choices: one request with n, then concurrent single requests for what it lacked."""
        seeds = self.seeds(call, count)
        if count > 1 and self.ignores_n and call.prompts == 1:
            return self._send_many(call, seeds, max_tokens)
        first = self._send(call, count, max_tokens, seeds[0])
        got = len(first.choices)
        if count > 1 and call.prompts == 1:
            self.ignores_n = got < count
        if got >= count or got == 0 or call.prompts > 1:
            return [first]
        return [first] + self._send_many(call, seeds[got:count], max_tokens)

    def _send_many(self, call: Call, seeds: list[int | None], max_tokens: int | None) -> list[Any]:
        """One single-choice request per seed, concurrently."""
        with ThreadPoolExecutor(max_workers=min(MAX_FANOUT_WORKERS, len(seeds))) as pool:
            return list(pool.map(lambda seed: self._send(call, 1, max_tokens, seed), seeds))

    def _complete(self, call: Call) -> Any:
        """A whole response: cached candidates first, the rest fetched."""
        stored = self.lookup(call)
        missing = call.want - len(stored)
        if missing <= 0:
            return self.finish(call, stored, [], None)
        try:
            count, max_tokens = self.reserve(call, missing)
            responses = self._fetch(call, count, max_tokens)
            fresh, usage = self.pieces(call, [r.to_dict() for r in responses])
        except BaseException as error:
            self.fail(call, error)
            raise
        return self.finish(call, stored, fresh, usage, original=responses[0] if len(responses) == 1 else None)

    # ---------------------------------------------------------------- streams
    def _open(self, call: Call, count: int, max_tokens: int | None, seed: int | None) -> tuple[Any, Any]:
        """Open a stream and read its first chunk, retrying only until that chunk has arrived."""
        params = self.request_params(call, count, max_tokens, seed)
        method = self.method(call.route)

        def attempt() -> tuple[Any, Any]:
            stream = method(**params)
            try:
                return stream, next(stream, None)
            except BaseException:
                stream.close()
                raise

        return self.send_with_retries(call, attempt)

    def _stream(self, call: Call) -> BlackBoxStream[Any]:
        """Stored chunks replayed, then live chunks as they come, fanned out when `n` was ignored."""
        stored = self.lookup(call)
        missing = call.want - len(stored)
        if missing <= 0:
            return BlackBoxStream(self._replay(call, stored), response=self.replay_response(), info=call.info)
        try:
            count, max_tokens = self.reserve(call, missing)
            seeds = self.seeds(call, count)
            live, head = self._open(call, count, max_tokens, seeds[0])
        except BaseException as error:
            self.fail(call, error)
            raise
        chunks = self._live(call, stored, (live, head), seeds, max_tokens)
        return BlackBoxStream(chunks, response=live.response, info=call.info)

    def _replay(self, call: Call, stored: list[Candidate]) -> Iterator[Any]:
        """A stream served wholly from the cache (accounted before the first chunk is read)."""
        return (self.chunk(call, data) for data in self.replay(call, stored))

    def _live(self, call: Call, stored: list[Candidate], opened: tuple[Any, Any], seeds: list[int | None], max_tokens: int | None) -> Iterator[Any]:
        """Stored chunks, then live ones; accounting when the last stream ends, an abort otherwise."""
        collected: list[Json] = []
        usages: list[Json] = []
        live, head = opened
        done, failure = False, None
        try:
            for data in chunks_from_candidates(call.route, stored):
                yield self.chunk(call, data)
            got = 0
            while True:
                indices: set[int] = set()
                for chunk in _with_head(head, live):
                    data, same = self.relay(chunk, len(stored) + got, usages, indices)
                    if data is not None:
                        collected.append(data)
                        yield chunk if same else self.chunk(call, data)
                live.close()
                got += len(indices)
                if got >= len(seeds) or not indices:
                    break
                self.ignores_n = True
                live, head = self._open(call, 1, max_tokens, seeds[got])
            fresh, usage = self.stream_pieces(call, collected, usages)
            everything, total = self.account(call, stored, fresh, usage)
            call.info.chosen = list(range(len(everything)))
            self.record(call, everything, total, None)
            done = True
            if call.include_usage:
                yield self.chunk(call, usage_chunk(call.route, collected[0] if collected else stored[0].meta, total))
        except BaseException as error:
            failure = error
            raise
        finally:
            live.close()
            if not done:
                self.abort(call, collected, usages, failure)


def _with_head(head: Any, stream: Any) -> Iterator[Any]:
    """The already-read first chunk, then the rest of the stream."""
    if head is not None:
        yield head
    yield from stream
