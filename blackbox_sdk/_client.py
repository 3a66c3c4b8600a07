"""`OpenAI` and `AsyncOpenAI`: subclasses of the openai package's clients, and `wrap` for a client
an app already built. The generating resources run through the SDK's pipeline (cache, budget,
rate limits, retries, the call log, reranking), which sends through a plain inner openai client
with max_retries=0 on the same connections; every other resource is openai's own.
"""

from __future__ import annotations

import ipaddress
import os
import re
import weakref
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import httpx2
import openai
import openai.resources as oai
from openai import DEFAULT_MAX_RETRIES
from openai._client import AsyncOpenAIWithRawResponse, AsyncOpenAIWithStreamedResponse, OpenAIWithRawResponse, OpenAIWithStreamedResponse
from openai.resources.responses import responses as oai_responses
from typing_extensions import Self

from ._exceptions import CallLogError, ConfigError, PriceMissingError, StoreUnavailableError
from ._logging import logger
from ._options import OPTION_NAMES, Opened, Options
from ._redact import remember_secret
from ._redis_url import redact_url
from ._pipeline import AsyncCore, SyncCore, offloaded
from .resources import (
    AsyncBeta,
    AsyncChat,
    AsyncCompletions,
    AsyncEmbeddings,
    AsyncRawClient,
    AsyncResponses,
    AsyncStreamedClient,
    Beta,
    Chat,
    Completions,
    Embeddings,
    RawClient,
    Responses,
    StreamedClient,
)

if TYPE_CHECKING:
    from .local import HFBackend

# Routes that spend, sent by the client itself (openai's resources the SDK does not run, or a bare
# `client.post`): with a budget set they are refused, since the SDK can't price them. Besides generating
# calls, this is what starts spending later or elsewhere: jobs and schedules, the sessions of agents,
# live and realtime calls, and the client secrets a browser spends with.
UNPRICED = re.compile(
    r"^/(chat/completions|completions|embeddings|responses(/compact)?|images/(generations|edits|variations)"
    r"|audio/(speech|transcriptions|translations|voices)|threads/(runs|[^/]+/runs(/[^/]+/submit_tool_outputs)?)"
    r"|videos(/characters|/edits|/extensions|/[^/]+/remix)?|batches|evals/[^/]+/runs|decisions|containers"
    r"|fine_tuning/(jobs(/[^/]+/resume)?|alpha/graders/run)"
    r"|agents/(sessions(/[^/]+/events)?|automations(/[^/]+/(invocations|resume))?)"
    r"|realtime/(calls(/[^/]+/accept)?|client_secrets|sessions|transcription_sessions|translations/client_secrets)"
    r"|live/sessions(/[^/]+/(accept|fork))?|chatkit/sessions)$"
)
LOCAL_BASE_URL = "http://hf.local/v1"  # what the inner client calls when a local model answers
HF_PREFIX = "hf:"


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback(url: str) -> bool:
    """Whether an endpoint runs on this machine (priced as a local model)."""
    return is_loopback_host(httpx2.URL(url).host)


# openai's other ways to name a credential or an endpoint: a client given one of them is OpenAI's, never the embedded model
_OPENAI_TARGETS = ("admin_api_key", "workload_identity", "provider", "data_residency")


def _local_target(api_key: str | None, base_url: Any, openai_kwargs: dict[str, Any]) -> Path | None:
    """The local model path for `hf:` URLs, or the embedded default when the client has no credential and no URL."""
    url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL")
    if isinstance(url, str) and url.startswith(HF_PREFIX):
        target = url[len(HF_PREFIX) :]
        if target in ("", "default"):
            from .local import default_gguf_path

            return default_gguf_path()
        return Path(target).expanduser()
    given = [api_key, *(openai_kwargs.get(name) for name in _OPENAI_TARGETS)]
    from_env = os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_ADMIN_KEY")
    if url is None and all(value is None for value in given) and not from_env:
        from .local import DEFAULT_LOCAL_MODEL, default_gguf_path

        logger.warning("no API key and no base URL: answering with the embedded local model %s", DEFAULT_LOCAL_MODEL)
        return default_gguf_path()
    return None


