"""Every call as a flow written once: a generator that makes each decision and yields an effect
whenever it needs I/O (send, open a stream, run a beam search). The sync and async cores drive
the same flows and differ only in how they perform the effects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from .._adaptive import FIRST_ROUND, next_round, pick_share
from .._exceptions import BudgetExceededError, RateLimitExceededError
from .._logging import logger
from .._options import needs_opening
from .._types import EMBEDDINGS, Json, Route, add_usage
from ._beam_steps import beam_response, spent_on_steps
from ._calibrate import gate_refusal, passes_gate, ungate
from ._call import Call, KeptHttp
from ._candidates import Candidate
from ._core import SINGLE_FLIGHT_WAIT_S, Core, checked, give_room_back, prepare
from ._effects import CapReached, Effect, Flow, NowCached, T, io
from ._relay import Relay
from ._rerank import confidence_of
from ._responses import (
    finish,
    finish_embedding,
    finish_untouched,
    look,
    look_embedding,
    lookup_embedding,
    pay,
    pieces,
    replay,
    score,
    stored_enough,
    texts,
    unstreamed,
    untouched,
    whole_stream_chunks,
)

GATE_PAUSE_S = 0.05  # between looks at an uncalibrated endpoint's gate
FLIGHT_LOOKS = 8  # the most looks a single-flight waiter takes while fetchers end with no answer, before it sends
CALIBRATION_WAIT_S = 120.0  # the longest a call waits for the endpoint's first answer before it is refused


def last(core: Core, call: Call, work: Callable[[], T], counts: bool = False) -> Generator[Effect, Any, T]:
    """`work()` as the call's last "io" effect (settle, rerank, log): a failure there, such as a reranker
    that misscores, or an interrupt (Ctrl-C, a cancelled task), is logged like any other, since the answers
    are paid for by then; a success is logged once the work has ended (`Call.defer`). `counts`: as `io`'s."""
    call.deferring = True
    try:
        result = yield from io(call, work, counts=counts)
        call.deferring = False
        if call.unrecorded is not None:
            yield from io(call, partial(core.record, call, *call.unrecorded))
    except BaseException as error:
        call.deferring = False
        yield from failed(core, call, error)
        raise
    return result


def failed(core: Core, call: Call, error: BaseException, usage: Json | None = None) -> Flow:
    """Release what the call holds and log its failure, with the `usage` it had (a beam search's
    steps'); the caller re-raises."""
    if isinstance(error, GeneratorExit):  # the flow is being closed: it can't yield any more
        core.fail(call, error, usage)
        return
    yield from io(call, partial(core.fail, call, error, usage))


def sending(effect: Effect) -> Flow:
    """A sending effect, its requests in flight on the call until they came back (a "send"'s one by one,
    as the core hands each back): an interrupt meanwhile (a cancelled task, Ctrl-C) leaves those still
    out counted, and the call's failure charges their prompts (`charge_sent`)."""
    call = effect.call
    call.in_flight = len(effect.requests)
    try:
        result = yield effect
    except Exception:  # the request came back with its error
        call.in_flight = 0
        raise
    call.in_flight = 0
    return result


def sent(call: Call, requests: tuple[Callable[[], Any], ...]) -> Flow:
    """Send the requests together (the core hands back each answer or its error, and keeps each answer
    on the call until it is settled: a failure charges them), then raise the first error."""
    outcomes = yield from sending(Effect("send", call, requests))
    failure = next((outcome for outcome in outcomes if isinstance(outcome, Exception)), None)
    if failure is not None:
        raise failure
    return outcomes


def guarded(core: Core, effect: Effect) -> Flow:
    """One effect whose failure releases the call's reservation and logs it before it propagates."""
    try:
        return (yield from sending(effect))
    except BaseException as error:
        yield from failed(core, effect.call, error)
        raise


def admit(core: Core, call: Call, count: int, recheck: Callable[[], Any] | None = None) -> Flow:
    """Pass the call's rate limit (if any), then the calibration gate, and reserve the worst case of
    `count` answers: (count, max output tokens) as the budget granted them. A call that waited at either
    looks at the cache again first (`recheck`: what is stored, or None): an identical call may have stored
    its answer meanwhile, which then serves it (NowCached: nothing sent or held)."""
    waited = False
    if call.opts.rate_limit is not None:
        tokens = yield from io(call, partial(core.admission_tokens, call, count))  # may ask the server's tokenizer
        call.admission = yield Effect("admit", call, tokens=tokens)
        waited = call.admission.waited_s > 0
    paused = 0.0
    while True:
        granted = yield from io(call, partial(reserve_past_gate, core, call, count, recheck if waited else None))
        if granted is not None:
            return granted
        if paused >= CALIBRATION_WAIT_S:
            raise RateLimitExceededError(gate_refusal(core, call), limit=1, scope="calibration", retry_after=GATE_PAUSE_S)
        yield Effect("gate", call)
        paused += GATE_PAUSE_S
        waited = True


