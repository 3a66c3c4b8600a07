"""The account of a live stream while its chunks pass to the caller: stored chunks first, live
ones re-indexed after them, more streams opened when the server ignored `n`, settled and logged
at the end, or charged for what arrived when the stream did not end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._types import Json, usage_to_charge
from ._calibrate import warn_ignored_cap
from ._call import Call
from ._candidates import Candidate, chunks_from_candidates, generated, split_chunks
from ._core import Core
from ._responses import chunk, finish_stream

# How long a stream its caller left once the whole answer had come is read on for its usage (sync and async):
# a server that stalls after its finish_reason (no usage, no [DONE]) would hold the caller's `break` or
# `close()` for the client's read timeout (openai's: 600 s). Then what arrived settles it, the text counted.
REST_READ_S = 2.0


class Relay:
    """One streamed call's running account: what was collected, and what to open next."""

    def __init__(self, core: Core, call: Call, stored: list[Candidate], seeds: list[int | None], max_tokens: int | None) -> None:
        self.core, self.call, self.stored = core, call, stored
        self.seeds, self.max_tokens = seeds, max_tokens
        self.collected: list[Json] = []  # every live chunk but the usage's, with choices re-indexed
        self.usages: list[Json] = []  # each ended stream's usage, summed at the end
        self.running: Json | None = None  # the current stream's latest usage: a running total (vLLM) or its one count
        self.got = 0  # choices received from the streams that ended
        self.indices: set[int] = set()  # choice indices seen in the current stream
        self.done = False

    def replayed(self) -> list[Any]:
        """The stored candidates' chunks, which go out before any live chunk."""
        return [chunk(self.call, data) for data in chunks_from_candidates(self.call.route, self.stored)]

    def pass_on(self, live: Any) -> Any | None:
        """The chunk to hand the caller for a live chunk: None for a usage-only chunk (held back: the
        call's own goes last); other chunks without choices (Azure's prompt filter results) as they came,
        collected to be stored with the choices. The `"usage": null` of a chunk whose usage the SDK alone asked
        for is left out, as it is of the chunks openai's client yields for the caller's request."""
        data = live.to_dict(warnings=False)
        if "usage" in data and data["usage"] is None and self.call.usage_asked and not self.call.include_usage:
            del data["usage"]
            live = chunk(self.call, data)
        usage = data.get("usage")
        if usage:
            self.running = usage
        if not data.get("choices"):
            if usage:
                return None
            self.collected.append(data)
            return live
        offset = len(self.stored) + self.got
        for choice in data["choices"]:
            choice["index"] = offset + int(choice.get("index") or 0)
            self.indices.add(choice["index"])
        self.collected.append(data)
        return live if offset == 0 else chunk(self.call, data)

    def ended_usages(self) -> list[Json]:
        """One usage per stream so far, the current one's latest included."""
        return self.usages + ([self.running] if self.running else [])

    def next_stream(self) -> Callable[[], Any] | None:
        """After a live stream ended: the request for the next one (the server ignored `n`), or None."""
        seen, self.indices = len(self.indices), set()
        self.usages, self.running = self.ended_usages(), None
        self.got += seen
        if self.got >= len(self.seeds) or not seen:
            return None
        self.core.ignores_n = True
        return self.core.sender(self.call, 1, self.max_tokens, self.seeds[self.got])

    def answered(self) -> bool:
        """Whether every choice owed has come with its finish_reason and the stream is not yet accounted: a caller
        that stops reading now (openai's stream helper raising `LengthFinishReasonError`) holds the whole answer."""
        if self.done or self.got + len(self.indices) < len(self.seeds):
            return False
        fresh = split_chunks(self.call.route, self.collected, {})
        return bool(fresh) and all(candidate.choice.get("finish_reason") is not None for candidate in fresh)

    def ended(self, rest: list[Any]) -> None:
        """A stream the caller stopped reading once its whole answer had come: the rest the server sent (its
        usage) within `REST_READ_S` taken in, then settled, stored and logged as one read to its end (without
        the usage, the text received is counted; the answer is whole all the same, every choice finished)."""
        for live in rest:
            self.pass_on(live)
        self.finish()

    def _pieces(self) -> tuple[list[Candidate], Json]:
        """The collected chunks as candidates, with the server's usage or a count."""
        per_choice = split_chunks(self.call.route, self.collected, {})
        usage = self.core.count.of_stream(self.call, self.ended_usages(), [generated(self.call.route, c.choice) for c in per_choice])
        warn_ignored_cap(self.core, self.call, usage, len(per_choice))  # the streams' usage, over their choices
        return split_chunks(self.call.route, self.collected, usage), usage

    def finish(self) -> list[Any]:
        """Settle, store and log the finished stream; the usage chunk when the caller asked for one.
        A stream whose server stopped before every choice had a finish_reason (a connection closed
        early) is not complete: it is charged for what arrived, never cached, and logged as cut."""
        fresh, usage = self._pieces()
        if not fresh and not self.stored:
            self.abort(ConnectionError("the server's stream ended without a choice"))
            return []
        if any(candidate.choice.get("finish_reason") is None for candidate in fresh):
            self.abort(ConnectionError("the server ended the stream before every choice had a finish_reason"))
            return []
        tail = finish_stream(self.core, self.call, self.stored, fresh, usage, (fresh or self.stored)[0].meta)
        self.done = True
        return tail

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Around the opening of a later stream (the server ignored `n`): its request is out until the stream opens, so
        an interrupt meanwhile (a cancelled task, Ctrl-C) leaves its prompt to charge; an error brings it back."""
        self.call.in_flight = 1
        try:
            yield
        except Exception:
            self.call.in_flight = 0
            raise
        self.call.in_flight = 0

    def _unreported(self) -> list[Json]:
        """What the server bills beyond the usage its ended streams reported, counted: the stream being read when
        earlier ones reported theirs (its prompt, the text that came), and the prompt of a request still out."""
        counts, call = [], self.call
        if self.usages and self.running is None and call.info.requests > len(self.usages):
            current = [data for data in self.collected if any(int(c.get("index") or 0) in self.indices for c in data.get("choices") or [])]
            texts = [generated(call.route, candidate.choice) for candidate in split_chunks(call.route, current, {})]
            counts.append(self.core.count.counted(call, texts, call.info.requests - len(self.usages)))
        if call.in_flight:
            counts.append(self.core.count.counted(call, [], call.in_flight))
            call.in_flight = 0
        return counts

    @contextmanager
    def accounting(self) -> Iterator[None]:
        """Around the passing of a stream: however it ends but finished, it is aborted (charged for what arrived)."""
        try:
            yield
        except BaseException as error:
            self.abort(error)
            raise
        self.abort(None)  # nothing to do once finished

    def abort(self, error: BaseException | None) -> None:
        """A stream that did not end normally: charge what arrived (at least the prompt of what was
        sent) and the answers lost, store nothing, log the error with the usage charged; once."""
        if self.done:
            return
        self.done = True
        usage = self._pieces()[1] if self.collected or self.ended_usages() or self.call.info.requests else None
        unreported = self._unreported()
        if unreported:
            usage = usage_to_charge([usage or {}, *unreported])
        if self.call.lost:  # a later stream whose answer was lost (`_lost`): its worst case too
            usage, self.call.lost = usage_to_charge([usage or {}, *self.call.lost]), []
        if usage is not None:
            self.core.settle(self.call, usage)
        if isinstance(error, GeneratorExit) or error is None:
            error = RuntimeError("stream closed before its end")
        else:  # the server's fault, not the caller's: a stream that ends quietly still says it was cut
            self.call.info.error = f"{type(error).__name__}: {error}"
        self.core.fail(self.call, error, usage)
