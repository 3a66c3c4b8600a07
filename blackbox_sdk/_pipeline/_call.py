"""One call's request and the SDK's running account of it, as the pipeline passes it along."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx2
import openai

from .._info import BlackBoxInfo
from .._options import Options
from .._types import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Json, Parses, Route
from ._meter import Meter
from ._validation import given

REASONING_MODEL = re.compile(r"o\d|gpt-5")  # OpenAI's o-series and gpt-5 refuse `max_tokens`: they take `max_completion_tokens`
NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.WriteError, httpx2.WriteTimeout, httpx2.UnsupportedProtocol)


def answer_lost(error: BaseException) -> bool:
    """Whether a failed request reached the server with no answer back: a connection error (a timeout
    included) other than one before the request was whole on the wire (a connection never made, a write cut),
    or an answer that came but openai could not read: JSON it could not parse (`json.JSONDecodeError`), or
    under `_strict_response_validation` not of its types (`APIResponseValidationError`): generated, and billed."""
    if isinstance(error, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return True
    return isinstance(error, openai.APIConnectionError) and not isinstance(error.__cause__, NEVER_SENT)


@dataclass(frozen=True)
class Sender:
    """One request ready to send, and how many choices it asks for (what a lost answer is charged for)."""

    send: Callable[[], Any]
    choices: int

    def __call__(self) -> Any:
        """Send it."""
        return self.send()


def keeping(request: Callable[[], Any], send: Callable[[], Any]) -> Callable[[], Any]:
    """`send` (which sends `request`, wrapped), counted as the choices `request` asks for when it is a Sender."""
    return Sender(send, request.choices) if isinstance(request, Sender) else send


@dataclass
class KeptHttp:
    """The last HTTP response a call's requests got, for a raw view the SDK builds (status, headers)."""

    response: Any = None


