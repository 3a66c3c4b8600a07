"""The effects a flow yields whenever it needs I/O, and `io`, the one for work on the call's stores,
tokenizer or reranker; the sync and async cores perform them each in their own way. And the two signals a
flow raises to itself (CapReached, NowCached): never seen by the caller."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ._call import Call

Flow = Generator["Effect", Any, Any]
T = TypeVar("T")
EffectKind = Literal["admit", "gate", "wait", "send", "open", "raw", "enter", "beam", "io"]


@dataclass(frozen=True)
class Effect:
    """I/O a flow needs, each with the call's retries; what the driver sends back, by kind:
    "send" the responses to the requests (sent concurrently when several), in order;
    "open" (stream, first chunk) of a stream opened until its first chunk has arrived;
    "raw" the raw response; "enter" (context, unread response) of a streaming response;
    "beam" (result, step tally) of the beam search, each step a call through the same client;
    "admit" the rate limit's admission for `tokens` (waiting for room, or refused, by its policy);
    "wait" nothing, once the cache holds another caller's answer to the same request (single flight), or `seconds` passed;
    "gate" nothing, after a pause while another call calibrates the endpoint (`passes_gate`);
    "io" what its one function returns: work on the call's stores (cache, ledger, rate limit, call
    log), a server's tokenizer, the reranker, or opening what per-call options name, run where it is
    by the sync core and in a worker thread by the async one, so that an event loop never waits on
    SQLite, Redis or a model."""

    kind: EffectKind
    call: Call
    requests: tuple[Callable[[], Any], ...] = ()
    tokens: int = 0
    counts: bool = False  # an "io" effect that may count tokens (answers that came without usage)
    seconds: float = 0.0  # the longest a "wait" waits: what is left of the call's single-flight wait
    blocks: bool = False  # an "io" effect that may block whatever the call holds (opening a path an override names)

    @property
    def request(self) -> Callable[[], Any]:
        """The one request of a kind that sends one."""
        return self.requests[0]


def io(call: Call, work: Callable[[], T], *, counts: bool = False, blocks: bool = False) -> Generator[Effect, Any, T]:
    """`work()`, done as an "io" effect: off the event loop in an async client when the call's stores
    may block (`counts`: it may count tokens, which can ask the server's tokenizer even when the call
    has no store; `blocks`: always). With neither and no store, it is done here: both cores would run
    it where it is, and the trip through the core costs a plain call a few microseconds each time; so is all of a
    sync core's call's work (`Call.io_in_place`), which that core would run where it is too."""
    if call.io_in_place or not (blocks or counts or call.opts.has_stores):
        return work()
    result: T = yield Effect("io", call, (work,), counts=counts, blocks=blocks)
    return result


class CapReached(Exception):
    """An optional round (adaptive K's after the first) that the per-call cap can't hold: nothing was sent or held."""


class NowCached(Exception):
    """A call that waited to be admitted found its answer stored meanwhile (`found`): nothing was sent or held."""

    def __init__(self, found: Any) -> None:
        super().__init__("stored while this call waited")
        self.found = found