def reserve_past_gate(core: Core, call: Call, count: int, recheck: Callable[[], Any] | None = None) -> tuple[int, int | None] | None:
    """The call's reservation once it passes the calibration gate; None while another call holds the gate.
    Past the gate, what `recheck` finds stored is raised as NowCached, the gate, rate admission and any claim given back."""
    if not passes_gate(core, call):
        return None
    found = recheck() if recheck is not None else None
    if found is not None:
        let_round_go(core, call)
        core.unclaim(call)
        raise NowCached(found)
    return core.reserve(call, count)


def single_flight(core: Core, call: Call, look: Callable[[], tuple[T, bool]], again: Callable[[], T], enough: Callable[[T], bool]) -> Generator[Effect, Any, T]:
    """What is stored for the call; when it lacks what the call wants and an identical request is already in flight (here
    or on another host), that answer is waited for first, so that it is sent once. A fetcher that ended with no answer
    (failed, cancelled) leaves its waiters to look again: one claims and sends, the rest wait on it, until
    SINGLE_FLIGHT_WAIT_S is up (or FLIGHT_LOOKS fetchers ended so). `look`: what is stored and whether another fetches
    it (else this call claims it); `again`: what is stored after a wait; `enough`: whether that serves the call."""
    try:
        deadline = time.monotonic() + SINGLE_FLIGHT_WAIT_S
        for _ in range(FLIGHT_LOOKS):
            found, in_flight = yield from io(call, look)
            if not in_flight:
                return found
            yield Effect("wait", call, seconds=max(0.0, deadline - time.monotonic()))  # the looks share one wait, never one each
            found = yield from io(call, again)
            if enough(found) or time.monotonic() >= deadline:
                break
        return found
    except BaseException as error:  # cancelled while the look ran on (a claim it won is given back), or while waiting
        yield from failed(core, call, error)
        raise


def cached(core: Core, call: Call) -> Flow:
    """The cached candidates, an identical request in flight waited for (`single_flight`)."""
    return (yield from single_flight(core, call, partial(look, core, call), partial(core.lookup, call), lambda found: len(found) >= call.want))


def begin(core: Core, route: Route, params: Json, overrides: Json) -> Generator[Effect, Any, Call]:
    """The call: its request checked, its per-call overrides merged, then what it gathers and its cache
    key (`prepare`). What an override names that is not open yet (a cache folder, a call log, an
    adapter) is opened as an "io" effect, off an async client's event loop; with nothing to open, no hop. A closed
    client fails as openai's does (httpx2's RuntimeError), before anything is reserved, read from the cache or logged."""
    if core.inner.is_closed():
        raise RuntimeError("Cannot send a request, as the client has been closed.")
    call = checked(core, route, params, overrides)
    if overrides:
        merge = partial(core.opts.merge, core.opened, **overrides)
        call.opts = (yield from io(call, merge, blocks=True)) if needs_opening(core.opened, overrides) else merge()
    return prepare(core, call)


def create(
    core: Core, route: Route, params: Json, overrides: Json, valid: Callable[[str], bool] | None = None, kept: KeptHttp | None = None, step_of: Call | None = None
) -> Flow:
    """`create` for chat or legacy completions, streamed or not, reranked or beam-searched; reranking
    prefers the answers `valid` accepts (for `parse`: those that fit the schema); `kept` receives the
    last HTTP response (a raw view's status and headers); `step_of`: the beam call this is a step of."""
    call = yield from begin(core, route, params, overrides)
    call.valid = valid
    call.kept = kept
    if step_of is not None:
        step_of.steps.append(call.info)
        call.step_of = step_of
    if call.opts.beam is not None and call.opts.reranker is not None:
        whole = yield from beam(core, unstreamed(call))
    elif call.opts.reranker is not None and call.want > 1 and (call.want > call.n or call.stream):  # a stream carries the pick too
        whole = yield from complete(core, unstreamed(call))
    elif call.stream:
        return (yield from stream(core, call))
    else:
        return (yield from complete(core, call))
    if not call.stream:
        return whole
    return core.stream_of(whole_stream_chunks(call, whole), None, whole.blackbox)