@dataclass
class Call:
    """One call's request and the SDK's running account of it."""

    route: Route
    params: Json
    opts: Options
    info: BlackBoxInfo
    want: int  # candidates to gather: the caller's n, or rerank_n when reranking
    io_in_place: bool = False  # its "io" work is done where the flow is (the sync core's calls): no trip through the core
    started: float = field(default_factory=time.perf_counter)
    key: str | None = None
    reservation: Any = None
    admission: Any = None  # the rate limit's admission, until corrected by real usage or released
    gated: bool = False  # this call holds its uncalibrated endpoint's gate: its answer calibrates the rest
    counted_prompt: int | None = None  # the SDK's own prompt count per request, to learn the endpoint's overhead
    prompt_extra: int = 0  # what the endpoint adds to each request's prompt, as reserved (its overhead, stored context)
    context: dict[str, int | None] = field(default_factory=dict)  # stored context it continues, files it gives by reference: kind -> tokens (None: unknown)
    files: list[str] | None = None  # the files it gives by reference (`file_refs`), once worked out
    file_gates: list[str] = field(default_factory=list)  # the gates it holds of files no answer had shown (`passes_gate`)
    prompt_count: Any = None  # the prompt's TokenCount, counted once per call (`UsageCounter.prompt`)
    claimed: bool = False  # this call won the single-flight claim on its cache key: it fetches, others wait
    held: int = 0  # answers it holds (from the cache, earlier rounds): fresh seeds go on after theirs (seed + held + i), as without them
    refreshed: bool = False  # a cache="refresh" call replaced its bucket with its first answers: its later rounds append
    cut_short: bool = False  # the budget shrank the output cap: its answers are not the request's, so not stored under its key
    usage_counted: bool = False
    settled: Json | None = None  # the usage it was charged, once `account` settled it: a failure after (a reranker's) logs it
    in_flight: int = 0  # requests out and not yet answered: an interrupt (a cancelled task, Ctrl-C) leaves their prompts to charge
    cut_off: bool = False  # Ctrl-C ended a sync fan-out with requests out: charged as out, what they get later is not the call's
    arrived: list[Any] = field(default_factory=list)  # answers received and not yet settled: charged if the call fails
    lost: list[Json] = field(default_factory=list)  # worst cases of requests whose answers were lost and not yet charged (`_lost`)
    lost_tokens: int = 0  # tokens of lost answers charged on holds of their own: the rate window counts them with the call's
    recorded: bool = False  # the call has its one log record
    deferring: bool = False  # in its last step (`flows.last`): a success is logged once the step ended, an interrupt in it instead
    unrecorded: tuple[list[str], Json | None] | None = None  # the success record (texts, usage) its last step deferred
    steps: list[BlackBoxInfo] = field(default_factory=list)  # a beam search's step calls, each as it begins: what the search spent
    step_of: Call | None = None  # the beam-searched call this is a step of: its `per_call_usd` bounds the search's steps together
    request: Json = field(default_factory=dict)  # the request as the log keeps it
    overrides: Json = field(default_factory=dict)  # the caller's per-call SDK options
    valid: Callable[[str], bool] | None = None  # the caller's check of an answer (parse: it fits the schema); reranking prefers those it accepts
    kept: KeptHttp | None = None  # send through the raw view and keep the last HTTP response there (a raw view's headers)
    raw: bool = False  # one request the caller reads (a raw stream, a streaming-response view): never fanned out
    sent_cap: int | None = None  # the output cap its last request carried (`caps_to_send`): what one choice may use
    ended: Callable[[], None] = lambda: None  # called once it is logged: its client's `Opened.track` stops counting it

    def defer(self, texts: list[str], usage: Json | None) -> bool:
        """Keep a success's record for the end of the call's last step (`flows.last`); whether it was kept."""
        if self.deferring:
            self.unrecorded = (texts, usage)
        return self.deferring

    def spent_in_call(self) -> float:
        """What the call was charged already, as its per-call cap counts it: its own earlier rounds and lost answers, and for a
        beam search's step the search's other steps (a beam call is one call to its caller, and `per_call_usd` bounds it whole)."""
        others = 0.0 if self.step_of is None else sum(step.cost_usd for step in self.step_of.steps if step is not self.info)
        return self.info.cost_usd + others

    def logged_spend(self) -> Json:
        """The cost and extras of the call's log record. A beam call's steps are each logged with what they were charged, so
        its own record holds 0 and their sum under `steps_cost_usd`: summed over the log, spend stays the ledger's."""
        info = self.info
        extra: Json = {"requests": info.requests, "cached_candidates": info.cached_candidates}
        if not self.steps:
            return {"cost_usd": info.cost_usd, "extra": extra}
        return {"cost_usd": 0.0, "extra": {**extra, "steps_cost_usd": info.cost_usd}}

    def worst_case(self, choices: int) -> Json:
        """The usage of one request of `choices` at its worst as reserved, for an answer the SDK never saw (`_lost`):
        the prompt, and each choice's output cap unless streamed (a server stops a stream whose reader left; a
        `background` response goes on generating)."""
        held = self.reservation
        completion = 0 if self.stream and self.sent("background") is not True else held.max_output_tokens * choices
        return {"prompt_tokens": held.prompt_tokens, "completion_tokens": completion, "total_tokens": held.prompt_tokens + completion}

    def generations(self, choices: int) -> int:
        """How many answers the server generates, and bills, for each prompt of a request of `choices`:
        a completions call's `best_of` when it asks for more."""
        best_of = self.params.get("best_of") if self.route is COMPLETIONS else None
        return max(choices, int(best_of)) if given(best_of) else choices

    def reserved_generations(self, count: int, ignores_n: bool | None) -> int:
        """The answers a call of `count` choices may have the server generate, for each prompt: while the server may
        ignore `n`, the SDK may send `count` single requests, each carrying `best_of` (a server that honours it
        generates that many for each); else `generations`."""
        if count > 1 and self.prompts == 1 and ignores_n is not False and not self.raw:
            return count * self.generations(1)
        return self.generations(count)

    @cached_property
    def meter(self) -> Meter:
        """The budget and call log this call is accounted on."""
        return Meter.of(self.opts)

    @property
    def n(self) -> int:
        """How many choices the caller asked for."""
        n = self.params.get("n")
        return int(n) if given(n) else 1

    @property
    def model(self) -> str:
        """The model named in the request, as budgets price it and the log names it."""
        return str(self.params.get("model", ""))

    def output_cap(self, refused: bool = False) -> str:
        """The output-token cap's name: the Responses API's `max_output_tokens`; in chat the one the caller
        used, else `max_completion_tokens` for the models that refuse `max_tokens` (or whose endpoint was
        seen to: `refused`)."""
        if self.route is RESPONSES:
            return "max_output_tokens"
        if given(self.params.get("max_completion_tokens")):
            return "max_completion_tokens"
        if self.route is CHAT and not given(self.params.get("max_tokens")) and (refused or REASONING_MODEL.match(self.model)):
            return "max_completion_tokens"
        return "max_tokens"

    @property
    def relies_on_cap(self) -> bool:
        """Whether the SDK's accounting relies on the output cap sent: a budget reserves for it, a
        tokens-per-minute limit admits the call at it."""
        limits = self.opts.rate_limit
        return self.opts.budget is not None or (limits is not None and limits.counts_tokens)

    @property
    def cap_sent(self) -> int | None:
        """The output-token cap the call is reserved and admitted at: the caller's; else (none, or a cap
        of 0, `zero_cap`) the budget's default, which it reserves; else, under a tokens-per-minute limit,
        that limit's default (a call without one could use any number of tokens); None for embeddings
        and when nothing bounds it."""
        if self.route is EMBEDDINGS:
            return None
        if self.caps_given and not self.zero_cap:
            return max(self.caps_given.values())  # a server may honour either: the larger bounds what it bills
        if self.opts.budget is not None:
            return int(self.opts.budget.default_max_output_tokens)
        limits = self.opts.rate_limit
        return limits.default_max_output_tokens if limits is not None and limits.counts_tokens else None

    @property
    def zero_cap(self) -> bool:
        """Whether the caller's output caps are all 0 (a scoring call with `echo`): OpenAI generates nothing, but
        llama.cpp reads 0 as no cap and generates on to the end of its context, so it bounds nothing to rely on; it is
        sent as given (no other cap means the same) and reserved as a call without one, never shrunk."""
        return bool(self.caps_given) and max(self.caps_given.values()) == 0

    def caps_to_send(self, granted: int, refused: bool = False) -> dict[str, int]:
        """The output caps a request carries in place of the caller's, each at most `granted`, noted as
        `sent_cap`: the caller's own (a server may honour either), or the cap under `output_cap`. While
        the SDK relies on the cap, a lone `max_completion_tokens` goes as `max_tokens`, which every chat
        server honours (llama.cpp ignores the other), but to OpenAI's reasoning models, which refuse it,
        and to an endpoint seen to refuse it for this model (`refused`: a reasoning model under another name)."""
        caps = self.caps_given or {self.output_cap(refused): granted}
        lone = self.relies_on_cap and self.route is not RESPONSES and set(caps) == {"max_completion_tokens"}
        if lone and not (refused or REASONING_MODEL.match(self.model)):
            caps = {"max_tokens": caps["max_completion_tokens"]}  # never both: OpenAI refuses a request that carries both
        sent = {name: min(cap, granted) for name, cap in caps.items()}
        self.sent_cap = max(sent.values())
        return sent

    def past_cap(self, usage: Json, choices: int) -> bool:
        """Whether an answer of `choices` (a completions call's `best_of` generations counted) reports more
        completion tokens than the cap sent allows them: the endpoint ignored the cap."""
        used = usage.get("completion_tokens")
        if self.sent_cap is None or self.route is RESPONSES or not isinstance(used, int) or choices < 1:
            return False
        per_prompt = -(-choices // self.prompts)
        return used > self.sent_cap * max(choices, self.prompts * self.generations(per_prompt))

    @cached_property
    def caps_given(self) -> dict[str, int]:
        """The output caps the caller gave, by name (chat and completions may carry both `max_tokens` and
        `max_completion_tokens`; llama.cpp honours only `max_tokens`); read once (a soft prompt changes no cap)."""
        names = ("max_output_tokens",) if self.route is RESPONSES else ("max_tokens", "max_completion_tokens")
        return {name: int(self.params[name]) for name in names if given(self.params.get(name))}

    @property
    def prompts(self) -> int:
        """How many prompts a legacy completions call carries (each gets n choices): its list of
        texts, or its batch of `prompt_embeds` (vLLM's, in `extra_body`); 1 for the other routes."""
        if self.route is not COMPLETIONS:
            return 1
        prompt = self.params.get("prompt")
        texts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else int(bool(prompt))
        return max(1, texts + len(self.prompt_embeds))

    def sent(self, name: str) -> Any:
        """A body field as the request sends it: `extra_body`'s, which openai merges over the arguments, else the argument."""
        body = self.params.get("extra_body")
        return body[name] if isinstance(body, Mapping) and name in body else self.params.get(name)

    def parses(self, choice: Json) -> bool:
        """Whether an answer may be stored and served: any, unless the caller's own parse (`Parses`: `parse`, a stream
        helper given a type or strict tools) rejects its text or a strict tool call's arguments, or it is a chat answer
        cut by the output cap or stopped by a content filter (openai's helper raises at each); one with no text (a refusal,
        tool calls) may."""
        if not isinstance(self.valid, Parses):
            return True
        if self.route is CHAT and choice.get("finish_reason") in ("length", "content_filter"):
            return False
        text = self.route.text(choice)
        return (not text or self.valid(text)) and self.valid.takes_calls(choice)

    @property
    def framed(self) -> int:
        """How many texts the endpoint may add tokens of its own to (a BOS, a template): each prompt of a completions call,
        each input of an embeddings list (texts, or lists of token ids); 1 for the rest. Calibration is learnt and reserved per text."""
        found = self.params.get("input")
        if self.route is EMBEDDINGS and isinstance(found, list) and found and not isinstance(found[0], int):
            return len(found)
        return self.prompts

    @property
    def prompt_embeds(self) -> list[Any]:
        """A completions call's `prompt_embeds` items (sent in `extra_body`, or as an extra keyword); [] when none."""
        body = self.params.get("extra_body")
        found = body.get("prompt_embeds") if isinstance(body, Mapping) else self.params.get("prompt_embeds")
        if self.route is not COMPLETIONS or not given(found):
            return []
        return list(found) if isinstance(found, list) else [found]

    @property
    def seed(self) -> int | None:
        """The caller's seed, fanned-out requests' base: `seed`, else one in `extra_body` (sent last, it is the one the server gets)."""
        body = self.params.get("extra_body")
        seed = self.params.get("seed")
        seed = body.get("seed") if not given(seed) and isinstance(body, Mapping) else seed
        return int(seed) if given(seed) else None

    @property
    def stream(self) -> bool:
        """Whether the caller asked for a stream."""
        return bool(self.params.get("stream"))

    @property
    def include_usage(self) -> bool:
        """Whether the caller's stream asked for a final usage chunk."""
        options = self.params.get("stream_options")
        return isinstance(options, Mapping) and bool(options.get("include_usage"))

    @property
    def usage_asked(self) -> bool:
        """Whether the SDK asks the server for the stream's usage (under a budget: billed tokens, hidden ones too),
        the caller's request aside (a raw view's goes as the caller wrote it)."""
        return self.stream and self.opts.budget is not None and self.route in (CHAT, COMPLETIONS)


def seeded(params: Json, seed: int) -> Json:
    """`params` sent with `seed`: in `extra_body` too when the caller put a seed there (sent last, it would seed every request alike)."""
    body = params.get("extra_body")
    extra = {"extra_body": {**body, "seed": seed}} if isinstance(body, Mapping) and "seed" in body else {}
    return {**params, "seed": seed, **extra}


def marked_cut(call: Call, entry: Json) -> Json:
    """A fresh entry as stored: one cut at an output cap the SDK chose (the caller gave none: a budget's or a rate
    limit's default) notes that cap, since a call under a larger cap or none would have got a longer answer."""
    choice = entry.get("choice")
    if call.caps_given or call.sent_cap is None or not isinstance(choice, dict) or not call.route.cut_by_cap(choice):
        return entry
    return {**entry, "cut_at": call.sent_cap}


def fits_cap(call: Call, entry: Json) -> bool:
    """Whether a stored entry answers this call: one cut at an SDK-chosen cap serves only calls whose own cap is no larger."""
    cut_at = entry.get("cut_at")
    if cut_at is None:
        return True
    cap = call.cap_sent
    return isinstance(cut_at, int) and cap is not None and cap <= cut_at
