"""From gathered candidates to what the caller gets: account (settle, store), choose (rerank),
log, and build the typed response or stream chunks, each with `.blackbox`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

import httpx2
import openai
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .._info import attach, rebuilt
from .._logging import logger
from .._types import CHAT, RESPONSES, Json, add_usage, one_number_each, usage_to_charge
from ._calibrate import warn_ignored_cap
from ._call import Call
from ._candidates import Candidate, chunks_from_candidates, response_from_candidates, split_response, sum_usage, usage_chunk
from ._core import CLAIM_TTL_S, Core, build
from ._rates import warn_unasked_priority
from ._response_events import event, events_of
from ._rerank import question_of, rank, valid_first
from ._stored_shapes import is_number, warn_skipped

def unstreamed(call: Call) -> Call:
    """The same call asking for a whole response (to rerank before streaming the winner)."""
    params = {k: v for k, v in call.params.items() if k not in ("stream", "stream_options")}
    return replace(call, params=params)


def chunk(call: Call, data: Json) -> Any:
    """A typed stream chunk from its JSON."""
    return build(ChatCompletionChunk if call.route is CHAT else Completion, data)


def whole_chunks(call: Call, response: httpx2.Response) -> list[Any]:
    """What a stream request a server answered whole (it ignored `stream`) is read as, from the response's body: the
    answer's typed chunks as a cache replays a whole answer (Responses: its events), then its usage, for the relay;
    an error object raised as openai's stream raises one sent as an event."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise openai.APIResponseValidationError(response, response.text, message="the server answered a stream request with a body that is not a JSON object")
    if isinstance(body.get("error"), dict):  # as openai's stream raises an error event
        raise openai.APIError(str(body["error"].get("message") or "the server answered with an error"), response.request, body=body["error"])
    if call.route is RESPONSES:
        return [event(data) for data in events_of(body)]
    candidates = split_response(call.route, body, {})
    chunks = [chunk(call, data) for data in chunks_from_candidates(call.route, candidates)]
    if candidates and isinstance(body.get("usage"), dict):
        chunks.append(chunk(call, usage_chunk(call.route, candidates[0].meta, body["usage"])))
    return chunks


def replay_response() -> httpx2.Response:
    """The HTTP response a stream served by the SDK (cache or reranked winner) reports as its `.response`."""
    return httpx2.Response(200, headers={"content-type": "text/event-stream", "x-blackbox-cache": "hit"})


_CALLED = {"function_call": "arguments", "custom_tool_call": "input"}  # a response's tool calls: the field holding what they pass


def texts(call: Call, candidates: list[Candidate]) -> list[str]:
    """What each candidate answers, as the reranker scores it and the log keeps it: its text, or for an
    answer that only calls tools (chat's or a response's), its tool calls as JSON (names, and arguments or input)."""
    return [call.route.text(c.choice) or _tool_calls(c.choice) for c in candidates]


def whole_texts(call: Call, response: Json) -> list[str]:
    """What each answer of a whole response says, as `texts` gives it (tool calls as JSON): for the raw views' log."""
    answers = [Candidate(response, {}, 0, 0)] if call.route is RESPONSES else split_response(call.route, copy.deepcopy(response), {})
    return texts(call, answers)


