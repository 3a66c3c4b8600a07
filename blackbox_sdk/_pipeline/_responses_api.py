"""`responses.create` as a flow, written once like chat's: cached answers first (replayed as events
when streamed), the rate limit and the budget's worst case from `instructions` + `input` and
`max_output_tokens`, `rerank_n` requests when a reranker picks (the Responses API has no `n`),
settled from `usage.input_tokens` / `output_tokens` (or counted), stored, logged as route
"responses", and `response.blackbox` on what the caller gets.

A candidate here is a whole response: its JSON is the candidate's choice, its events (when it
came streamed) the candidate's chunks, so that the cache stores Responses answers exactly as it
stores chat's, under the same key scheme (the route's name in the key keeps them apart).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, get_args

from openai.types.responses import Response, ResponseUsage
from pydantic import BaseModel

from .._exceptions import ConfigError
from .._info import attach, rebuilt
from .._types import RESPONSES, Json, token_count, usage_to_charge
from ._calibrate import remember_context
from ._call import Call, KeptHttp, Sender
from ._candidates import Candidate
from ._core import Core, build
from ._effects import NowCached
from ._flows import Effect, Flow, begin, cached, handed_over, io, last, paid, sending, sent
from ._relay import Relay
from ._response_events import ENDED, arrived, event, events_of, final_response
from ._responses import account, choose, logged_texts, unstreamed
from ._validation import given

Valid = Callable[[str], bool]  # whether an answer's text is acceptable (parses against the caller's schema)
STORED_STATUSES = (None, "completed", "incomplete")  # a queued or background response is not an answer to keep
RUNNING_STATUSES = ("queued", "in_progress")  # a background response still generating: charged its worst case
TEXT_DONE = "response.output_text.done"  # a message's whole text: a caller may stop here; the final response follows


def create(core: Core, params: Json, overrides: Json, valid: Valid | None = None, kept: KeptHttp | None = None) -> Flow:
    """`responses.create`, whole or streamed; reranked over `rerank_n` whole answers when a reranker is on;
    `kept` receives the last HTTP response (a raw view's whole call)."""
    call = yield from begin(core, RESPONSES, params, overrides)
    call.valid, call.kept = valid, kept
    if answers_change(call):
        call.key = None
    if call.opts.reranker is not None and call.want > 1:
        refuse_conversation(call)
        whole = yield from complete(core, unstreamed(call))
        if not call.stream:
            return whole
        return core.stream_of(typed(events_of(whole.to_dict(warnings=False)), whole.blackbox), None, whole.blackbox)
    if call.stream:
        return (yield from stream(core, call))
    return (yield from complete(core, call))


def answers_change(call: Call) -> bool:
    """Whether the same request may get an answer from other context later, so is never served from the cache nor stored:
    one in a `conversation` (the server appends each turn to it: the same input later is asked in a longer context), or
    one with a stored `prompt` named without a `version` (the server uses its latest, which its owner may change)."""
    prompt = call.sent("prompt")
    unversioned = isinstance(prompt, Mapping) and given(prompt.get("id")) and not prompt.get("version")
    return bool(call.sent("conversation")) or unversioned


def refuse_conversation(call: Call) -> None:
    """ConfigError before a reranked call in a conversation is sent: each of its requests would add its input and
    answer to the conversation (the server appends every response to it), leaving `rerank_n` turns where one was asked."""
    if call.sent("conversation"):
        raise ConfigError(
            f"rerank_n={call.want} sends one request per answer, and the server adds each one's input and answer to the "
            "conversation it names: refused. Continue with previous_response_id instead, or pass rerank_n=1"
        )


def sender(core: Core, call: Call, max_tokens: int | None) -> Callable[[], Any]:
    """The inner client's `responses.create` for one answer (the output cap as the budget granted it)."""
    params = core.request(call, 1, max_tokens)
    if call.kept is not None and not call.stream:
        return Sender(core.kept(call.kept, core.inner.responses.with_raw_response.create, lambda: params), 1)
    return Sender(lambda: core.inner.responses.create(**params), 1)


def answers(core: Core, call: Call, count: int, max_tokens: int | None) -> Flow:
    """`count` concurrent requests, and their answers as candidates (when one fails, those that arrived are charged)."""
    responses = yield from sent(call, tuple(sender(core, call, max_tokens) for _ in range(count)))
    return responses, (yield from io(call, partial(pieces, core, call, [r.to_dict(warnings=False) for r in responses]), counts=True))


def complete(core: Core, call: Call) -> Flow:
    """A whole response: cached answers first, the rest fetched as concurrent requests."""
    stored = yield from cached(core, call)
    if len(stored) >= call.want:
        return (yield from last(core, call, partial(finish, core, call, stored, [], None)))
    try:
        responses, (fresh, usage) = yield from paid(core, call, call.want - len(stored), partial(answers, core, call))
    except NowCached as hit:  # stored while this call waited to be admitted
        return (yield from last(core, call, partial(finish, core, call, hit.found, [], None)))
    original = responses[0] if len(responses) == 1 else None
    return (yield from last(core, call, partial(finish, core, call, stored, fresh, usage, original=original)))


def candidate(core: Core, call: Call, response: Json, events: list[Json] | None = None) -> tuple[Candidate, Json]:
    """One answer as a candidate, and its usage in the chat shape (the server's, or counted);
    an answer that is not one to keep (queued, in the background) leaves the call uncached."""
    usage = core.count.of_response(call, response)
    remember_context(core, call, response, usage)
    if response.get("status") not in STORED_STATUSES:
        call.key = None
    if response.get("status") in RUNNING_STATUSES and call.reservation is not None:  # the server generates on and bills it
        usage, call.usage_counted = call.worst_case(1), True
    found = Candidate(response, {}, token_count(usage.get("completion_tokens")), token_count(usage.get("prompt_tokens")), events)
    return found, usage


def pieces(core: Core, call: Call, responses: list[Json]) -> tuple[list[Candidate], Json]:
    """Received responses as candidates, and their total usage (cached input tokens kept)."""
    fresh, usages = zip(*(candidate(core, call, response) for response in responses))
    return list(fresh), usage_to_charge(usages)


def responses_usage(usage: Json) -> Json:
    """A chat-shaped usage (answers' usages summed) as the Responses API's `usage` object, details and all."""
    return fitted(ResponseUsage, {
        "input_tokens": token_count(usage.get("prompt_tokens")),
        "input_tokens_details": usage.get("prompt_tokens_details") or {},
        "output_tokens": token_count(usage.get("completion_tokens")),
        "output_tokens_details": usage.get("completion_tokens_details") or {},
        "total_tokens": token_count(usage.get("total_tokens")),
    })


def fitted(model: type[BaseModel], counts: Json) -> Json:
    """`counts` as openai's `model` declares them: its fields only, a required count no answer reported as 0,
    an optional one left out."""
    out: Json = {}
    for name, field in model.model_fields.items():
        value = counts.get(name)
        inner = next((t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if inner is not None and (isinstance(value, dict) or field.is_required()):
            out[name] = fitted(inner, value if isinstance(value, dict) else {})
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        elif field.is_required():
            out[name] = 0
    return out


def finish(core: Core, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None, original: Any = None) -> Any:
    """Account, rerank, log; the chosen `Response` with `.blackbox` (the server's own object when
    nothing changed it). A reranked response reports the usage of every answer it was chosen from."""
    everything, total = account(core, call, stored, fresh, usage)
    [best] = choose(call, everything)
    if any(best is hit for hit in stored):
        remember_hit(core, call, best)
    if original is None or stored or call.opts.reranker is not None or call.usage_counted:
        data = best.choice if len(everything) == 1 else {**best.choice, "usage": responses_usage(total)}
        original = rebuilt(build(Response, data), None if stored else original)
    core.record(call, logged_texts(call, everything), total)
    return attach(original, call.info)


def stream(core: Core, call: Call) -> Flow:
    """A cached answer replayed as events, or a live stream passed on event by event and accounted."""
    stored = yield from cached(core, call)
    if stored:
        return core.stream_of((yield from io(call, partial(replay, core, call, stored))), None, call.info)

    def opened(_: int, max_tokens: int | None) -> Flow:
        """The one live stream (the Responses API has no `n`)."""
        return (yield from sending(Effect("open", call, (sender(core, call, max_tokens),))))

    try:
        live, head = yield from paid(core, call, 1, opened)
    except NowCached as hit:  # stored while this call waited to be admitted
        return core.stream_of((yield from io(call, partial(replay, core, call, hit.found))), None, call.info)
    yield from handed_over(core, call)
    return core.live_stream(ResponseRelay(core, call), live, head)


def replay(core: Core, call: Call, stored: list[Candidate]) -> list[Any]:
    """A stream served from the cache: accounted and logged before its first event is read; the
    stored events as they came, or a whole answer's events."""
    everything, total = account(core, call, stored[:1], [], None)
    call.info.chosen = [0]
    remember_hit(core, call, stored[0])
    core.record(call, logged_texts(call, everything), total)
    return typed(stored[0].chunks or events_of(stored[0].choice), call.info)


def remember_hit(core: Core, call: Call, hit: Candidate) -> None:
    """An answer served from the cache teaches the ledger what a continuation of it carries, as a fresh one
    does: the ledger may never have seen it (stored by a client without a budget, or its record lapsed)."""
    remember_context(core, call, hit.choice, {"prompt_tokens": hit.prompt_tokens, "completion_tokens": hit.completion_tokens})


def typed(events: list[Json], info: Any) -> list[Any]:
    """Events the SDK holds as typed events; the final response carries `.blackbox`, as a live stream's does."""
    out = [event(e) for e in events]
    if out and out[-1].type in ENDED:
        attach(out[-1].response, info)
    return out


class ResponseRelay(Relay):
    """A live Responses stream's account: every event collected as it passes; at the end the final
    response's usage settles it and it is stored whole, or, when the stream was cut, closed early or
    failed, what arrived is charged, nothing is stored and the call is logged with the error."""

    def __init__(self, core: Core, call: Call) -> None:
        super().__init__(core, call, [], [None], None)

    def pass_on(self, live: Any) -> Any:
        """The event itself, collected (the final response gets `.blackbox`)."""
        self.collected.append(live.to_dict(warnings=False))
        if self.collected[-1].get("type") in ENDED:
            attach(live.response, self.call.info)
        return live

    def next_stream(self) -> None:
        """One stream per call: the Responses API has no `n` to fan out."""

    def answered(self) -> bool:
        """Whether the answer has all come: the final response (openai's helper parses it, and may raise, before the
        stream ends), or the answer's text done (the helper parses `text_format` there, and raises at a JSON cut by
        `max_output_tokens`, before `response.incomplete`: as chat's helper at a finish_reason)."""
        if self.done or not self.collected:
            return False
        return final_response(self.collected) is not None or self.collected[-1].get("type") == TEXT_DONE

    def _pieces(self) -> tuple[list[Candidate], Json]:
        """What arrived: a failed response's own usage; for a background response cut or left, the worst case (the
        server generates on, and bills it, as for one that comes back queued); else the prompt and the text counted."""
        text, failed = arrived(self.collected)
        usage = RESPONSES.usage(failed) if failed is not None else None
        if usage is None and self.call.sent("background") is True and self.call.reservation is not None:
            usage, self.call.usage_counted = self.call.worst_case(1), True
        return [], usage or self.core.count.counted(self.call, [text], 1)

    def _unfinished(self) -> Exception:
        """The error a stream that did not end whole is logged with: the failed response's, or a cut."""
        failed = arrived(self.collected)[1]
        if failed is None:
            return ConnectionError("the server ended the stream before response.completed")
        return RuntimeError(f"the response failed: {(failed.get('error') or {}).get('message')}")

    def finish(self) -> list[Any]:
        """Settle from the final response's usage, store the events, log; a stream with no final
        response (cut, or failed) is charged for what arrived and logged as an error instead."""
        response = final_response(self.collected)
        if response is None:
            self.abort(self._unfinished())
            return []
        fresh, usage = candidate(self.core, self.call, response, self.collected)
        everything, total = account(self.core, self.call, [], [fresh], usage)
        self.call.info.chosen = [0]
        self.core.record(self.call, logged_texts(self.call, everything), total)
        self.done = True
        return []
