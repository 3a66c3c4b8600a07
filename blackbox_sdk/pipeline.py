"""The path every call takes: validate, cache lookup, budget reserve, send (retries, fan-out),
settle, store, rerank, log, and `response.blackbox`. Sync and async share all but the sending.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import httpx2
import pydantic
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .cache import canonical_params
from .calllog import new_call_id
from .candidates import (
    CHAT,
    COMPLETIONS,
    Candidate,
    Route,
    chunks_from_candidates,
    response_from_candidates,
    split_chunks,
    split_response,
    sum_usage,
    usage_chunk,
)
from .errors import ConfigError, EmbeddingsNotSupportedError
from .info import BlackBoxInfo, attach
from .logs import logger
from .options import Options
from .validation import given, validate_embedding

__all__ = ["Call", "Core", "EMBEDDINGS", "MAX_FANOUT_WORKERS", "StepTally", "add_usage", "build", "new_call_id"]

Json = dict[str, Any]
EMBEDDINGS = Route(name="embeddings", object="list", chunk_object="")
SDK_PARAMS = ("n", "stream", "stream_options")
BEAM_OWN_PARAMS = ("messages", "model", "n", "stream", "stream_options", "stop")  # the beam sampler sets these  # left out of cache keys: a bucket serves any n, streamed or not
MAX_FANOUT_WORKERS = 8


@dataclass
class Call:
    """One call's request and the SDK's running account of it."""

    route: Route
    params: Json
    opts: Options
    info: BlackBoxInfo
    want: int  # candidates to gather: the caller's n, or rerank_n when reranking
    started: float = field(default_factory=time.perf_counter)
    key: str | None = None
    reservation: Any = None
    usage_counted: bool = False
    request: Json = field(default_factory=dict)  # the request as the log keeps it
    overrides: Json = field(default_factory=dict)  # the caller's per-call SDK options

    @property
    def n(self) -> int:
        """How many choices the caller asked for."""
        n = self.params.get("n")
        return int(n) if given(n) else 1

    @property
    def output_cap(self) -> str:
        """The name the caller used for the output-token cap (`max_completion_tokens` for o-series / gpt-5)."""
        return "max_completion_tokens" if given(self.params.get("max_completion_tokens")) else "max_tokens"

    @property
    def prompts(self) -> int:
        """How many prompts a legacy completions call carries (each gets n choices); 1 for chat."""
        prompt = self.params.get("prompt")
        if self.route is CHAT or not isinstance(prompt, list) or not prompt or isinstance(prompt[0], int):
            return 1
        return len(prompt)

    @property
    def stream(self) -> bool:
        """Whether the caller asked for a stream."""
        return bool(self.params.get("stream"))

    @property
    def include_usage(self) -> bool:
        """Whether the caller's stream asked for a final usage chunk."""
        options = self.params.get("stream_options")
        return isinstance(options, Mapping) and bool(options.get("include_usage"))