def _repair_log(options: Options) -> None:
    """A client with a budget and a log first writes the records of calls its ledger charged but a
    process that died never logged, so that the log's spend is the ledger's again."""
    if options.budget is None or options.log is None:
        return
    from .call_log import repair_log

    try:
        repair_log(options.log, options.budget)  # it says what it recovered
    except (CallLogError, StoreUnavailableError) as error:
        logger.warning("could not repair the call log from the budget ledger now: %s", error)


_http_clients: weakref.WeakSet[Any] = weakref.WeakSet()  # every live SDK client's httpx2 client, for the fork hook


def _forget_pooled_connections() -> None:
    """In a forked child: every SDK client's HTTP connection pools start empty, on a fresh lock. The pooled keep-alive
    sockets are also the parent's (a request on one would cross answers between processes); they are dropped, not
    closed, so nothing (a TLS close_notify) is written on them: only the child's copies of their descriptors close."""
    for http in list(_http_clients):
        for transport in (getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()):
            pool = getattr(transport, "_pool", None)
            if pool is not None and hasattr(pool, "_connections"):  # httpcore2's pools (and proxies); not a custom transport
                pool._connections, pool._requests = [], []
                if hasattr(pool, "_optional_thread_lock"):
                    pool._optional_thread_lock = type(pool._optional_thread_lock)()


os.register_at_fork(after_in_child=_forget_pooled_connections)


