"""The proxy's Prometheus metrics, on a registry of each app's own (several apps in one process never clash).

    blackbox_proxy_requests_total{route, key, model, status}          every answered request; a stream by how it ended:
                                                                      200 whole, 499 its client left, 502 the upstream
                                                                      cut it (or failed it), an error's status mid-stream
    blackbox_proxy_request_duration_seconds{route, key, model}        whole request (a stream: to its last byte)
    blackbox_proxy_stream_first_byte_seconds{route, key, model}       a stream's time to its first chunk
    blackbox_proxy_tokens_total{key, model, direction="in"|"out"}     prompt and completion tokens
    blackbox_proxy_spend_usd_total{key, model}                        settled cost
    blackbox_proxy_cache_lookups_total{key, model, result="hit"|"miss"}  calls on a client with a cache
    blackbox_proxy_reranker_picks_total{key, model, candidate}        which candidate index the reranker chose
    blackbox_proxy_upstream_errors_total{key, model, status, kind}    kind: status, timeout, connection or incomplete
                                                                      (a stream that ended without its end)
    blackbox_proxy_requests_in_flight

`key` is the tenant's name ("" without a key store), never a key; `model` the name asked for, "refused"
for a model the key may not use. The numbers come from what the
SDK attaches to each response (`response.blackbox`, `usage`): nothing is read on the request path.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import openai
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .._exceptions import BlackBoxError
from .._redact import redact_text
from ..budget._policy import is_count

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
MAX_MODELS = 100  # distinct model label values kept; a client naming more gets "other" (bounded series)
REFUSED_MODEL = "refused"  # the model label of a request naming a model its key may not use (takes no slot)
MAX_LABEL_CHARS = 100
CLIENT_CLOSED = 499  # the status a request whose client left (or that was cancelled) before its answer ended is counted under (nginx's)
UPSTREAM_FAILED = 502  # the status of a stream the upstream ended short of its end (its 200 was sent already)
TIMELINE_MINUTES = 60
_PER_CALL = ("key", "model")
_PER_REQUEST = ("route", "key", "model")


def _tokens(usage: Any, name: str, responses_name: str) -> int:
    """A token count the server reported (chat's `name`, or the Responses API's), as a counter may add it: 0 for one
    that can't be real (negative, not an integer, 2**53 or more), which a Counter refuses (ValueError) or keeps for
    good (NaN) after the call was paid."""
    value = getattr(usage, name, None)
    value = getattr(usage, responses_name, 0) if value is None else value
    return value if is_count(value) else 0


def upstream_kind(exc: BaseException) -> tuple[str, str] | None:
    """(status, kind) of an upstream failure; None for anything the proxy or the SDK refused itself (the SDK's own
    `InvalidRequestError` is an `openai.BadRequestError` too, as the server's 400 would be, but nothing was sent)."""
    if isinstance(exc, BlackBoxError):
        return None
    if isinstance(exc, openai.APIStatusError):
        return str(exc.status_code), "status"
    if isinstance(exc, openai.APITimeoutError):
        return "", "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "", "connection"
    return None


class ModelNames:
    """The model label: the requested name, at most MAX_MODELS distinct ones (then "other")."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def label(self, model: object) -> str:
        """A bounded label value for what the client asked for, secrets redacted (every scraper reads it) before it is cut."""
        if not isinstance(model, str):
            return ""
        model = redact_text(model[: MAX_LABEL_CHARS * 4])[:MAX_LABEL_CHARS]  # a secret starting in what is kept is whole in what is searched
        if model in self._seen:
            return model
        if len(self._seen) >= MAX_MODELS:
            return "other"
        self._seen.add(model)
        return model


@dataclass
class KeyTally:
    """One key's figures since this proxy started (what the status page shows beside the ledger)."""

    requests: float = 0.0
    errors: float = 0.0
    spend_usd: float = 0.0
    cache_hits: float = 0.0
    cache_misses: float = 0.0


class Timeline:
    """Requests and errors per minute over the last TIMELINE_MINUTES (the status page's chart)."""

    def __init__(self) -> None:
        self._minutes: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, error: bool, now: float | None = None) -> None:
        """Count one answered request in its minute."""
        minute = int((time.time() if now is None else now) // 60)
        with self._lock:
            counts = self._minutes.get(minute)
            if counts is None:
                counts = self._minutes[minute] = [0, 0]
                for old in [m for m in self._minutes if m <= minute - TIMELINE_MINUTES]:
                    del self._minutes[old]
            counts[0] += 1
            counts[1] += error

    def series(self, now: float | None = None) -> list[tuple[int, int, int]]:
        """(minute start in epoch seconds, requests, errors) for each of the last minutes, oldest first."""
        last = int((time.time() if now is None else now) // 60)
        with self._lock:
            return [(m * 60, *self._minutes.get(m, (0, 0))) for m in range(last - TIMELINE_MINUTES + 1, last + 1)]


class ProxyMetrics:
    """The metrics of one proxy app: counters and histograms on its own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = ModelNames()
        self.timeline = Timeline()
        r = self.registry
        self.requests = Counter("blackbox_proxy_requests", "Requests answered.", (*_PER_REQUEST, "status"), registry=r)
        self.duration = Histogram(
            "blackbox_proxy_request_duration_seconds", "Whole request, to the last byte of a stream.", _PER_REQUEST, buckets=LATENCY_BUCKETS, registry=r
        )
        self.first_byte = Histogram(
            "blackbox_proxy_stream_first_byte_seconds", "A stream's time to its first chunk.", _PER_REQUEST, buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("blackbox_proxy_tokens", "Tokens in (prompt) and out (completion).", (*_PER_CALL, "direction"), registry=r)
        self.spend = Counter("blackbox_proxy_spend_usd", "Settled cost in USD.", _PER_CALL, registry=r)
        self.cache = Counter("blackbox_proxy_cache_lookups", "Calls on a client with a cache, by result.", (*_PER_CALL, "result"), registry=r)
        self.picks = Counter("blackbox_proxy_reranker_picks", "The candidate index the reranker chose.", (*_PER_CALL, "candidate"), registry=r)
        self.upstream_errors = Counter("blackbox_proxy_upstream_errors", "Upstream failures.", (*_PER_CALL, "status", "kind"), registry=r)
        self.in_flight = Gauge("blackbox_proxy_requests_in_flight", "Requests being served.", registry=r)

    def answered(self, route: str, key: str, model: str, status: int, seconds: float) -> None:
        """One request answered (a stream: when it ended) with `status`, after `seconds`."""
        self.requests.labels(route, key, model, str(status)).inc()
        self.duration.labels(route, key, model).observe(seconds)
        self.timeline.add(status >= 400)

    def called(self, key: str, model: str, info: Any, usage: Any, cached: bool) -> None:
        """What the SDK reported for a call that was served: tokens (not for a cache hit), spend, cache, the reranker's pick."""
        if usage is None and info is not None and info.usage:  # a stream that sent no usage chunk: the SDK's account of it
            usage = SimpleNamespace(**info.usage)
        if usage is not None and not (info is not None and info.cache_hit):
            self.tokens.labels(key, model, "in").inc(_tokens(usage, "prompt_tokens", "input_tokens"))
            self.tokens.labels(key, model, "out").inc(_tokens(usage, "completion_tokens", "output_tokens"))
        if info is None:
            return
        if info.cost_usd > 0:
            self.spend.labels(key, model).inc(info.cost_usd)
        if cached:
            self.cache.labels(key, model, "hit" if info.cache_hit else "miss").inc()
        if info.scores is not None and info.chosen:
            self.picks.labels(key, model, str(info.chosen[0])).inc()

    def failed(self, key: str, model: str, exc: BaseException) -> None:
        """Count an upstream failure (other refusals show only in requests_total's status)."""
        kind = upstream_kind(exc)
        if kind is not None:
            self.upstream_errors.labels(key, model, *kind).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    def by_key(self) -> dict[str, KeyTally]:
        """Each key's requests, errors, spend and cache results since start (read from the counters)."""
        tallies: dict[str, KeyTally] = defaultdict(KeyTally)
        for labels, value in _samples(self.requests, "_total"):
            tallies[labels["key"]].requests += value
            tallies[labels["key"]].errors += value if int(labels["status"]) >= 400 else 0
        for labels, value in _samples(self.spend, "_total"):
            tallies[labels["key"]].spend_usd += value
        for labels, value in _samples(self.cache, "_total"):
            if labels["result"] == "hit":
                tallies[labels["key"]].cache_hits += value
            else:
                tallies[labels["key"]].cache_misses += value
        return dict(tallies)


def _samples(metric: Any, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    """The (labels, value) of a metric's samples whose name ends with `suffix`."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


class RequestMeter:
    """One request's labels and clock: reported once, when it is answered (a stream: when it ends)."""

    def __init__(self, metrics: ProxyMetrics, route: str) -> None:
        self.metrics, self.route = metrics, route
        self.key = ""
        self.model = ""
        self.started = time.perf_counter()
        self.deferred = False  # a stream reports itself when it ends
        self.pending = True  # not answered yet
        metrics.in_flight.inc()

    def label(self, tenant: Any, model: object = None) -> None:
        """Who the request speaks for (the tenant's name) and the model it asked for."""
        self.key = "" if tenant is None else tenant.name
        if model is not None:
            self.model = self.metrics.models.label(model)

    def refused_model(self) -> None:
        """The request named a model its key may not use: a fixed label, so refused names never use up the model slots."""
        self.model = REFUSED_MODEL

    def answer(self, status: int) -> None:
        """The request is answered with `status` (counted once)."""
        if self.pending:
            self.pending = False
            self.metrics.in_flight.dec()
            self.metrics.answered(self.route, self.key, self.model, status, time.perf_counter() - self.started)

    def called(self, result: Any, cached: bool) -> None:
        """A whole answer's tokens, spend, cache result and reranker pick."""
        self.metrics.called(self.key, self.model, getattr(result, "blackbox", None), getattr(result, "usage", None), cached)

    def failed(self, exc: BaseException) -> None:
        """An exception that ended the request (counted if the upstream failed)."""
        self.metrics.failed(self.key, self.model, exc)

    def stream(self, stream: Any, cached: bool) -> MeteredStream:
        """The SDK's stream, observed: time to first chunk, usage, and the account once it is closed."""
        self.deferred = True
        return MeteredStream(stream, self, cached)


class MeteredStream:
    """An SDK stream passed through unchanged, reporting to its request's meter when closed."""

    def __init__(self, stream: Any, meter: RequestMeter, cached: bool) -> None:
        self.blackbox = stream.blackbox
        self._stream, self._meter, self._cached = stream, meter, cached
        self._usage: Any = None
        self._first = False
        self.status: int | None = None  # how the stream ended, once it has (None when closed: its client left)

    def __aiter__(self) -> MeteredStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self.status = self._ended()
            raise
        except Exception as exc:
            self._meter.failed(exc)  # the status its error is answered with is set by who sends it (`_sse.events`)
            raise
        if not self._first:
            self._first = True
            meter = self._meter
            meter.metrics.first_byte.labels(meter.route, meter.key, meter.model).observe(time.perf_counter() - meter.started)
        self._usage = getattr(chunk, "usage", None) or getattr(getattr(chunk, "response", None), "usage", None) or self._usage
        return chunk

    def _ended(self) -> int:
        """The status of a stream read to its end: 200, or UPSTREAM_FAILED when the SDK found it cut short or failed
        (no finish_reason, no `response.completed`), counted as an upstream error of kind "incomplete"."""
        if getattr(self.blackbox, "error", None) is None:
            return 200
        self._meter.metrics.upstream_errors.labels(self._meter.key, self._meter.model, "", "incomplete").inc()
        return UPSTREAM_FAILED

    async def close(self) -> None:
        """Close the SDK's stream (it settles), then report the call and the request: with how it ended, or
        CLIENT_CLOSED for a stream closed before its end (its client left)."""
        try:
            await self._stream.close()
        finally:
            if self._meter.pending:
                self._meter.metrics.called(self._meter.key, self._meter.model, self.blackbox, self._usage, self._cached)
                self._meter.answer(CLIENT_CLOSED if self.status is None else self.status)