class Core:
    """What one client's calls share: the inner openai client, the endpoint, options and counters."""

    def __init__(self, inner: Any, opts: Options, *, endpoint: str, local: bool, backend: Any = None) -> None:
        self.inner = inner
        self.opts = opts
        self.endpoint = endpoint
        self.local = local
        self.backend = backend
        self.ignores_n: bool | None = None  # learnt from the first multi-choice answer
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- before sending
    def begin(self, route: Route, params: Json, overrides: Json) -> Call:
        """Build the call: options with per-call overrides, cache key, how many candidates to gather."""
        opts = self.opts.merge(**overrides)
        if opts.soft_prompt is not None:
            params = self.with_soft_prompt(opts, params)
        info = BlackBoxInfo(call_id=new_call_id())
        want = int(params["n"]) if given(params.get("n")) else 1
        if opts.reranker is not None and opts.rerank_n > want:
            want = opts.rerank_n
        call = Call(route=route, params=params, opts=opts, info=info, want=want, overrides=overrides)
        if opts.beam is not None and opts.reranker is not None and route is not CHAT:
            raise ConfigError("beam search reranks chat completions only")
        if opts.log is not None:
            call.request = canonical_params(params)  # fails here, before sending, if it can't be logged
        if call.prompts > 1:  # choices of several prompts share one list: no bucket, no reranking, no fan-out
            opts = call.opts = replace(opts, cache=None, reranker=None)
            call.want = call.n
        if opts.cache is not None:
            keyed = {k: v for k, v in params.items() if k not in SDK_PARAMS}
            call.key = opts.cache.key(route=route.name, endpoint=self.endpoint, params=keyed)
        return call

    def check_soft_prompt(self, opts: Options) -> None:
        """A soft prompt needs an endpoint that takes input embeddings: refuse before anything is spent."""
        if opts.soft_prompt is None:
            return
        if self.backend is None or not getattr(self.backend, "supports_embeddings", False):
            raise EmbeddingsNotSupportedError(
                f"{self.endpoint} does not take input embeddings, so a soft prompt can't be served there; "
                "use a local model (base_url='hf:...')"
            )

    def with_soft_prompt(self, opts: Options, params: Json) -> Json:
        """The request with the soft prompt registered on the local model and named in the body."""
        self.check_soft_prompt(opts)
        prompt = opts.soft_prompt
        self.backend.register_soft_prompt(prompt.name, prompt.embeds)
        body = params.get("extra_body") if given(params.get("extra_body")) else {}
        return {**params, "extra_body": {**body, "soft_prompt": prompt.name}}

    def lookup(self, call: Call) -> list[Candidate]:
        """Stored candidates for this request, at most `want`; foreign entries are skipped."""
        if call.key is None or call.opts.cache is None:
            return []
        found = []
        for entry in call.opts.cache.get(call.key):
            try:
                found.append(Candidate.from_json(entry))
            except (KeyError, TypeError, ValueError):
                continue
        return found[: call.want]

    def prompt_count(self, call: Call) -> Any:
        """Prompt tokens of one request as a `TokenCount`: the local model's tokenizer when local, else tiktoken."""
        from . import tokens

        model = str(call.params.get("model", ""))
        if call.route is CHAT:
            messages = list(call.params["messages"])
            if self.backend is not None:
                return tokens.TokenCount(int(self.backend.chat_prompt_tokens(messages)), "local tokenizer", True)
            return tokens.count_chat_tokens(messages, model, tools=call.params.get("tools"))
        counter = self.backend.count_tokens if self.backend is not None else None
        prompt = call.params.get("prompt") if call.route is not EMBEDDINGS else call.params.get("input")
        return tokens.count_input_tokens(prompt, model, tokenizer=counter)

    def prompt_tokens(self, call: Call) -> int:
        """Prompt tokens of one request."""
        return int(self.prompt_count(call).tokens)

    def completion_tokens(self, call: Call, text: str) -> int:
        """Tokens of one answer, counted because the server did not say."""
        from . import tokens

        counter = self.backend.count_tokens if self.backend is not None else None
        return tokens.count_tokens(text, str(call.params.get("model", "")), tokenizer=counter).tokens

    def reserve(self, call: Call, count: int) -> tuple[int, int | None]:
        """Reserve the worst case for `count` candidates; returns (count, max output tokens) after the policy."""
        budget = call.opts.budget
        max_tokens = call.params.get(call.output_cap)
        max_tokens = int(max_tokens) if given(max_tokens) else None
        if call.route is EMBEDDINGS:
            max_tokens = 0
        if budget is None:
            return count, max_tokens
        prompt = self.prompt_count(call)
        call.reservation = budget.reserve(
            model=str(call.params.get("model", "")),
            prompt_tokens=prompt,
            max_output_tokens=max_tokens,
            n=count * call.prompts,
            prompt_per_choice=self.ignores_n is not False,  # until the server is seen to honour n
            key=call.opts.budget_key,
            local=self.local,
            call_id=call.info.call_id,
        )
        granted = max(1, call.reservation.n // call.prompts)
        return granted, call.reservation.max_output_tokens or None

    def request_params(self, call: Call, count: int, max_tokens: int | None, seed: int | None) -> Json:
        """What the inner client is sent for `count` candidates (the output cap under the caller's name)."""
        params = {k: v for k, v in call.params.items() if k != "n"}
        if count > 1 or given(call.params.get("n")):
            params["n"] = count
        if max_tokens is not None:
            params[call.output_cap] = max_tokens
        if seed is not None:
            params["seed"] = seed
        return params

    def seeds(self, call: Call, count: int) -> list[int | None]:
        """Distinct seeds for fanned-out requests: the caller's seed + i, else random after the first."""
        seed = call.params.get("seed")
        if given(seed):
            return [int(seed) + i for i in range(count)]
        return [None] + [secrets.randbelow(2**31) for _ in range(count - 1)]

    # ---------------------------------------------------------------- after receiving
    def usage_of(self, call: Call, response: Json) -> Json:
        """The response's usage, or counted tokens when the server sent none."""
        usage = response.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            return usage
        call.usage_counted = True
        texts = [call.route.text(c) for c in response.get("choices") or []]
        prompt = self.prompt_tokens(call)
        completion = sum(self.completion_tokens(call, t) for t in texts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def settle(self, call: Call, usage: Json) -> None:
        """Settle the reservation from real usage; the cost lands on `call.info`."""
        if call.reservation is None:
            return
        details = usage.get("prompt_tokens_details") or {}
        call.info.cost_usd = float(
            call.opts.budget.settle(
                call.reservation,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0),
            )
        )
        call.reservation = None

    def settle_reserved(self, call: Call) -> None:
        """Settle at the reserved worst case: for raw streams, whose usage the SDK does not see."""
        held = call.reservation
        if held is not None:
            self.settle(call, {"prompt_tokens": held.prompt_tokens, "completion_tokens": held.max_output_tokens * held.n})

    def release(self, call: Call) -> None:
        """Give back an unused reservation."""
        if call.reservation is not None:
            call.opts.budget.release(call.reservation)
            call.reservation = None

    def store(self, call: Call, fresh: list[Candidate]) -> None:
        """Append complete fresh candidates to the request's bucket."""
        if call.key is not None and call.opts.cache is not None and fresh:
            call.opts.cache.extend(call.key, [c.to_json() for c in fresh])

    def choose(self, call: Call, candidates: list[Candidate]) -> list[Candidate]:
        """The candidates to return: reranked best-first when a reranker is on, `n` of them."""
        info = call.info
        if call.opts.reranker is None or len(candidates) <= 1:
            info.chosen = list(range(min(call.n, len(candidates))))
            return candidates[: call.n]
        from .rerank import rank, question_of

        texts = [call.route.text(c.choice) for c in candidates]
        scores = call.opts.reranker(question_of(call.route, call.params), texts)
        info.candidates, info.scores = texts, [float(s) for s in scores]
        info.chosen = rank(info.scores)[: call.n]
        return [candidates[i] for i in info.chosen]

    def record(self, call: Call, candidates: list[Candidate], usage: Json | None, error: BaseException | None) -> None:
        """One call-log record for the call, with its candidates, scores, cost and outcome."""
        info = call.info
        info.latency_s = time.perf_counter() - call.started
        info.usage_counted = call.usage_counted
        logger.info(
            "%s %s: %s tokens, $%.6f, cache %s, %d requests, %d retries%s",
            call.route.name, call.params.get("model"), (usage or {}).get("total_tokens", "?"), info.cost_usd,
            "hit" if info.cache_hit else "miss", info.requests, info.retries, f", error {type(error).__name__}" if error else "",
        )
        log = call.opts.log
        if log is None:
            return
        from .calllog import CallRecord

        log.record(
            CallRecord(
                call_id=info.call_id,
                created=time.time(),
                endpoint_host=httpx2.URL(self.endpoint).host if "://" in self.endpoint else self.endpoint,
                model=str(call.params.get("model", "")),
                route=call.route.name,
                request=call.request,
                candidates=info.candidates or [call.route.text(c.choice) for c in candidates],
                chosen=info.chosen,
                scores=info.scores,
                usage=usage,
                usage_counted=call.usage_counted,
                cost_usd=info.cost_usd,
                latency_s=info.latency_s,
                cache_hit=info.cache_hit,
                error=None if error is None else f"{type(error).__name__}: {error}",
                retries=info.retries,
                key=call.opts.budget_key,
                extra={"requests": info.requests, "cached_candidates": info.cached_candidates},
            )
        )

    def fail(self, call: Call, error: BaseException) -> None:
        """Release what was reserved and log the failed call; the caller re-raises."""
        self.release(call)
        self.record(call, [], None, error)

    def account(self, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None) -> tuple[list[Candidate], Json]:
        """Settle the reservation, store fresh candidates; all candidates and their total usage."""
        info = call.info
        info.cached_candidates = len(stored)
        info.cache_hit = bool(stored) and not fresh
        if usage is not None:
            self.settle(call, usage)
        self.store(call, fresh)
        total = sum_usage(stored) if usage is None else add_usage(sum_usage(stored), usage)
        return stored + fresh, total

    def finish(self, call: Call, stored: list[Candidate], fresh: list[Candidate], usage: Json | None, original: Any = None) -> Any:
        """Account, choose, log; the typed response with `.blackbox` (the server's own object when untouched)."""
        everything, total = self.account(call, stored, fresh, usage)
        chosen = self.choose(call, everything)
        if original is None or stored or call.opts.reranker is not None or call.usage_counted:
            model = ChatCompletion if call.route is CHAT else Completion
            original = build(model, response_from_candidates(call.route, chosen, total))
        self.record(call, everything, total, None)
        return attach(original, call.info)

    def chunk(self, call: Call, data: Json) -> Any:
        """A typed stream chunk from its JSON."""
        return build(ChatCompletionChunk if call.route is CHAT else Completion, data)

    def replay_response(self) -> httpx2.Response:
        """The HTTP response a stream served wholly from the cache reports as its `.response`."""
        return httpx2.Response(200, headers={"content-type": "text/event-stream", "x-blackbox-cache": "hit"})

    def pieces(self, call: Call, responses: list[Json]) -> tuple[list[Candidate], Json]:
        """Split received responses into candidates and their total usage."""
        fresh: list[Candidate] = []
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for response in responses:
            usage = self.usage_of(call, response)
            fresh += split_response(call.route, response, usage)
            total = add_usage(total, usage)
        return fresh, total

    def stream_pieces(self, call: Call, chunks: list[Json], usages: list[Json]) -> tuple[list[Candidate], Json]:
        """Split a finished stream's chunks into candidates, with the server's usage or a count."""
        if usages:
            usage = usages[0]
            for extra in usages[1:]:
                usage = add_usage(usage, extra)
        else:
            call.usage_counted = True
            per_choice = split_chunks(call.route, chunks, {})
            prompt = self.prompt_tokens(call) * max(1, call.info.requests)
            completion = sum(self.completion_tokens(call, call.route.text(c.choice)) for c in per_choice)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return split_chunks(call.route, chunks, usage), usage


    def replay(self, call: Call, stored: list[Candidate]) -> list[Json]:
        """Account and log a stream served wholly from the cache; its chunks, usage last when asked."""
        everything, total = self.account(call, stored, [], None)
        call.info.chosen = list(range(len(everything)))
        self.record(call, everything, total, None)
        chunks = list(chunks_from_candidates(call.route, stored))
        if call.include_usage:
            chunks.append(usage_chunk(call.route, stored[0].meta, total))
        return chunks

    def relay(self, chunk: Any, offset: int, usages: list[Json], indices: set[int]) -> tuple[Json | None, bool]:
        """A live chunk's JSON re-indexed by `offset` (None for a usage-only chunk, which is held back
        and summed), and whether the original object can be passed on unchanged."""
        data = chunk.to_dict()
        usage = data.pop("usage", None)
        if usage:
            usages.append(usage)
        if not data.get("choices"):
            return None, False
        for choice in data["choices"]:
            choice["index"] = offset + int(choice.get("index") or 0)
            indices.add(choice["index"])
        return data, offset == 0 and not usage

    def abort(self, call: Call, collected: list[Json], usages: list[Json], error: BaseException | None) -> None:
        """A stream that did not end normally: charge what arrived, store nothing, log the error."""
        if collected or usages:
            _, usage = self.stream_pieces(call, collected, usages)
            self.settle(call, usage)
        if isinstance(error, GeneratorExit) or error is None:
            error = RuntimeError("stream closed before its end")
        self.fail(call, error)

    def method(self, route: Route) -> Any:
        """The inner client's `create` for a route."""
        return self.inner.chat.completions.create if route is CHAT else self.inner.completions.create

    def count_retry(self, call: Call) -> None:
        """Count one retry on the call (fan-out threads share it)."""
        with self._lock:
            call.info.retries += 1

    def unstreamed(self, call: Call) -> Call:
        """The same call asking for a whole response (to rerank before streaming the winner)."""
        params = {k: v for k, v in call.params.items() if k not in ("stream", "stream_options")}
        return replace(call, params=params)

    # ---------------------------------------------------------------- step-wise reranking
    def beaming(self, call: Call) -> bool:
        """Whether this call runs the adapter-guided beam search."""
        return call.opts.reranker is not None and call.opts.beam is not None

    def beam_run(self, call: Call, create: Callable[[Route, Json], Any]) -> Any:
        """Run the beam search with step calls made through `create`; the search's result and tally."""
        from .beam import beam_search, client_sampler
        from .rerank import question_of

        options, tally = call.opts.beam, StepTally(create)
        messages = list(call.params["messages"])
        extra = {k: v for k, v in call.params.items() if k not in BEAM_OWN_PARAMS}
        sample = client_sampler(tally, str(call.params["model"]), mode=options.mode, messages=messages[:-1], **extra)
        result = beam_search(
            question_of(CHAT, call.params), sample, call.opts.reranker, beam=options.beam, candidates=options.candidates,
            max_steps=options.max_steps, answer_marker=options.answer_marker, separator=options.separator,
        )
        return result, tally

    def beam_response(self, call: Call, result: Any, tally: StepTally) -> Any:
        """The best beams as a ChatCompletion; every final beam and its score on `.blackbox`; logged."""
        info = call.info
        beams = list(result.beams) or [(result.text, result.score)]
        info.candidates, info.scores = [text for text, _ in beams], [float(score) for _, score in beams]
        info.chosen = list(range(min(call.n, len(beams))))
        info.cost_usd, info.requests, info.retries = tally.cost, tally.requests, tally.retries
        body = {
            "id": f"chatcmpl-{info.call_id}", "object": "chat.completion", "created": int(time.time()),
            "model": str(call.params.get("model", "")), "usage": tally.usage,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": beams[i][0]}, "finish_reason": "stop"}
                for i in info.chosen
            ],
        }
        self.record(call, [], tally.usage, None)
        return attach(build(ChatCompletion, body), info)

    def whole_stream_chunks(self, call: Call, whole: Any) -> list[Any]:
        """A whole (reranked) response as the chunks of a stream, usage last when asked."""
        chosen = split_response(call.route, whole.to_dict(), whole.usage.to_dict() if whole.usage else {})
        chunks = [self.chunk(call, data) for data in chunks_from_candidates(call.route, chosen)]
        if call.include_usage and whole.usage is not None:
            chunks.append(self.chunk(call, usage_chunk(call.route, chosen[0].meta, whole.usage.to_dict())))
        return chunks

    # ---------------------------------------------------------------- embeddings
    def begin_embedding(self, params: Json, overrides: Json) -> Call:
        """An embeddings call, keyed on the caller's own arguments (not the wire's base64 default)."""
        validate_embedding(params)
        return self.begin(EMBEDDINGS, params, overrides)

    def lookup_embedding(self, call: Call) -> Json | None:
        """A stored embeddings response for this request, or None."""
        if call.key is None or call.opts.cache is None:
            return None
        for entry in call.opts.cache.get(call.key):
            if isinstance(entry.get("response"), dict) and isinstance(entry["response"].get("data"), list):
                return entry["response"]
        return None

    def finish_embedding(self, call: Call, response: Any, stored: Json | None) -> Any:
        """Settle, store, log; the typed embeddings response with `.blackbox`."""
        info = call.info
        if stored is not None:
            info.cache_hit, info.cached_candidates = True, 1
            response = build(CreateEmbeddingResponse, stored)
        usage = response.usage.to_dict() if response.usage is not None else None
        if usage is None:
            call.usage_counted = True
            usage = {"prompt_tokens": self.prompt_tokens(call), "total_tokens": self.prompt_tokens(call)}
        if stored is None:
            self.settle(call, usage)
            if call.key is not None and call.opts.cache is not None:
                call.opts.cache.extend(call.key, [{"response": response.to_dict()}])
        self.record(call, [], usage, None)
        return attach(response, info)


class StepTally:
    """A client-like view for the beam sampler: its `create` calls run through the SDK (cached,
    budgeted, logged, never reranked), and their cost, requests and usage add up here."""

    def __init__(self, create: Callable[[Route, Json], Any]) -> None:
        self._create = create
        self.cost, self.requests, self.retries = 0.0, 0, 0
        self.usage: Json = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=lambda **params: self._run(CHAT, params)))
        self.completions = SimpleNamespace(create=lambda **params: self._run(COMPLETIONS, params))

    def _run(self, route: Route, params: Json) -> Any:
        """One step call, counted."""
        response = self._create(route, params)
        info = response.blackbox
        self.cost += info.cost_usd
        self.requests += info.requests
        self.retries += info.retries
        if response.usage is not None:
            self.usage = add_usage(self.usage, response.usage.to_dict())
        return response


def build(model: Any, data: Json) -> Any:
    """An openai model from JSON: validated (fast, in pydantic-core), or built leniently as the
    openai client does for what a quirky server sent."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError:
        return model.construct(**data)


def add_usage(a: Json, b: Json) -> Json:
    """Two usages summed (prompt, completion, total)."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(a.get(k) or 0) + int(b.get(k) or 0) for k in keys}