def _tool_calls(choice: Json) -> str:
    """A chat choice's tool calls, or a whole response's function and custom tool calls, as compact JSON ("" when it has none)."""
    message = choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    wanted = [call.get("function") or call for call in calls or [] if isinstance(call, dict)]
    output = choice.get("output")
    items = [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
    wanted += [{field: item.get(field), "name": item.get("name")} for item in items if (field := _CALLED.get(str(item.get("type"))))]
    return json.dumps(wanted, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str) if wanted else ""  # however the server ordered them


def logged_texts(call: Call, candidates: list[Candidate]) -> list[str]:
    """The candidates' texts for the call log; none to gather when there is no log."""
    return texts(call, candidates) if call.opts.log is not None else []


def pieces(core: Core, call: Call, responses: list[Json]) -> tuple[list[Candidate], Json]:
    """Split received responses into candidates and their total usage."""
    fresh: list[Candidate] = []
    usages: list[Json] = []
    for response in responses:
        if call.opts.budget is not None:
            warn_unasked_priority(call.info.call_id, call.params, response)
        usages.append(core.count.of_response(call, response))
        fresh += split_response(call.route, response, usages[-1])
        warn_ignored_cap(core, call, usages[-1], len(response.get("choices") or []))
    return fresh, usage_to_charge(usages)


def kept(call: Call, fresh: list[Candidate]) -> list[Json]:
    """The fresh candidates to store: those the caller's own parse does not reject (`Call.parses`), so a retry reaches the server."""
    return [c.to_json() for c in fresh if call.parses(c.choice)]


def pay(core: Core, call: Call, fresh: list[Candidate], usage: Json) -> None:
    """Store fresh candidates, then settle their reservation from their usage (whatever the store did)."""
    try:
        core.store(call, kept(call, fresh))  # first: an answer paid for is kept even if the ledger can't be told
    finally:
        core.settle(call, usage)


def account(core: Core, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None, paid: bool = False) -> tuple[list[Candidate], Json]:
    """Store fresh candidates and settle the reservation (unless each round was `paid` already); all
    candidates and their total usage."""
    call.info.cached_candidates = len(stored)
    call.info.cache_hit = bool(stored) and not fresh
    if not paid and usage is not None:
        pay(core, call, fresh, usage)
    elif not paid:
        core.store(call, kept(call, fresh))
    total = call.settled = sum_usage(stored, call.route) if usage is None else add_usage(sum_usage(stored, call.route), usage)
    return stored + fresh, total


def score(call: Call, answers: list[str]) -> list[float]:
    """The reranker's scores of the answers, kept on `call.info` with them; RerankerError unless it gave one
    number per answer (the answers are paid for: the call is logged with the error)."""
    reranker = call.opts.reranker
    assert reranker is not None  # only a reranked call scores
    call.info.candidates, call.info.scores = answers, one_number_each(reranker(question_of(call.route, call.params), answers), len(answers))
    if any(math.isnan(s) for s in call.info.scores):
        logger.warning("call %s: the reranker scored %d of %d answers NaN (a diverged adapter?); they rank last",
                       call.info.call_id, sum(math.isnan(s) for s in call.info.scores), len(answers))
    return call.info.scores


def choose(call: Call, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates to return: reranked best-first when a reranker is on (those the call's check
    accepts before the rest), `n` of them."""
    info = call.info
    if call.opts.reranker is None or len(candidates) <= 1:
        info.chosen = list(range(min(call.n, len(candidates))))
        return candidates[: call.n]
    answers = texts(call, candidates)
    scored = info.candidates == answers and info.scores is not None  # adaptive K's last round scored these already
    scores = info.scores if scored and info.scores is not None else score(call, answers)
    info.chosen = valid_first(rank(scores), answers, call.valid)[: call.n]
    return [candidates[i] for i in info.chosen]


def finish(core: Core, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None, original: Any = None, paid: bool = False) -> Any:
    """Account, choose, log; the typed response with `.blackbox` (the server's own object when untouched)."""
    everything, total = account(core, call, stored, fresh, usage, paid)
    chosen = choose(call, everything)
    if original is None or stored or call.opts.reranker is not None or call.usage_counted:
        built = build(ChatCompletion if call.route is CHAT else Completion, response_from_candidates(call.route, chosen, total))
        original = rebuilt(built, None if stored else original)
    core.record(call, logged_texts(call, everything), total)
    return attach(original, call.info)


def untouched(call: Call, stored: list[Candidate], responses: list[Any]) -> bool:
    """Whether the server's one response goes back as it came: nothing cached, stored, charged, reranked,
    rate-limited or logged, and the server counted the tokens (the SDK has nothing to rebuild)."""
    opts = call.opts
    if stored or len(responses) != 1 or opts.cache is not None or opts.budget is not None or opts.log is not None:
        return False
    usage = getattr(responses[0], "usage", None)
    return opts.reranker is None and opts.rate_limit is None and usage is not None and usage.completion_tokens is not None


def finish_untouched(core: Core, call: Call, response: Any) -> Any:
    """`finish` for an `untouched` response, without splitting it into candidates: the server's object with `.blackbox`."""
    call.info.chosen = list(range(min(call.n, len(response.choices))))
    core.record(call, [], response.usage.to_dict(warnings=False))  # `.blackbox.usage`, as on every other path
    return attach(response, call.info)


def finish_stream(core: Core, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None, meta: Json) -> list[Any]:
    """Account and log a stream whose chunks have all been passed on; the usage chunk when asked."""
    everything, total = account(core, call, stored, fresh, usage)
    call.info.chosen = list(range(len(everything)))
    core.record(call, logged_texts(call, everything), total)
    return [chunk(call, usage_chunk(call.route, meta, total))] if call.include_usage else []


def replay(core: Core, call: Call, stored: list[Candidate]) -> list[Any]:
    """A stream served wholly from the cache, accounted and logged before its first chunk is read."""
    replayed = [chunk(call, data) for data in chunks_from_candidates(call.route, stored)]
    return replayed + finish_stream(core, call, stored, [], None, stored[0].meta)


def whole_stream_chunks(call: Call, whole: Any) -> list[Any]:
    """A whole (reranked) response as the chunks of a stream, usage last when asked."""
    chosen = split_response(call.route, whole.to_dict(warnings=False), whole.usage.to_dict(warnings=False) if whole.usage else {})
    chunks = [chunk(call, data) for data in chunks_from_candidates(call.route, chosen)]
    if call.include_usage and whole.usage is not None:
        chunks.append(chunk(call, usage_chunk(call.route, chosen[0].meta, whole.usage.to_dict(warnings=False))))
    return chunks


def stored_enough(core: Core, call: Call) -> list[Candidate] | None:
    """The stored candidates when they are all the call wants, else None (`flows.admit`'s look after a wait)."""
    found = core.lookup(call)
    return found if found and len(found) >= call.want else None


def lookup_embedding(call: Call) -> Json | None:
    """A stored embeddings response for this request, or None."""
    if call.key is None or call.opts.cache is None:
        return None
    return embedding_in(call.opts.cache.get(call.key), call.key)


def embedding_in(entries: list[Json], key: str) -> Json | None:
    """The embeddings response among a bucket's entries at `key`, or None; one shaped unlike an answer (planted,
    another version's) is skipped, warned of once per key."""
    for entry in entries:
        if isinstance(entry.get("response"), dict) and _embedding_shaped(entry["response"]):
            return entry["response"]
        warn_skipped(key, TypeError("a stored embeddings response must hold vectors at integer indices, a string model and an object usage"))
    return None


def _embedding_shaped(response: Json) -> bool:
    """Whether a stored embeddings response has the shape a hit reads: items that are objects holding a vector
    (a list of numbers, or a base64 string) at an integer index, a model that is a string, and a usage that is an
    object or null; else it would be served as the answer."""
    data, usage = response.get("data"), response.get("usage")
    items = isinstance(data, list) and all(isinstance(item, dict) and _vector(item.get("embedding")) and type(item.get("index", 0)) is int for item in data)
    return items and (usage is None or isinstance(usage, dict)) and isinstance(response.get("model"), (str, type(None)))


def _vector(value: Any) -> bool:
    """Whether a stored embedding is a base64 string or a list of numbers (JSON's ints and floats, not booleans)."""
    return isinstance(value, str) or (isinstance(value, list) and all(is_number(number) for number in value))


def finish_embedding(core: Core, call: Call, response: Any, stored: Json | None) -> Any:
    """Settle, store, log; the typed embeddings response with `.blackbox`."""
    if stored is not None:
        call.info.cache_hit, call.info.cached_candidates = True, 1
        response = build(CreateEmbeddingResponse, stored)
    usage = response.usage.to_dict(warnings=False) if response.usage is not None else None
    if usage is None:
        call.usage_counted = True
        usage = {"prompt_tokens": core.count.prompt_tokens(call), "total_tokens": core.count.prompt_tokens(call)}
    if stored is None:  # stored first: vectors paid for are kept even if the ledger can't be told (as `pay` does)
        try:
            core.store(call, [{"response": response.to_dict(warnings=False)}])  # base64 vectors asked for are strings in a float field
        finally:
            core.settle(call, usage)
    core.record(call, [], usage)
    return attach(response, call.info)


def look(core: Core, call: Call) -> tuple[list[Candidate], bool]:
    """The cached candidates, and whether another caller is fetching the rest (else this call claimed them)."""
    found = core.lookup(call)
    if len(found) >= call.want:
        return found, False
    won, stored = core.claim(call)  # read with the claim: the last fetcher may have stored its answer since our look
    if won:
        if len(stored) >= call.want:
            core.unclaim(call)
        return stored, False
    return found, True


def look_embedding(core: Core, call: Call) -> tuple[Json | None, bool]:
    """`look` for embeddings: the stored response, and whether another caller is fetching it (else this call claimed it)."""
    stored = lookup_embedding(call)
    if stored is not None or call.key is None or call.opts.cache is None:
        return stored, False
    call.claimed, entries = call.opts.cache.claim_reading(call.key, CLAIM_TTL_S)
    stored = embedding_in(entries, call.key)  # read with the claim: an identical call may have stored its answer since the look
    if call.claimed and stored is not None:
        core.unclaim(call)
    return stored, not call.claimed and stored is None
