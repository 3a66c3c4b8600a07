"""`OpenAI` and `AsyncOpenAI`: drop-ins for the openai package's clients, and `wrap` for a client
an app already built. The inner openai client does the HTTP (with max_retries=0); the SDK adds
cache, budget, retries, the call log and reranking around `create`.
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx2
import openai
from openai import DEFAULT_MAX_RETRIES

from ._exceptions import CallLogError, ConfigError, StoreUnavailableError
from ._logging import logger
from ._options import OPTION_NAMES, Opened, Options
from ._redact import remember_secret
from ._pipeline import AsyncCore, SyncCore
from .resources import AsyncChat, AsyncCompletions, AsyncEmbeddings, Chat, Completions, Embeddings, RawClient

LOCAL_BASE_URL = "http://hf.local/v1"  # what the inner client calls when a local model answers
HF_PREFIX = "hf:"


def _is_loopback(url: str) -> bool:
    """Whether an endpoint runs on this machine (priced as a local model)."""
    host = httpx2.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_target(api_key: str | None, base_url: Any) -> Path | None:
    """The local model path for `hf:` URLs, or the embedded default when there is neither key nor URL."""
    url = base_url if base_url is not None else os.environ.get("OPENAI_BASE_URL")
    if isinstance(url, str) and url.startswith(HF_PREFIX):
        target = url[len(HF_PREFIX) :]
        if target in ("", "default"):
            from .local import default_gguf_path

            return default_gguf_path()
        return Path(target).expanduser()
    if url is None and api_key is None and not os.environ.get("OPENAI_API_KEY"):
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
        repaired = repair_log(options.log, options.budget)
    except (CallLogError, StoreUnavailableError) as error:
        logger.warning("could not repair the call log from the budget ledger now: %s", error)
        return
    if repaired:
        logger.warning("the call log lacked %d charged calls of processes that ended before logging them: recovered from the ledger", repaired)


class _ClientBase:
    """What the sync and async clients share: options, resources, pass-through, copies. The
    subclasses name their inner openai class, their core and their resource classes; nothing else."""

    _inner_class: type[Any]
    _core_class: type[SyncCore] | type[AsyncCore]
    _chat_class: type[Chat]
    _completions_class: type[Completions]
    _embeddings_class: type[Embeddings]

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx2.URL | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Any = None,
        **kwargs: Any,
    ) -> None:
        """Same arguments and environment variables as the openai client, then the SDK's options (`Options`' fields)."""
        opened = Opened()
        options = Options.build(opened, max_retries=max_retries, **{k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs})
        local = _local_target(api_key, base_url if base_url is None else str(base_url))
        backend = None
        if local is not None:
            from .local import load_backend

            backend = load_backend(local)
            http_client = http_client or self._local_http_client(backend)
            api_key, base_url, endpoint = api_key or "local", LOCAL_BASE_URL, f"{HF_PREFIX}{local.resolve()}"
        inner = self._inner_class(api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client, **kwargs)
        remember_secret(inner.api_key)
        if local is None:
            endpoint = str(inner.base_url)
        self._setup(inner, options, endpoint=endpoint, local=local is not None or _is_loopback(endpoint), backend=backend, opened=opened)
        self._core.check_soft_prompt(options)
        _repair_log(options)

    def _local_http_client(self, backend: Any) -> Any:
        """An httpx2 client (sync or async, by the class) whose transport answers from the local model."""
        from .local import AsyncHFTransport, HFTransport

        if self._core_class is AsyncCore:
            return httpx2.AsyncClient(transport=AsyncHFTransport(backend))
        return httpx2.Client(transport=HFTransport(backend))

    def _setup(self, inner: Any, options: Options, **where: Any) -> None:
        """Attach the inner client and the shared call machinery (sync or async, by the class)."""
        self._core = self._core_class(inner, options, **where)

    @classmethod
    def _around(cls, inner: Any, options: Options, **where: Any) -> Any:
        """A client of this class around an existing inner client."""
        client = cls.__new__(cls)
        client._setup(inner, options, **where)
        return client

    @property
    def backend(self) -> Any:
        """The local model answering this client (`hf:` URLs and the embedded default), else None."""
        return self._core.backend

    # ---------------------------------------------------------------- the openai surface
    @cached_property
    def chat(self) -> Chat:
        """`client.chat` (completions through the SDK)."""
        return self._chat_class(self._core, ("chat",))

    @cached_property
    def completions(self) -> Completions:
        """`client.completions` (legacy text completions through the SDK)."""
        return self._completions_class(self._core, ("completions",))

    @cached_property
    def embeddings(self) -> Embeddings:
        """`client.embeddings` through the SDK."""
        return self._embeddings_class(self._core, ("embeddings",))

    @cached_property
    def with_raw_response(self) -> RawClient:
        """`client.with_raw_response.chat.completions.create(...)`, as in openai."""
        return RawClient(self, streaming=False)

    @cached_property
    def with_streaming_response(self) -> RawClient:
        """`client.with_streaming_response.chat.completions.create(...)`, as in openai."""
        return RawClient(self, streaming=True)

    @property
    def options(self) -> Options:
        """The SDK's options of this client: cache, budget, log, reranker, retries."""
        return self._core.opts

    def copy(self, **kwargs: Any) -> Any:
        """A new client with some options changed; this one is left as it is (openai's `copy`)."""
        ours = {k: kwargs.pop(k) for k in (*OPTION_NAMES, "max_retries") if k in kwargs}
        if isinstance(kwargs.get("base_url"), str) and kwargs["base_url"].startswith(HF_PREFIX):
            raise ConfigError("copy() can't move a client to a local model: build a new client with base_url='hf:...'")
        core = self._core
        inner = core.inner.copy(max_retries=0, **kwargs) if kwargs else core.inner
        endpoint = core.endpoint if "base_url" not in kwargs else str(inner.base_url)
        local = core.local if "base_url" not in kwargs else _is_loopback(endpoint)
        options = core.opts.merge(core.opened, **ours)
        return self._around(inner, options, endpoint=endpoint, local=local, backend=core.backend, opened=core.opened)

    with_options = copy

    @property
    def max_retries(self) -> int:
        """Retries the SDK makes per request (the openai meaning; the inner client makes none)."""
        return self._core.opts.retry.max_retries

    def feedback(self, call_id: str, **kwargs: Any) -> None:
        """Record feedback on a logged call: reward, label, preferred candidate or reference answer."""
        log = self._core.opts.log
        if log is None:
            raise ConfigError("feedback needs a call log: OpenAI(log='calls.db')")
        log.feedback(call_id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "_core":
            raise AttributeError(name)
        return getattr(self._core.inner, name)

    def __repr__(self) -> str:
        return f"<blackbox_sdk.{type(self).__name__} endpoint={self._core.endpoint!r}>"


class OpenAI(_ClientBase):
    """Drop-in for `openai.OpenAI` with cache, budget, retries, a call log and reranking."""

    _inner_class = openai.OpenAI
    _core_class = SyncCore
    _chat_class = Chat
    _completions_class = Completions
    _embeddings_class = Embeddings

    def close(self) -> None:
        """Close the inner client's connections and what the client opened from paths."""
        self._core.inner.close()
        self._core.opened.close()

    def __enter__(self) -> OpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOpenAI(_ClientBase):
    """Drop-in for `openai.AsyncOpenAI` with cache, budget, retries, a call log and reranking."""

    _inner_class = openai.AsyncOpenAI
    _core_class = AsyncCore
    _chat_class = AsyncChat
    _completions_class = AsyncCompletions
    _embeddings_class = AsyncEmbeddings

    async def close(self) -> None:
        """Close the inner client's connections and what the client opened from paths."""
        await self._core.inner.close()
        self._core.opened.close()

    async def __aenter__(self) -> AsyncOpenAI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def wrap(client: openai.OpenAI | openai.AsyncOpenAI, **options: Any) -> OpenAI | AsyncOpenAI:
    """Wrap a client the app already built; its `max_retries` becomes the SDK's, the inner one makes none."""
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigError(f"wrap() takes an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}")
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise ConfigError(f"unknown wrap() options {sorted(unknown)}; expected some of {list(OPTION_NAMES)}")
    remember_secret(client.api_key)
    opened = Opened()
    opts = Options.build(opened, max_retries=client.max_retries, **options)
    _repair_log(opts)
    cls = AsyncOpenAI if isinstance(client, openai.AsyncOpenAI) else OpenAI
    endpoint = str(client.base_url)
    return cls._around(client.with_options(max_retries=0), opts, endpoint=endpoint, local=_is_loopback(endpoint), backend=None, opened=opened)