class _Blackbox:
    """What the SDK adds to openai's sync and async clients: options, a core that runs the generating
    resources through the pipeline, copies that keep both. The subclasses name openai's class and their
    core, and build the resources the SDK runs under openai's own types (as openai's clients do), so a
    type checker sees what it sees on openai's. Every resource the SDK does not run is openai's own,
    sent by this client with its own retries."""

    _plain: type[Any]
    _core_class: type[SyncCore] | type[AsyncCore]
    _core: SyncCore | AsyncCore

    def __init__(
        self,
        *,
        api_key: Any = None,
        base_url: str | httpx2.URL | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Any = None,
        **kwargs: Any,
    ) -> None:
        """Same arguments and environment variables as the openai client, then the SDK's options (`Options`' fields)."""
        opened = Opened()
        options = Options.build(opened, max_retries=max_retries, **{k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs})
        local = _local_target(api_key, None if base_url is None else str(base_url), kwargs)
        backend = None
        if local is not None:
            from .local import load_backend

            backend = load_backend(local)
            http_client = http_client or self._local_http_client(backend)
            api_key, base_url = api_key or "local", LOCAL_BASE_URL
        retries = options.retry.max_retries  # one count for the SDK's calls and openai's own (`retry=` may set it)
        url = {} if base_url is None else {"base_url": base_url}  # left out, as openai's default: `data_residency=` may name it
        super().__init__(api_key=api_key, max_retries=retries, http_client=http_client, **url, **kwargs)  # type: ignore[call-arg]
        inner = self._plain(api_key=api_key, max_retries=0, http_client=self._client, **url, **kwargs)  # type: ignore[attr-defined]
        _http_clients.add(self._client)  # type: ignore[attr-defined]
        remember_secret(inner.api_key)
        endpoint = f"{HF_PREFIX}{local.resolve()}" if local is not None else str(inner.base_url)
        self._core = self._core_class(inner, options, endpoint=endpoint, local=local is not None or _is_loopback(endpoint), backend=backend, opened=opened)
        self._core.check_soft_prompt(options)
        _repair_log(options)

    def _local_http_client(self, backend: Any) -> Any:
        """An httpx2 client (sync or async, by the class) whose transport answers from the local model."""
        from .local import AsyncHFTransport, HFTransport

        if self._core_class is AsyncCore:
            return httpx2.AsyncClient(transport=AsyncHFTransport(backend))
        return httpx2.Client(transport=HFTransport(backend))

    @property
    def backend(self) -> HFBackend | None:
        """The local model answering this client (`hf:` URLs and the embedded default), else None."""
        return self._core.backend

    @property
    def options(self) -> Options:
        """The SDK's options of this client: cache, budget, log, reranker, retries."""
        return self._core.opts

    if not TYPE_CHECKING:  # a type checker sees openai's own `request` (overloaded, sync or async): this one returns what it returns

        def request(self, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
            """openai's request, for what the SDK does not run; a generating route it can't price is refused under a budget."""
            if self._core.opts.budget is not None and options.method.lower() == "post" and UNPRICED.match(options.url.partition("?")[0]):
                raise PriceMissingError(
                    f"a budget is set and the SDK can't price POST {options.url}, so it would run unbudgeted: refused. "
                    "Send it from a copy without the budget: client.with_options(budget=None)"
                )
            return super().request(cast_to, options, *args, **kwargs)

    # ---------------------------------------------------------------- copies
    def copy(self, **kwargs: Any) -> Self:
        """A new client with some options changed, openai's or the SDK's; this one is left as it is."""
        ours = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
        if isinstance(kwargs.get("base_url"), str) and kwargs["base_url"].startswith(HF_PREFIX):
            raise ConfigError("copy() can't move a client to a local model: build a new client with base_url='hf:...'")
        copied = super().copy(**kwargs)  # type: ignore[misc]
        core = self._core
        endpoint = core.endpoint if "base_url" not in kwargs else copied._core.endpoint
        local = core.local if "base_url" not in kwargs else copied._core.local
        if "max_retries" in kwargs:
            ours["max_retries"] = kwargs["max_retries"]
        options = core.opts.merge(core.opened, **ours)
        copied._core = self._core_class(copied._core.inner, options, endpoint=endpoint, local=local, backend=core.backend, opened=core.opened)
        copied.max_retries = options.retry.max_retries
        return copied

    with_options = copy

    def holds_reranker(self, folder: str | Path) -> bool:
        """Whether this client (with its copies) loaded the reranker adapter in `folder` already: a copy naming it shares it."""
        return self._core.opened.holds("reranker", folder)

    def feedback(self, call_id: str, **kwargs: Any) -> None:
        """Record feedback on a logged call: reward, label, preferred candidate or reference answer."""
        log = self._core.opts.log
        if log is None:
            raise ConfigError("feedback needs a call log: OpenAI(log='calls.db')")
        log.feedback(call_id, **kwargs)

    def __repr__(self) -> str:
        return f"<blackbox_sdk.{type(self).__name__} endpoint={redact_url(self._core.endpoint)!r}>"  # a password in base_url as ***


class OpenAI(_Blackbox, openai.OpenAI):
    """`openai.OpenAI` with cache, budget, retries, a call log and reranking on every generating call."""

    _plain = openai.OpenAI
    _core_class = SyncCore

    # the resources the SDK runs, typed as openai's own: they are instances of openai's classes and return its objects
    @cached_property
    def chat(self) -> oai.Chat:
        """`client.chat`: completions through the SDK (`create`, `parse`, `stream`)."""
        return Chat(self)

    @cached_property
    def completions(self) -> oai.Completions:
        """`client.completions` (legacy text completions) through the SDK."""
        return Completions(self)

    @cached_property
    def embeddings(self) -> oai.Embeddings:
        """`client.embeddings` through the SDK."""
        return Embeddings(self)

    @cached_property
    def responses(self) -> oai_responses.Responses:
        """`client.responses`: the Responses API through the SDK (`create`, `parse`, `stream`)."""
        return Responses(self)

    @cached_property
    def beta(self) -> oai.Beta:
        """`client.beta`: openai's, its `chat` (openai's older name for `client.chat`) through the SDK."""
        return Beta(self)

    @cached_property
    def with_raw_response(self) -> OpenAIWithRawResponse:
        """`client.with_raw_response.chat.completions.create(...)`, as in openai, budgeted and logged."""
        return RawClient(self)

    @cached_property
    def with_streaming_response(self) -> OpenAIWithStreamedResponse:
        """`client.with_streaming_response.chat.completions.create(...)`, as in openai, budgeted and logged."""
        return StreamedClient(self)

    def close(self) -> None:
        """Close the connections and what the client opened from paths (those too if closing the connections fails)."""
        try:
            super().close()
        finally:
            self._core.opened.close()


class AsyncOpenAI(_Blackbox, openai.AsyncOpenAI):
    """`openai.AsyncOpenAI` with cache, budget, retries, a call log and reranking on every generating call."""

    _plain = openai.AsyncOpenAI
    _core_class = AsyncCore

    # the resources the SDK runs, typed as openai's own: they are instances of openai's classes and return its objects
    @cached_property
    def chat(self) -> oai.AsyncChat:
        """`client.chat`: completions through the SDK (`create`, `parse`, `stream`)."""
        return AsyncChat(self)

    @cached_property
    def completions(self) -> oai.AsyncCompletions:
        """`client.completions` (legacy text completions) through the SDK."""
        return AsyncCompletions(self)

    @cached_property
    def embeddings(self) -> oai.AsyncEmbeddings:
        """`client.embeddings` through the SDK."""
        return AsyncEmbeddings(self)

    @cached_property
    def responses(self) -> oai_responses.AsyncResponses:
        """`client.responses`: the Responses API through the SDK (`create`, `parse`, `stream`)."""
        return AsyncResponses(self)

    @cached_property
    def beta(self) -> oai.AsyncBeta:
        """`client.beta`: openai's, its `chat` (openai's older name for `client.chat`) through the SDK."""
        return AsyncBeta(self)

    @cached_property
    def with_raw_response(self) -> AsyncOpenAIWithRawResponse:
        """`client.with_raw_response.chat.completions.create(...)`, as in openai, budgeted and logged."""
        return AsyncRawClient(self)

    @cached_property
    def with_streaming_response(self) -> AsyncOpenAIWithStreamedResponse:
        """`client.with_streaming_response.chat.completions.create(...)`, as in openai, budgeted and logged."""
        return AsyncStreamedClient(self)

    async def feedback(self, call_id: str, **kwargs: Any) -> None:  # type: ignore[override]  # awaited, as every call of an async client
        """Record feedback on a logged call (reward, label, preferred candidate or reference answer), off the event loop:
        the log's write may wait for a locked file or a PostgreSQL round trip."""
        await offloaded(lambda: _Blackbox.feedback(self, call_id, **kwargs))

    async def close(self) -> None:
        """Close the connections and what the client opened from paths (those too if closing the connections fails:
        connections an earlier event loop opened can't close once it has)."""
        try:
            await super().close()
        finally:
            await offloaded(self._core.opened.close)  # off the event loop: a call log's last records may wait for a locked file


@overload
def wrap(client: openai.OpenAI, **options: Any) -> OpenAI: ...


@overload
def wrap(client: openai.AsyncOpenAI, **options: Any) -> AsyncOpenAI: ...


def wrap(client: openai.OpenAI | openai.AsyncOpenAI, **options: Any) -> OpenAI | AsyncOpenAI:
    """The SDK's client in place of one the app already built: a copy of it (same key, URL, headers,
    HTTP client) that is also a `blackbox_sdk` client; its `max_retries` becomes the SDK's."""
    if isinstance(client, _Blackbox):
        raise ConfigError("this client is already a blackbox_sdk client: change its options with .with_options(...)")
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigError(f"wrap() takes an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}")
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown wrap() options {sorted(unknown)}; expected some of {list(OPTION_NAMES)}")
    remember_secret(client.api_key)
    opened = Opened()
    opts = Options.build(opened, max_retries=client.max_retries, **options)
    _repair_log(opts)
    cls: type[OpenAI] | type[AsyncOpenAI] = AsyncOpenAI if isinstance(client, openai.AsyncOpenAI) else OpenAI
    wrapped = cls.__new__(cls)  # openai's copy of the client, every setting kept, in the SDK's class
    state = client.copy().__dict__
    wrapped.__dict__.update({k: v for k, v in state.items() if not isinstance(getattr(cls, k, None), cached_property)})
    endpoint = str(client.base_url)
    wrapped._core = cls._core_class(client.with_options(max_retries=0), opts, endpoint=endpoint, local=_is_loopback(endpoint), backend=None, opened=opened)
    wrapped.max_retries = opts.retry.max_retries
    _http_clients.add(wrapped._client)
    return wrapped  # type: ignore[return-value]
