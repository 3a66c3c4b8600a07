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

from .errors import ConfigError
from .logs import logger
from .options import Options
from .retry import RetryPolicy
from .resources import AsyncChat, AsyncCompletions, AsyncEmbeddings, Chat, Completions, Embeddings

__all__ = ["AsyncOpenAI", "LOCAL_BASE_URL", "OpenAI", "wrap"]

LOCAL_BASE_URL = "http://hf.local/v1"  # what the inner client calls when a local model answers
HF_PREFIX = "hf:"
SDK_KWARGS = ("cache", "budget", "log", "reranker", "rerank_n", "beam", "soft_prompt", "budget_key", "retry")


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
            from .models import default_gguf_path

            return default_gguf_path()
        return Path(target).expanduser()
    if url is None and api_key is None and not os.environ.get("OPENAI_API_KEY"):
        from .models import DEFAULT_LOCAL_MODEL, default_gguf_path

        logger.warning("no API key and no base URL: answering with the embedded local model %s", DEFAULT_LOCAL_MODEL)
        return default_gguf_path()
    return None


class _ClientBase:
    """What the sync and async clients share: options, pass-through, copies."""

    _inner_class: type[Any]

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx2.URL | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: Any = None,
        cache: Any = None,
        budget: Any = None,
        log: Any = None,
        reranker: Any = None,
        rerank_n: int | None = None,
        beam: Any = None,
        soft_prompt: Any = None,
        budget_key: str | None = None,
        retry: RetryPolicy | None = None,
        **openai_kwargs: Any,
    ) -> None:
        """Same arguments and environment variables as the openai client, then the SDK's options."""
        options = Options.build(
            cache=cache,
            budget=budget,
            log=log,
            reranker=reranker,
            rerank_n=rerank_n,
            beam=beam,
            soft_prompt=soft_prompt,
            budget_key=budget_key,
            max_retries=max_retries,
            retry=retry,
        )
        local = _local_target(api_key, base_url if base_url is None else str(base_url))
        backend = None
        if local is not None:
            from .hf_backend import load_backend

            backend = load_backend(local)
            http_client = http_client or self._local_http_client(backend)
            api_key, base_url, endpoint = api_key or "local", LOCAL_BASE_URL, f"{HF_PREFIX}{local.resolve()}"
        inner = self._inner_class(api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client, **openai_kwargs)
        if local is None:
            endpoint = str(inner.base_url)
        self._setup(inner, options, endpoint=endpoint, local=local is not None or _is_loopback(endpoint), backend=backend)
        self._core.check_soft_prompt(options)

    def _local_http_client(self, backend: Any) -> Any:
        """An httpx2 client whose transport answers from the local model."""
        from .hf_transport import HFTransport

        return httpx2.Client(transport=HFTransport(backend))

    def _setup(self, inner: Any, options: Options, *, endpoint: str, local: bool, backend: Any) -> None:
        """Attach the inner client and the shared call machinery."""
        self._core = self._new_core(inner, options, endpoint=endpoint, local=local, backend=backend)

    def _new_core(self, inner: Any, options: Options, **where: Any) -> Any:
        """The call machinery for this kind of client (sync or async)."""
        raise NotImplementedError

    @classmethod
    def _around(cls, inner: Any, options: Options, *, endpoint: str, local: bool, backend: Any) -> Any:
        """A client of this class around an existing inner client."""
        client = cls.__new__(cls)
        client._setup(inner, options, endpoint=endpoint, local=local, backend=backend)
        return client

    # ---------------------------------------------------------------- the openai surface
    @property
    def max_retries(self) -> int:
        """Retries the SDK makes per request (the openai meaning; the inner client makes none)."""
        return self._core.opts.retry.max_retries

    @property
    def backend(self) -> Any:
        """The local model answering this client (`hf:` URLs and the embedded default), else None."""
        return self._core.backend

    @property
    def options(self) -> Options:
        """The SDK's options of this client: cache, budget, log, reranker, retries."""
        return self._core.opts

    def copy(self, **kwargs: Any) -> Any:
        """A new client with some options changed; this one is left as it is (openai's `copy`)."""
        ours = {k: kwargs.pop(k) for k in SDK_KWARGS if k in kwargs}
        if "max_retries" in kwargs:
            ours["max_retries"] = kwargs.pop("max_retries")
        if isinstance(kwargs.get("base_url"), str) and kwargs["base_url"].startswith(HF_PREFIX):
            raise ConfigError("copy() can't move a client to a local model: build a new client with base_url='hf:...'")
        inner = self._core.inner.copy(max_retries=0, **kwargs) if kwargs else self._core.inner
        endpoint = self._core.endpoint if "base_url" not in kwargs else str(inner.base_url)
        local = self._core.local if "base_url" not in kwargs else _is_loopback(endpoint)
        return self._around(inner, self._core.opts.merge(**ours), endpoint=endpoint, local=local, backend=self._core.backend)

    with_options = copy

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

    def _new_core(self, inner: Any, options: Options, **where: Any) -> Any:
        """Synchronous call machinery."""
        from .sync_pipeline import SyncCore

        return SyncCore(inner, options, **where)

    @cached_property
    def chat(self) -> Chat:
        """`client.chat` (completions through the SDK)."""
        return Chat(self._core, ("chat",))

    @cached_property
    def completions(self) -> Completions:
        """`client.completions` (legacy text completions through the SDK)."""
        return Completions(self._core, ("completions",))

    @cached_property
    def embeddings(self) -> Embeddings:
        """`client.embeddings` through the SDK."""
        return Embeddings(self._core, ("embeddings",))

    @cached_property
    def with_raw_response(self) -> Any:
        """`client.with_raw_response.chat.completions.create(...)`, as in openai."""
        from .raw import RawClient

        return RawClient(self, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:
        """`client.with_streaming_response.chat.completions.create(...)`, as in openai."""
        from .raw import RawClient

        return RawClient(self, streaming=True)

    def close(self) -> None:
        """Close the inner client's connections."""
        self._core.inner.close()

    def __enter__(self) -> OpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOpenAI(_ClientBase):
    """Drop-in for `openai.AsyncOpenAI` with cache, budget, retries, a call log and reranking."""

    _inner_class = openai.AsyncOpenAI

    def _new_core(self, inner: Any, options: Options, **where: Any) -> Any:
        """Asynchronous call machinery."""
        from .async_pipeline import AsyncCore

        return AsyncCore(inner, options, **where)

    def _local_http_client(self, backend: Any) -> Any:
        """An async httpx2 client whose transport answers from the local model."""
        from .hf_transport import AsyncHFTransport

        return httpx2.AsyncClient(transport=AsyncHFTransport(backend))

    @cached_property
    def chat(self) -> AsyncChat:
        """`client.chat` (completions through the SDK)."""
        return AsyncChat(self._core, ("chat",))

    @cached_property
    def completions(self) -> AsyncCompletions:
        """`client.completions` through the SDK."""
        return AsyncCompletions(self._core, ("completions",))

    @cached_property
    def embeddings(self) -> AsyncEmbeddings:
        """`client.embeddings` through the SDK."""
        return AsyncEmbeddings(self._core, ("embeddings",))

    @cached_property
    def with_raw_response(self) -> Any:
        """`client.with_raw_response...`, as in openai."""
        from .raw import RawClient

        return RawClient(self, streaming=False)

    @cached_property
    def with_streaming_response(self) -> Any:
        """`client.with_streaming_response...`, as in openai."""
        from .raw import RawClient

        return RawClient(self, streaming=True)

    async def close(self) -> None:
        """Close the inner client's connections."""
        await self._core.inner.close()

    async def __aenter__(self) -> AsyncOpenAI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def wrap(client: openai.OpenAI | openai.AsyncOpenAI, **options: Any) -> OpenAI | AsyncOpenAI:
    """Wrap a client the app already built; its `max_retries` becomes the SDK's, the inner one makes none."""
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigError(f"wrap() takes an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}")
    unknown = set(options) - set(SDK_KWARGS)
    if unknown:
        raise ConfigError(f"unknown wrap() options {sorted(unknown)}; expected some of {list(SDK_KWARGS)}")
    opts = Options.build(max_retries=client.max_retries, **options)
    cls = AsyncOpenAI if isinstance(client, openai.AsyncOpenAI) else OpenAI
    endpoint = str(client.base_url)
    return cls._around(client.with_options(max_retries=0), opts, endpoint=endpoint, local=_is_loopback(endpoint), backend=None)