def beam(core: Core, call: Call) -> Flow:
    """A beam search, each step a call of its own; the call is logged once with what its steps spent,
    whether it ends or fails (a step refused or cancelled, a scorer that raised)."""
    try:
        result, tally = yield Effect("beam", call)
    except BaseException as error:
        yield from failed(core, call, error, spent_on_steps(call))
        raise
    return (yield from last(core, call, partial(beam_response, core, call, result, tally)))


def paid(core: Core, call: Call, missing: int, fetch_all: Callable[[int, int | None], Flow], optional: bool = False) -> Flow:
    """Admit and reserve `missing` answers, then `fetch_all(count, max_tokens)`; a failure releases what was held.
    An `optional` round the per-call cap refuses raises CapReached instead, its rate admission given back; a call
    that waited to be admitted and then finds all it wants stored raises NowCached (not an optional round's)."""
    try:
        count, max_tokens = yield from admit(core, call, missing, None if optional else partial(stored_enough, core, call))
    except NowCached:
        raise
    except BudgetExceededError as refused:
        if not (optional and refused.scope == "per_call"):
            yield from failed(core, call, refused)
            raise
        yield from io(call, partial(let_round_go, core, call))
        raise CapReached(str(refused)) from refused
    except BaseException as error:
        yield from failed(core, call, error)
        raise
    try:
        return (yield from fetch_all(count, max_tokens))
    except BaseException as error:
        yield from failed(core, call, error)
        raise


def handed_over(core: Core, call: Call) -> Flow:
    """A stream about to go to its caller gives the calibration gate back (its first chunk came: the server has the request):
    from then on its reader sets the pace, and one half read and left alone would hold every other call to the endpoint
    and model; the next call takes the gate, and the stream's usage, when it comes, still calibrates."""
    if call.gated or call.file_gates:
        yield from io(call, partial(ungate, core, call, calibrates=True))


def let_round_go(core: Core, call: Call) -> None:
    """An optional round refused before anything was sent or held: the calibration gate and its rate admission back."""
    ungate(core, call)
    if call.admission is not None:
        give_room_back(call)
        call.admission = None


def complete(core: Core, call: Call) -> Flow:
    """A whole response: cached candidates first, the rest fetched."""
    stored = yield from cached(core, call)
    confidence = confidence_of(call.opts) if call.opts.reranker is not None and call.n == 1 else None
    if confidence is not None:
        return (yield from rounds(core, call, stored, confidence))
    missing = call.want - len(stored)
    if missing <= 0:
        return (yield from last(core, call, partial(finish, core, call, stored, [], None)))

    def fetched(count: int, max_tokens: int | None) -> Flow:
        """The fresh responses, and their candidates unless the one response is passed on untouched."""
        responses = yield from fetch(core, call, count, max_tokens)
        if untouched(call, stored, responses):
            return responses, None
        return responses, (yield from io(call, partial(pieces, core, call, [r.to_dict(warnings=False) for r in responses]), counts=True))

    try:
        responses, split = yield from paid(core, call, missing, fetched)
    except NowCached as hit:
        return (yield from last(core, call, partial(finish, core, call, hit.found, [], None)))
    if split is None:
        return (yield from last(core, call, partial(finish_untouched, core, call, responses[0])))
    (fresh, usage), original = split, responses[0] if len(responses) == 1 else None
    return (yield from last(core, call, partial(finish, core, call, stored, fresh, usage, original=original)))


def rounds(core: Core, call: Call, stored: list[Candidate], confidence: float) -> Flow:
    """Adaptive K: hold 1 answer, then 2, 4, 8, ... up to `rerank_n`, each round paid on its own, until
    the reranker's pick holds `confidence` of the softmax over the scores."""
    try:
        fresh, usage = yield from _rounds(core, call, stored, confidence)
    except NowCached as hit:  # stored while its first round waited to be admitted
        return (yield from last(core, call, partial(finish, core, call, hit.found, [], None)))
    except BaseException as error:  # between rounds too (a reranker that fails, an interrupt): logged once
        yield from failed(core, call, error)
        raise
    return (yield from last(core, call, partial(finish, core, call, stored, fresh, usage, paid=True)))


