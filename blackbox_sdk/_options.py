"""The SDK's own options for a client, their per-call overrides (a new Options, never mutation),
and the resources opened from paths for them, kept once per client.

`Options`' fields are the one list of option names: the client's constructor, `copy`, `wrap`
and every resource's `create` take exactly these (and openai's `max_retries`).
"""

from __future__ import annotations

import difflib
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from openai import NOT_GIVEN

from ._adaptive import AUTO
from ._embeds import digest_name
from ._exceptions import ConfigError
from ._retry import RetryPolicy
from ._text import checked_path, checked_text
from ._tokenizer import SERVER, open_tokenizer
from ._types import Scorer

DEFAULT_RERANK_N = 8
CACHE_MODES = ("on", "read", "write", "refresh", "off")


def is_url(target: object) -> bool:
    """Whether a target names a server (redis://, postgresql://, ...) rather than a local path."""
    return isinstance(target, str) and "://" in target


class Opened:
    """Resources opened from paths or URLs (caches, logs, adapters, soft prompts): opened once per
    (kind, target), reused by every call that names them, closed with the client."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str | Path], Any] = {}
        self._lock = threading.Lock()
        self._in_flight = 0  # calls begun and not yet logged (`track`)
        self._counting = threading.RLock()  # not `_lock`: a collection while `get` holds it may end a call on that thread
        self._closing = False  # close() ran while calls were in flight: the last of them to end closes what is open
        self._tracked: dict[int, weakref.ref[object]] = {}  # the weak references of the calls in flight, by id

    def get(self, kind: str, target: str | Path, make: Callable[[Any], Any]) -> Any:
        """The resource of this kind at `target` (a path, or a URL such as redis://...), opened on first use."""
        where, key = _where(kind, target)
        with self._lock:
            if key not in self._items:
                self._items[key] = make(where)
            return self._items[key]

    def holds(self, kind: str, target: str | Path) -> bool:
        """Whether the resource of this kind at `target` is open already (getting it then does no I/O)."""
        return _where(kind, target)[1] in self._items

    def track(self, call: object) -> Callable[[], None]:
        """Count `call` in flight until the function returned is called (once it is logged) or the call is collected:
        a client closed meanwhile (on another task or thread, or under a half-read stream) keeps its log open for it."""
        def ended(_: object = None) -> None:
            with self._counting:
                if self._tracked.pop(id(ref), None) is None:  # once: logged, or collected unlogged
                    return
            self._ended()

        ref = weakref.ref(call, ended)  # a plain weak reference, kept in `_tracked` until it ends: cheaper than a finalizer
        with self._counting:
            self._in_flight += 1
            self._tracked[id(ref)] = ref
        return ended

    def _ended(self) -> None:
        """A tracked call ended: the last one out after a close closes what is open, in a thread of its own (it may
        end on an event loop, which must not wait for a log's last writes)."""
        with self._counting:
            self._in_flight -= 1
            last = self._in_flight == 0 and self._closing
        if not last:
            return
        try:
            threading.Thread(target=self._close_now, name="blackbox-sdk-closer", daemon=True).start()
        except RuntimeError:  # the interpreter is shutting down: no new thread, so here
            self._close_now()

    def close(self) -> None:
        """Close everything opened here (what a caller passed in as an object is the caller's), at once, or when the
        last call in flight ends: a call that finishes after its client closed is still logged."""
        with self._counting:
            self._closing = self._in_flight > 0
        if not self._closing:
            self._close_now()

    def _close_now(self) -> None:
        """Close every item opened so far."""
        with self._lock:
            items, self._items = list(self._items.values()), {}
        for item in items:
            close = getattr(item, "close", None)
            if callable(close):
                close()


def _where(kind: str, target: str | Path) -> tuple[str | Path, tuple[str, str | Path]]:
    """What a resource is opened from (a URL as given, a path with ~ expanded) and its key in `Opened`
    (its real path: realpath, as `Path.resolve` raises RuntimeError on a symbolic link loop; the opener says what is wrong)."""
    where: str | Path = target if is_url(target) else checked_path(target, kind)
    return where, (kind, where if isinstance(where, str) else Path(os.path.realpath(where)))


def _instance_or_path(value: Any, kind: type, name: str, opened: Opened, accepted: str) -> Any:
    """None, an instance of `kind`, or a path opened once as one."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, (str, Path)):
        return opened.get(name, value, kind)
    raise ConfigError(f"{name} must be {accepted} or None; got {value!r}")


def is_cache_mode(value: object) -> bool:
    """Whether a cache option names a mode (on, read, ...) rather than a folder; ConfigError for a bare word that reads
    as a mistyped mode ("refesh", "ON"), which would otherwise open a cache folder of that name in the working folder."""
    if not isinstance(value, str):
        return False
    if value in CACHE_MODES:
        return True
    word = value.strip().lower()
    if word and not any(mark in word for mark in "/\\.~:") and difflib.get_close_matches(word, CACHE_MODES, n=1, cutoff=0.75):
        raise ConfigError(f"cache={value!r} is not a cache mode (one of {', '.join(CACHE_MODES)}); "
                          f"for a folder of that name pass Path({value!r}) or './{value}'")
    return False


def open_cache(value: Any, current: Any, opened: Opened) -> Any:
    """A Cache from what a caller passed: a folder, a Cache, a mode string for the current one, or None."""
    from .cache import Cache

    if is_cache_mode(value):
        if current is None:
            raise ConfigError(f"cache={value!r} needs a cache on the client: OpenAI(cache='folder')")
        return current.with_mode(value)
    return _instance_or_path(value, Cache, "cache", opened, f"a folder, a blackbox_sdk.Cache, one of {CACHE_MODES}")


def open_log(value: Any, current: Any, opened: Opened) -> Any:
    """A call log from a file path, a postgresql:// URL, a CallLog (any CallLogStore), or None."""
    from .call_log import CallLogStore, open_call_log
    from .call_log._urls import is_postgres_url

    if value is None or isinstance(value, CallLogStore):
        return value
    if isinstance(value, (str, Path)):
        is_postgres_url(value)  # postgresql:/host, its // missing: a ConfigError, not a log under a folder named postgresql:
        return opened.get("log", value, open_call_log)
    raise ConfigError(f"log must be a file path, a postgresql:// URL, a blackbox_sdk.CallLog or None; got {value!r}")


def open_budget(value: Any, current: Any, opened: Opened) -> Any:
    """A Budget, or None for no limit."""
    from .budget import Budget

    if value is None or isinstance(value, Budget):
        return value
    raise ConfigError(f"budget must be a blackbox_sdk.Budget or None; got {value!r}")


def open_reranker(value: Any, current: Any, opened: Opened) -> Scorer | None:
    """A scorer from an adapter folder, an object with `.score`, a callable, or None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        from .adapter import Adapter

        return opened.get("reranker", value, Adapter.load).score  # weights from safetensors, never pickle
    score = getattr(value, "score", None)
    if callable(score):
        return score
    if callable(value):
        return value
    raise ConfigError(f"reranker must be an adapter folder, an Adapter, a callable or None; got {value!r}")


def open_rerank_n(value: Any, current: Any, opened: Opened) -> int:
    """rerank_n checked: an integer >= 1 (None means the default)."""
    if value is None:
        return DEFAULT_RERANK_N
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"rerank_n must be an integer >= 1, got {value!r}")
    return value


def open_rerank_confidence(value: Any, current: Any, opened: Opened) -> float | str | None:
    """rerank_confidence checked: None (always `rerank_n` samples), a share in (0, 1], or "auto" (the adapter's own)."""
    if value is None or value == AUTO:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"rerank_confidence must be None, a number in (0, 1] or {AUTO!r}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BeamOptions:
    """Step-wise reranking (the paper's sentence-level beam search) instead of best-of-n."""

    beam: int = 3  # prefixes kept after each step
    candidates: int = 5  # next steps sampled per kept prefix per step
    max_steps: int = 8
    answer_marker: str | None = "####"  # a step holding it ends its beam
    separator: str = "\n"  # the step boundary (sampling stops there)
    mode: str = "chat"  # "chat": the partial answer quoted in the user turn; "completions": ChatML continued

    def __post_init__(self) -> None:
        for name in ("beam", "candidates", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"beam option {name} must be an integer >= 1, got {value!r}")
        if self.mode not in ("chat", "completions"):
            raise ConfigError(f"beam option mode must be 'chat' or 'completions', got {self.mode!r}")


def open_beam(value: Any, current: Any, opened: Opened) -> BeamOptions | None:
    """BeamOptions from None (best-of-n), True (defaults), a mapping or a BeamOptions."""
    if value is None or value is False:
        return None
    if value is True:
        return BeamOptions()
    if isinstance(value, BeamOptions):
        return value
    if isinstance(value, dict):
        try:
            return BeamOptions(**value)
        except TypeError as error:
            raise ConfigError(f"unknown beam option: {error}") from None
    raise ConfigError(f"beam must be None, True, a dict of BeamOptions fields or a BeamOptions; got {value!r}")


def served_name(prompt: Any) -> str:
    """The name a soft prompt is registered and sent under: its own plus a digest of its values, so two prompts sharing a
    name (one re-tuned, say) never share a backend slot or a cache key."""
    return digest_name(prompt.name, prompt.embeds)


def body_soft_prompt(params: Mapping[str, Any]) -> str | None:
    """The soft prompt a request's body names (`extra_body={"soft_prompt": name}`), or None."""
    extra = params.get("extra_body")
    name = extra.get("soft_prompt") if isinstance(extra, Mapping) else None
    return name if isinstance(name, str) else None


def with_body_soft_prompt(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The request with its body naming the soft prompt `name`, beside what the caller put in `extra_body`."""
    extra = params.get("extra_body")
    return {**params, "extra_body": {**(extra if isinstance(extra, Mapping) else {}), "soft_prompt": name}}


def current_soft_prompt(value: Any) -> Any:
    """The soft prompt to serve now: a saved folder's as the folder holds it now (`SavedSoftPrompt`), else the one given."""
    current = getattr(value, "current", None)
    return current() if callable(current) else value


def open_soft_prompt(value: Any, current: Any, opened: Opened) -> Any:
    """A SoftPrompt from a saved folder or a SoftPrompt, or None; a deep one is refused (requests carry input vectors only)."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        from .tuning._soft_prompt import SavedSoftPrompt

        value = opened.get("soft_prompt", value, SavedSoftPrompt)  # read again when a save changes the folder
    elif not (hasattr(value, "embeds") and hasattr(value, "name")):
        raise ConfigError(f"soft_prompt must be a SoftPrompt, a saved soft-prompt folder or None; got {value!r}")
    if getattr(value, "layers", None) is not None:
        raise ConfigError(
            f"soft prompt {value.name} is deep (BBTv2: vectors inside every layer), which a request can't carry; "
            "score texts with prompt.classify(texts, target) instead"
        )
    return value


def open_budget_key(value: Any, current: Any, opened: Opened) -> str | None:
    """The tenant key budgets and the log file calls under: a non-empty UTF-8 string (what a ledger can keep) or None."""
    return None if value is None else checked_text(value, "budget_key")


def open_retry(value: Any, current: Any, opened: Opened) -> RetryPolicy:
    """A RetryPolicy; None keeps the current one."""
    if value is None:
        return current
    if not isinstance(value, RetryPolicy):
        raise ConfigError(f"retry must be a blackbox_sdk.RetryPolicy or None; got {value!r}")
    return value


def open_tokenizer_option(value: Any, current: Any, opened: Opened) -> Any:
    """What counts tokens for budgets: a callable, a tiktoken name, a folder or GGUF, "server", or None."""
    return open_tokenizer(value)


def open_rate_limit(value: Any, current: Any, opened: Opened) -> Any:
    """RateLimits (requests and tokens per minute), or None for no limit."""
    from .limits import RateLimits

    if value is None or isinstance(value, RateLimits):
        return value
    raise ConfigError(f"rate_limit must be a blackbox_sdk.RateLimits or None; got {value!r}")


def _option(default: Any, opener: Callable[[Any, Any, Opened], Any]) -> Any:
    """A field of Options with the function that checks and opens what a caller passes for it."""
    return field(default=default, metadata={"open": opener})


@dataclass(frozen=True)
class Options:
    """Cache, budget, log, reranker, retries: what the SDK adds around each call."""

    cache: Any = _option(None, open_cache)
    budget: Any = _option(None, open_budget)
    log: Any = _option(None, open_log)
    reranker: Scorer | None = _option(None, open_reranker)
    rerank_n: int = _option(DEFAULT_RERANK_N, open_rerank_n)
    rerank_confidence: float | str | None = _option(None, open_rerank_confidence)  # adaptive K: stop sampling once the pick is this clear
    beam: BeamOptions | None = _option(None, open_beam)
    soft_prompt: Any = _option(None, open_soft_prompt)  # a tuned SoftPrompt (Black-Box Tuning) served with every call
    budget_key: str | None = _option(None, open_budget_key)
    retry: RetryPolicy = _option(RetryPolicy(), open_retry)
    rate_limit: Any = _option(None, open_rate_limit)  # RateLimits: requests and tokens per minute, checked before sending
    tokenizer: Any = _option(None, open_tokenizer_option)  # counts tokens where the endpoint's own count is not at hand

    @property
    def has_stores(self) -> bool:
        """Whether a store or a reranker is on, whose work may block: an async client runs it in a worker thread."""
        return self.cache is not None or self.budget is not None or self.log is not None or self.rate_limit is not None or self.reranker is not None

    @classmethod
    def build(cls, opened: Opened, *, max_retries: int = 2, **given: Any) -> Options:
        """Options from constructor arguments, each checked and opened; `retry` wins over `max_retries`."""
        return cls(retry=RetryPolicy(max_retries=max_retries)).merge(opened, **given)

    def merge(self, opened: Opened, **overrides: Any) -> Options:
        """These options with per-call overrides (only the keys given) applied."""
        unknown = set(overrides) - set(OPTION_NAMES) - {"max_retries"}
        if unknown:
            raise ConfigError(f"unknown SDK options {sorted(unknown)}; expected some of {list(OPTION_NAMES)}")
        changes: dict[str, Any] = {}
        if "max_retries" in overrides:
            changes["retry"] = replace(self.retry, max_retries=overrides["max_retries"])
        for spec in fields(self):
            if spec.name in overrides:
                current = changes.get(spec.name, getattr(self, spec.name))
                changes[spec.name] = spec.metadata["open"](overrides[spec.name], current, opened)
        return replace(self, **changes)


OPTION_NAMES = tuple(spec.name for spec in fields(Options))
OPENED_FROM_PATHS = ("cache", "log", "reranker", "soft_prompt")  # the options `Opened` keeps, each under its own name


def needs_opening(opened: Opened, overrides: dict[str, Any]) -> bool:
    """Whether merging these per-call overrides may block: one names a path or URL not opened yet (a
    cache folder, a call log, an adapter, a soft prompt: SQLite's busy wait, a model load, a connection),
    or a tokenizer to load."""
    return any(_opens(name, value, opened) for name, value in overrides.items())


def _opens(name: str, value: Any, opened: Opened) -> bool:
    """Whether this one override opens something (see `needs_opening`)."""
    if not isinstance(value, (str, Path)) or (name == "cache" and is_cache_mode(value)):
        return False
    if name == "tokenizer":
        return value != SERVER
    return name in OPENED_FROM_PATHS and not opened.holds(name, value)


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the SDK's per-call options (those given) from the openai parameters."""
    overrides = {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}
    return kwargs, {name: value for name, value in overrides.items() if value is not NOT_GIVEN}
