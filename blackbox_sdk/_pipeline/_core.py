"""What one client's calls share, and every decision a call needs that is not I/O: options with
per-call overrides, cache keys and lookups, reservations, what to send, settling, storing and
logging. The sync and async cores add only the sending.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from functools import partial
from typing import Any

import httpx2
import pydantic

from .._exceptions import CacheError, ConfigError, EmbeddingsNotSupportedError, StoreUnavailableError
from .._info import BlackBoxInfo
from .._logging import logger
from .._options import Opened, Options, body_soft_prompt, current_soft_prompt, served_name, with_body_soft_prompt
from .._redact import remember_secret
from .._retry import counting_retries
from .._tokenizer import ServerTokenizer
from .._types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Json, Route, usage_to_charge
from ..budget import TokenCount
from ..cache import canonical_params, with_default_query, with_headers
from ..call_log import new_call_id
from ._call import Call, KeptHttp, Sender, answer_lost, fits_cap, marked_cut, seeded
from ._calibrate import hidden_tokens, learn, public_endpoint, takes_completion_cap, ungate
from ._candidates import Candidate, stored
from ._hosted import refuse_hidden_fields, refuse_unbounded
from ._rates import has_audio, service_tier
from ._meter import recording, used_tokens
from ._rerank import valid_first
from ._usage import UsageCounter
from ._validation import as_sent, given, validate

CLAIM_TTL_S = 120.0  # a single-flight claim's lease: frees the key if its fetcher dies
SINGLE_FLIGHT_WAIT_S = 60.0  # how long identical requests wait for the fetcher's answer before sending anyway
SDK_PARAMS = ("n", "stream", "stream_options")  # left out of cache keys: a bucket serves any n, streamed or not
MAX_FANOUT_WORKERS = 8


class Core:
    """What one client's calls share: the inner openai client, the endpoint, options and counters."""

    io_in_place = False  # whether the core does "io" work where the flow is (`effects.io`), or elsewhere

    def __init__(self, inner: Any, opts: Options, *, endpoint: str, local: bool, backend: Any = None, opened: Opened) -> None:
        counting_retries(inner)  # its retries by the SDK's policy say which they are, as openai's own do
        self.inner = inner
        self.opts = opts
        self.endpoint = endpoint
        self.local, self.backend = local, backend
        self.opened = opened  # resources opened from paths, shared with copies of the client
        server = None if backend is not None else ServerTokenizer(str(inner.base_url), inner.auth_headers)
        self.count = UsageCounter(backend, server, ask_server=local)
        self.host = httpx2.URL(endpoint).host if "://" in endpoint else endpoint  # the log's endpoint_host, parsed once
        self.ignores_n: bool | None = False if backend is not None else None  # the local model answers n itself; a server's is learnt
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- before sending
    def offloads(self, call: Call, counts: bool = False) -> bool:
        """Whether the call's "io" work may block: it has a store or a reranker, or the work `counts`
        tokens with a tokenizer that may ask a server. An async client then runs it in a worker
        thread; otherwise where it is, which is cheaper than a thread hop."""
        return call.opts.has_stores or (counts and self.count.may_block(call))

    def check_soft_prompt(self, opts: Options) -> None:
        """A soft prompt needs an endpoint that takes input embeddings: refuse before anything is spent."""
        if opts.soft_prompt is None:
            return
        if self.backend is None or not getattr(self.backend, "supports_embeddings", False):
            raise EmbeddingsNotSupportedError(
                f"{public_endpoint(self.endpoint)} is not a local model, so soft_prompt= can't be served there; use base_url='hf:...', "
                "or, on a server that takes prompt embeddings (vLLM with --enable-prompt-embeds), send "
                "EmbedsEndpoint(...).completion_params(prompt, texts) to completions.create"
            )

    def with_soft_prompt(self, opts: Options, params: Json) -> Json:
        """The request with its soft prompt sent under its values' digest: the option's (registered here), or the body's."""
        if opts.soft_prompt is None:
            named = body_soft_prompt(params)
            return params if named is None or self.backend is None else with_body_soft_prompt(params, self.backend.served_soft_prompt(named))
        self.check_soft_prompt(opts)
        prompt = current_soft_prompt(opts.soft_prompt)  # a saved folder's as it is now: one prompt for the name and the vectors
        self.backend.register_soft_prompt(name := served_name(prompt), prompt.embeds)
        return with_body_soft_prompt(params, name)

    def lookup(self, call: Call) -> list[Candidate]:
        """Stored candidates for this request, at most `want`; foreign entries are skipped, and so is an answer the
        caller's own parse rejects (`Call.parses`: stored by a plain `create` of the same schema); for any other `valid`
        check those that fit come first, so a stored answer that does not fit is not served while one that does is stored."""
        if call.key is None or call.opts.cache is None:
            return []
        return self.candidates(call, call.opts.cache.get(call.key))

    def candidates(self, call: Call, entries: list[Json]) -> list[Candidate]:
        """`lookup`'s candidates from a bucket's entries."""
        read = (stored(entry, call.route, call.key or "") for entry in entries if fits_cap(call, entry))
        found = [candidate for candidate in read if candidate is not None and call.parses(candidate.choice)]
        if call.valid is not None and len(found) > call.want:
            found = [found[i] for i in valid_first(range(len(found)), [call.route.text(c.choice) for c in found], call.valid)]
        call.held = len(found[: call.want])
        return found[: call.want]

    def admission_tokens(self, call: Call, count: int) -> int:
        """The worst case a rate limit admits a call at: its prompts and `count` full answers each, at
        the output cap the call will send, and the prompt tokens the server adds as the budget's ledger learnt them; an
        `extra_body` field that would change that worst case is refused first."""
        if call.opts.rate_limit is not None and call.opts.rate_limit.counts_tokens:
            refuse_hidden_fields(call.params, "the tokens-per-minute limit admits the call at")
        return (self.count.prompt(call).tokens + (call.cap_sent or 0) * count) * call.prompts + hidden_tokens(self, call, warn=False)

    def claim(self, call: Call) -> tuple[bool, list[Candidate]]:
        """Single flight: whether this call fetches (True), or another caller is already fetching this very
        request and its answer is worth waiting for (False); and the candidates stored by then, read with the claim."""
        if call.key is None or call.opts.cache is None:
            return True, []
        call.claimed, entries = call.opts.cache.claim_reading(call.key, CLAIM_TTL_S)
        return call.claimed, self.candidates(call, entries)

    def unclaim(self, call: Call) -> None:
        """Let the callers waiting on this call's request go (its answer is stored, or it failed)."""
        if call.claimed:
            call.claimed = False
            call.opts.cache.release_claim(call.key)

    def reserve(self, call: Call, count: int) -> tuple[int, int | None]:
        """Reserve the worst case for `count` candidates; returns (count, max output tokens) after the policy."""
        max_tokens = call.cap_sent
        if call.opts.budget is None:
            return count, max_tokens
        refuse_unbounded(call.route, call.params)
        generations = call.reserved_generations(count, self.ignores_n)  # the server generates best_of and bills them all
        fixed = call.prompts > 1 or generations != count or call.zero_cap  # choices can't be dropped, nor a cap of 0 shrunk
        counted = self.count.prompt(call)
        call.counted_prompt = counted.tokens
        call.prompt_extra = extra = hidden_tokens(self, call)  # charged as reserved when the call's usage is counted
        call.reservation = call.meter.reserve(
            call_id=call.info.call_id,
            model=call.model,
            prompt_tokens=TokenCount(counted.tokens + extra, counted.method, counted.exact),
            max_output_tokens=0 if call.route is EMBEDDINGS else max_tokens,
            n=generations * call.prompts,
            prompt_per_choice=call.route is RESPONSES or (self.ignores_n is not False and not call.raw),  # until the server is seen to honour n
            local=self.local,
            shrink=not fixed,
            service_tier=service_tier(call.params),
            audio=has_audio(call.route, call.params),
            call_spent_usd=call.spent_in_call(),  # earlier rounds of adaptive K, a beam's other steps: the per-call cap bounds them all
        )
        granted = count if fixed else call.reservation.n
        call.cut_short = max_tokens is not None and call.reservation.max_output_tokens < max_tokens
        return granted, call.reservation.max_output_tokens or None

    def request(self, call: Call, count: int, max_tokens: int | None, seed: int | None = None, raw: bool = False) -> Json:
        """What the inner client is sent for `count` candidates (the output cap under the caller's name, or the one
        the endpoint was seen to take: built as each request goes); a stream under a budget asks for the server's
        usage, whose count holds what the text can't show (reasoning tokens, a hidden prompt), and the caller sees
        its usage chunk only when it asked for one; a `raw` view's stream is sent as the caller wrote it (the caller
        reads it, and it is charged its worst case)."""
        params = {k: v for k, v in call.params.items() if k != "n"}
        if count > 1 or given(call.params.get("n")):
            params["n"] = count
        elif "n" in call.params:
            params["n"] = call.params["n"]  # None or omit, sent as the caller gave it
        if max_tokens is not None and call.relies_on_cap:  # a relied-on cap: the caller's caps replaced by those sent, each at most the one granted
            refused = call.route is CHAT and takes_completion_cap(self, call)
            sent = call.caps_to_send(max_tokens, refused)  # a cap renamed leaves the caller's name out (never both)
            params = {k: v for k, v in params.items() if k not in call.caps_given or k in sent} | sent
        if seed is not None:
            params = seeded(params, seed)
        if call.usage_asked and not raw:
            options = params.get("stream_options")
            params["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}  # billed tokens, hidden ones too
        return params

    def sender(self, call: Call, count: int, max_tokens: int | None, seed: int | None) -> Callable[[], Any]:
        """The inner client's `create` for `count` candidates, ready to send (its request built as it goes: one sent
        again after the endpoint refused `max_tokens` carries `max_completion_tokens`)."""
        params = partial(self.request, call, count, max_tokens, seed)
        resource = self.inner.chat.completions if call.route is CHAT else self.inner.completions
        if call.kept is not None and not call.stream:
            return Sender(self.kept(call.kept, resource.with_raw_response.create, params), count)
        return Sender(lambda: resource.create(**params()), count)

    def kept(self, kept: KeptHttp, raw_create: Callable[..., Any], params: Callable[[], Json]) -> Callable[[], Any]:
        """A request through the raw view that keeps its HTTP response on the call (sync or async, by the core)."""
        raise NotImplementedError

    def seeds(self, call: Call, count: int) -> list[int | None]:
        """Distinct seeds for fanned-out requests: the caller's seed (`Call.seed`) + i after the stored answers, else random after the first."""
        seed = call.seed
        if seed is not None:
            return [seed + call.held + i for i in range(count)]
        return [None] + [secrets.randbelow(2**31) for _ in range(count - 1)]

    def count_retry(self, call: Call) -> None:
        """Count one retry on the call (fan-out threads share it)."""
        with self._lock:
            call.info.retries += 1

    def stream_of(self, chunks: list[Any], response: Any, info: Any) -> Any:
        """A stream (sync or async, by the core) over chunks the SDK already holds."""
        raise NotImplementedError

    def live_stream(self, relay: Any, live: Any, head: Any) -> Any:
        """A stream (sync or async, by the core) over an opened live stream, accounted by the relay."""
        raise NotImplementedError

    # ---------------------------------------------------------------- after receiving
    def settle(self, call: Call, usage: Json) -> None:
        """Settle the reservation from real usage (the answers that arrived are paid); the cost lands on `call.info`."""
        call.arrived = []
        if call.reservation is not None:  # adaptive K settles each round; a ledger out of reach is owed the charge (Meter.settle)
            call.info.cost_usd += call.meter.settle(call.reservation, usage)
            call.reservation = None
        learn(self, call, usage)
        lost, call.lost_tokens = call.lost_tokens, 0  # counted in this admission's window once (adaptive K admits each round)
        if call.admission is not None:
            used = used_tokens(usage)
            try:  # an impossible report keeps the estimate; answers lost before this one count too (the server had them)
                call.opts.rate_limit.correct(call.admission, call.admission.tokens if used is None else used + lost)
            except StoreUnavailableError as error:  # the answer is paid for: the window keeps its worst case, which errs safe
                logger.warning("call %s: the rate window could not be corrected to its real usage now: %s", call.info.call_id, error)
            call.admission = None

    def settle_reserved(self, call: Call) -> None:
        """Settle at the reserved worst case: for raw streams, whose usage the SDK does not see."""
        held = call.reservation
        call.usage_counted = True
        if held is not None:
            self.settle(call, {"prompt_tokens": held.prompt_tokens, "completion_tokens": held.max_output_tokens * held.n})

    def store(self, call: Call, fresh: list[Json]) -> None:
        """Append complete fresh entries (candidates' JSON) to the request's bucket. A store that fails, or
        an answer it can't hold (a server's -Infinity logprob is no JSON), is a warning (the answer is paid
        for and goes back); the claim is let go either way."""
        try:
            if call.key is not None and (cache := call.opts.cache) is not None and fresh and not call.cut_short:
                (cache.with_mode("write") if call.refreshed else cache).extend(call.key, [marked_cut(call, entry) for entry in fresh])
                call.refreshed = cache.mode == "refresh"  # the bucket is replaced once: the call's later rounds add to it
        except (CacheError, ConfigError) as error:
            logger.warning("call %s: its answer could not be cached: %s", call.info.call_id, error)
        finally:
            self.unclaim(call)

    def record(self, call: Call, texts: list[str], usage: Json | None, error: BaseException | None = None) -> None:
        """One call-log record for the call, with its candidates, scores, cost and outcome."""
        if call.recorded or (error is None and call.defer(texts, usage)):  # once; a last step's success when it has ended
            return
        call.recorded = True
        info = call.info
        info.latency_s = time.perf_counter() - call.started
        info.usage_counted = call.usage_counted
        info.usage = usage
        if not recording(call.opts.log):
            call.ended()
            return
        remember_secret(self.inner.api_key)  # the key in use: a key provider's (Entra ID, a vault) changes as it refreshes
        call.meter.record(
            error, call_id=info.call_id, endpoint_host=self.host, model=call.model, route=call.route.name, request=call.request,
            candidates=info.candidates or texts, chosen=info.chosen, scores=info.scores, usage=usage, usage_counted=call.usage_counted,
            latency_s=info.latency_s, cache_hit=info.cache_hit, retries=info.retries, **call.logged_spend(),
        )
        call.ended()  # after the record is queued: a close waiting for this call closes the log after it

    def fail(self, call: Call, error: BaseException, usage: Json | None = None) -> None:
        """Charge what was sent, release the rest of what was reserved and log the failed call with its `usage`; the caller
        re-raises. The claim and the gate are given back however the charge goes, so that no other call waits on them."""
        try:
            charge_sent(self, call)
            call.meter.release(call.reservation)  # a ledger out of reach: owed, and a warning
            call.reservation = None
        finally:
            self.unclaim(call)
            ungate(self, call)
        if call.admission is not None and call.info.requests == 0 and not (call.lost or answer_lost(error)):  # never run: room back
            give_room_back(call)
        call.admission = None
        self.record(call, [], call.settled if usage is None else usage, error)


def checked(core: Core, route: Route, params: Json, overrides: Json) -> Call:
    """The call for a checked request (an iterator in it read once, to send what was read), with the
    client's options until the flow merges its overrides (`flows.begin`) and `prepare`s it."""
    params = as_sent(params)
    validate(route, params)
    call = Call(route, params, core.opts, BlackBoxInfo(call_id=new_call_id()), want=1, io_in_place=core.io_in_place, overrides=overrides)
    call.ended = core.opened.track(call)
    return call


def prepare(core: Core, call: Call) -> Call:
    """The call under its options: soft prompt named, candidates to gather, cache key (before sending)."""
    opts, params, route = call.opts, call.params, call.route
    if opts.soft_prompt is not None or core.backend is not None:
        params = call.params = core.with_soft_prompt(opts, params)
    call.want = int(params["n"]) if given(params.get("n")) else 1
    if opts.reranker is not None and opts.rerank_n > call.want:
        call.want = opts.rerank_n
    if opts.beam is not None and opts.reranker is not None and route not in (CHAT, EMBEDDINGS):  # embeddings are never reranked
        raise ConfigError("beam search reranks chat completions only")
    if call.prompts > 1:  # choices of several prompts share one list: no bucket, no reranking, no fan-out
        opts = call.opts = replace(opts, cache=None, reranker=None)
        call.want = call.n
    if opts.log is not None or opts.cache is not None:
        canonical = canonical_params(params)  # once, for the log and the key; fails here, before sending
        if opts.log is not None:
            call.request = canonical
        if opts.cache is not None:
            keyed = with_default_query({k: v for k, v in canonical.items() if k not in SDK_PARAMS}, params, core.inner.default_query)
            keyed = with_headers(keyed, params, core.inner.default_headers)
            call.key = opts.cache.key_of_canonical(route=route.name, endpoint=core.endpoint, canonical=keyed)
    return call


def charge_sent(core: Core, call: Call) -> None:
    """Settle a failing call for what the server has: the answers that arrived, the requests still out when
    an interrupt came (`abandoned`), and the worst case of each whose answer was lost (`_lost`), so that its
    cost is never settled at $0 and its rate window keeps what it used."""
    if not (call.arrived or call.in_flight or call.lost) or (call.reservation is None and call.admission is None):
        return
    usages = [core.count.of_response(call, answer.to_dict(warnings=False)) for answer in call.arrived]
    if call.in_flight:
        usages += abandoned(core, call)
    usages += call.lost  # requests whose answers were lost: their worst cases (`_lost`)
    core.settle(call, usage_to_charge(usages))  # with requests in flight or answers lost, a count that teaches the endpoint nothing
    call.in_flight = 0
    call.lost = []


def abandoned(core: Core, call: Call) -> list[Json]:
    """The requests still out when an interrupt came (a cancelled task, Ctrl-C): the server has them and bills
    them, answered or not. Under a budget each is charged as a lost answer (the choices reserved and not
    arrived, shared among them); streamed or without a budget, their prompts as counted."""
    if call.reservation is None or call.stream:
        return [core.count.counted(call, [], call.in_flight)]
    got = sum(len(getattr(answer, "choices", None) or [answer]) for answer in call.arrived)
    choices = max(1, (call.reservation.n - got) // call.in_flight)
    return [call.worst_case(choices) for _ in range(call.in_flight)]


def give_room_back(call: Call) -> None:
    """Release the rate-limit admission of a call never sent; a store out of reach is a warning (the call's
    own error goes on, and the room comes back as the admission leaves the window)."""
    try:
        call.opts.rate_limit.release(call.admission)
    except StoreUnavailableError as unreleased:
        logger.warning("call %s: its rate-limit admission could not be released now: %s", call.info.call_id, unreleased)


def replay(error: Exception, send: Callable[[], Any]) -> Callable[[], Any]:
    """`send` for the retry policy once a first attempt, made without it (the cheap common case), failed
    with `error`: the policy's first attempt raises that error again, sending nothing; later ones send."""
    first = [error]

    def attempt() -> Any:
        if first:
            raise first.pop()
        return send()

    return attempt


def advance(flow: Generator[Any, Any, Any], result: Any, error: BaseException | None) -> tuple[bool, Any]:
    """Resume a flow with its last effect's result, or throw in its error: (True, the flow's value)
    once it returned, else (False, its next effect)."""
    try:
        return False, (flow.throw(error) if error is not None else flow.send(result))
    except StopIteration as stop:
        return True, stop.value


def build(model: Any, data: Json) -> Any:
    """An openai model from JSON: validated (fast, in pydantic-core), or built leniently as the
    openai client does for what a quirky server sent."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        logger.debug("%s built without validation (%d fields out of its type): %s", model.__name__, error.error_count(), error)
        return model.construct(**data)


def keep_http(kept: KeptHttp, raw: Any) -> Any:
    """Keep a raw response's HTTP exchange; the typed response it parses to."""
    kept.response = raw.http_response
    return raw.parse()