def _rounds(core: Core, call: Call, stored: list[Candidate], confidence: float) -> Flow:
    """The rounds: the fresh candidates, and their usage (each round settled)."""
    fresh: list[Candidate] = []
    usage: Json | None = None
    share = (yield from io(call, partial(_share, call, stored))) if len(stored) >= FIRST_ROUND else None
    size = next_round(len(stored), call.want, share, confidence)
    while size:
        try:
            got, used = yield from paid(core, call, size - len(stored) - len(fresh), partial(_answers, core, call), bool(stored or fresh))
        except CapReached as reached:  # the answers in hand are paid for: the pick is made among them
            logger.info("call %s: adaptive K stops at %d answers: %s", call.info.call_id, len(stored) + len(fresh), reached)
            break
        yield from io(call, partial(pay, core, call, got, used))
        fresh, usage = fresh + got, add_usage(usage or {}, used)
        call.held = len(stored) + len(fresh)  # the next round's seeds go on after this one's, as one request of n would
        share = yield from io(call, partial(_share, call, stored + fresh))
        size = next_round(len(stored) + len(fresh), call.want, share, confidence)
    return fresh, usage


def _share(call: Call, candidates: list[Candidate]) -> float:
    """The reranker's pick's share of the candidates' scores (the scores kept for the final pick)."""
    answers = texts(call, candidates)
    return pick_share(answers, score(call, answers))


def _answers(core: Core, call: Call, count: int, max_tokens: int | None) -> Flow:
    """One round's fresh candidates and their usage."""
    responses = yield from fetch(core, call, count, max_tokens)
    return (yield from io(call, partial(pieces, core, call, [r.to_dict(warnings=False) for r in responses]), counts=True))


def fetch(core: Core, call: Call, count: int, max_tokens: int | None) -> Flow:
    """`count` fresh choices: one request with n, then concurrent single requests for what it lacked
    (each answer is kept on the call until settled: when one fails, those that arrived are charged)."""
    seeds = core.seeds(call, count)
    single = call.prompts == 1
    if count > 1 and core.ignores_n and single:
        return (yield from sent(call, tuple(core.sender(call, 1, max_tokens, seed) for seed in seeds)))
    [first] = yield from sent(call, (core.sender(call, count, max_tokens, seeds[0]),))
    got = len(first.choices or [])  # a server's null choices: none
    if count > 1 and single:
        core.ignores_n = got < count
    if got >= count or got == 0 or not single:
        return [first]
    rest = yield from sent(call, tuple(core.sender(call, 1, max_tokens, seed) for seed in seeds[got:count]))
    return [first, *rest]


def stream(core: Core, call: Call) -> Flow:
    """Stored chunks replayed, then live chunks as they come, fanned out when `n` was ignored."""
    stored = yield from cached(core, call)
    missing = call.want - len(stored)
    if missing <= 0:
        return core.stream_of((yield from io(call, partial(replay, core, call, stored))), None, call.info)

    def opened(count: int, max_tokens: int | None) -> Flow:
        """The live stream asking for `count` choices, and the relay that fans out what it lacks."""
        seeds = core.seeds(call, count)
        live, head = yield from sending(Effect("open", call, (core.sender(call, count, max_tokens, seeds[0]),)))
        return live, head, Relay(core, call, stored, seeds, max_tokens)

    try:
        live, head, relay = yield from paid(core, call, missing, opened)
    except NowCached as hit:
        return core.stream_of((yield from io(call, partial(replay, core, call, hit.found))), None, call.info)
    yield from handed_over(core, call)
    return core.live_stream(relay, live, head)


def embed(core: Core, params: Json, overrides: Json) -> Flow:
    """`embeddings.create`: cached whole (with single flight), budgeted on input tokens, retried, logged."""
    call = yield from begin(core, EMBEDDINGS, params, overrides)
    stored = yield from cached_embedding(core, call)
    if stored is not None:
        return (yield from io(call, partial(finish_embedding, core, call, None, stored)))
    try:
        yield from admit(core, call, 1, partial(lookup_embedding, call))
        [response] = yield from sent(call, (lambda: core.inner.embeddings.create(**params),))
    except NowCached as hit:
        return (yield from io(call, partial(finish_embedding, core, call, None, hit.found)))
    except BaseException as error:
        yield from failed(core, call, error)
        raise
    return (yield from last(core, call, partial(finish_embedding, core, call, response, None), counts=True))


def cached_embedding(core: Core, call: Call) -> Generator[Effect, Any, Json | None]:
    """The stored embeddings response, an identical request in flight waited for (`single_flight`); None: this call
    holds the claim on the request."""
    return (yield from single_flight(core, call, partial(look_embedding, core, call), partial(lookup_embedding, call), lambda stored: stored is not None))
