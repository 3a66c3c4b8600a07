"""`tokenizer=`: what counts a request's tokens for budgets when the endpoint's own count is
not at hand. A callable `text -> tokens`, a tiktoken encoding name ("o200k_base"), a HuggingFace
tokenizer folder or a GGUF file (its chat template then renders chat prompts exactly), or
"server": the endpoint's own tokenize route (llama.cpp's `/extras/tokenize/count`, vLLM's
`/tokenize`), asked once per distinct text. A folder or GGUF file is loaded once per process
(`TOKENIZERS`), again only once its files change, so naming it on every call costs no reload.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx2

from ._exceptions import ConfigError, StoreUnavailableError
from ._redis_url import redact_url

SERVER = "server"
SERVER_TIMEOUT_S = 10.0
TOKENIZERS_KEPT = 8  # HuggingFace tokenizers a process keeps loaded (a few MB each), the least recently used dropped


class TokenCounter:
    """Counts text (and, when it knows the model's chat template, whole chat prompts) exactly."""

    def __init__(
        self,
        count: Callable[[str], int],
        name: str,
        chat: Callable[[Sequence[Mapping[str, Any]]], int] | None = None,
        prompt: Callable[[str], int] | None = None,
    ) -> None:
        self.count = count
        self.name = name
        self.chat = chat  # the rendered chat template's token count, when known
        self.prompt = prompt or count  # one text prompt as the endpoint reads it: with the special tokens (BOS) its tokenizer adds

    def __repr__(self) -> str:
        return f"TokenCounter({self.name})"


def _tiktoken(name: str) -> TokenCounter | None:
    """A tiktoken encoding by name, or None when tiktoken has no such encoding."""
    from .budget import load_encoding

    encoding = load_encoding(name)
    if encoding is None:
        return None
    return TokenCounter(lambda text: len(encoding.encode(text, disallowed_special=())), f"tiktoken {name}")


def _huggingface(path: Path) -> TokenCounter:
    """A HuggingFace tokenizer from a folder or a GGUF file, with its chat template when it has one; a text prompt
    counted with the special tokens it adds (a BOS, as llama.cpp and vLLM bill it), any other text without."""
    try:
        from transformers import AutoTokenizer

        from .local import chat_template_tokens
    except ImportError:
        raise ConfigError("tokenizer=<folder or .gguf> needs transformers: pip install 'blackbox-sdk[hf]'") from None
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path))

    def chat(messages: Sequence[Mapping[str, Any]]) -> int:
        return chat_template_tokens(tokenizer, messages)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def prompt(text: str) -> int:
        return len(tokenizer.encode(text))

    return TokenCounter(count, f"{path.name} tokenizer", chat if tokenizer.chat_template else None, prompt)


def _stamp(path: Path) -> Hashable:
    """What changes when a tokenizer's files are replaced: the file's (or each file's in a folder) inode, size and mtime."""

    def of(stat: os.stat_result) -> tuple[int, int, int]:
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    if path.is_dir():
        return tuple(sorted((entry.name, of(entry.stat())) for entry in os.scandir(path) if entry.is_file()))
    return of(path.stat())


class Tokenizers:
    """The HuggingFace tokenizers this process loaded, by resolved path: each loaded once (a second caller waits for
    the first), loaded again when its files change, the `size` most recently used kept."""

    def __init__(self, size: int = TOKENIZERS_KEPT) -> None:
        self._size = size
        self._held: OrderedDict[Path, tuple[Hashable, TokenCounter]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> TokenCounter:
        """The tokenizer at `path` (a folder or a GGUF file), loaded now only if not yet loaded from these files."""
        resolved = path.resolve()
        stamp = _stamp(resolved)
        with self._lock:
            held = self._held.get(resolved)
            if held is None or held[0] != stamp:
                held = (stamp, _huggingface(path))  # by the name given: a GGUF behind a symlink keeps its suffix
                self._held[resolved] = held
            self._held.move_to_end(resolved)
            while len(self._held) > self._size:
                self._held.popitem(last=False)
            return held[1]


TOKENIZERS = Tokenizers()


def open_tokenizer(value: Any) -> TokenCounter | str | None:
    """A TokenCounter from what a caller passed, "server" for the endpoint's own, or None for the default."""
    if value is None or isinstance(value, TokenCounter) or value == SERVER:
        return value
    if callable(value):
        return TokenCounter(lambda text: int(value(text)), getattr(value, "__name__", "caller's tokenizer"))
    if isinstance(value, str) and "/" not in value and not value.endswith(".gguf"):
        found = _tiktoken(value)
        if found is None:
            raise ConfigError(f"tokenizer {value!r} is no tiktoken encoding name, folder or .gguf file")
        return found
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"tokenizer: no folder or GGUF file at {path}")
        return TOKENIZERS.get(path)
    raise ConfigError(f"tokenizer must be a callable, a tiktoken encoding name, a folder, a .gguf file, 'server' or None; got {value!r}")


class ServerTokenizer:
    """The endpoint's own tokenize route, found on first use: llama.cpp's, then vLLM's; None if neither."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        url = httpx2.URL(base_url)
        root = str(url.copy_with(path=url.path.removesuffix("/").removesuffix("/v1") or "/")).rstrip("/")
        self._routes = {"llama.cpp": f"{root}/extras/tokenize/count", "vllm": f"{root}/tokenize"}
        self._headers = dict(headers)
        self._found: str | None = None
        self._probed = False
        self._counters: dict[str, TokenCounter] = {}
        self._lock = threading.Lock()

    def _ask(self, kind: str, model: str, text: str, special: bool = False) -> int:
        """One count from one route: vLLM's with the special tokens (a BOS) its completions add to a prompt when `special`,
        without them otherwise; llama.cpp's always with them (its route takes no such switch)."""
        body = {"input": text, "model": model} if kind == "llama.cpp" else {"prompt": text, "model": model, "add_special_tokens": special}
        response = httpx2.post(self._routes[kind], json=body, headers=self._headers, timeout=SERVER_TIMEOUT_S)
        response.raise_for_status()
        data = response.json()
        return int(data["count"]) if kind == "llama.cpp" else int(data["count"] if "count" in data else len(data["tokens"]))

    @property
    def may_answer(self) -> bool:
        """Whether asking it may send a request: not probed yet, or a tokenize route was found."""
        return not self._probed or self._found is not None

    def counter(self, model: str) -> TokenCounter | None:
        """A counting TokenCounter through the server for `model` (each distinct text asked once), or
        None when the server has no tokenize route."""
        with self._lock:
            if not self._probed:
                self._probed = True
                self._found = next((kind for kind in self._routes if self._answers(kind, model)), None)
            if self._found is None:
                return None
            if model not in self._counters:
                self._counters[model] = self._counter(self._found, model)
            return self._counters[model]

    def _counter(self, kind: str, model: str) -> TokenCounter:
        """A TokenCounter through route `kind` for `model`, each distinct text asked once (a prompt apart from an answer
        where the route counts special tokens on request)."""
        count = lru_cache(maxsize=4096)(lambda text: self._count(kind, model, text))
        prompt = lru_cache(maxsize=4096)(lambda text: self._count(kind, model, text, special=True)) if kind == "vllm" else count
        return TokenCounter(count, f"{kind} server tokenizer", prompt=prompt)

    def _count(self, kind: str, model: str, text: str, special: bool = False) -> int:
        """One count from the route found; a route that fails now (a busy server past SERVER_TIMEOUT_S, a 5xx) is a
        StoreUnavailableError: what the count is for (a budget's reservation) fails closed, as on a ledger out of reach.
        Text no request can carry (a lone surrogate) is the caller's, not the route's: openai's UnicodeEncodeError."""
        try:
            return self._ask(kind, model, text, special)
        except UnicodeEncodeError:
            raise
        except (httpx2.HTTPError, KeyError, ValueError, TypeError) as error:
            raise StoreUnavailableError(
                f"the endpoint's tokenize route {redact_url(self._routes[kind])} failed ({type(error).__name__}), so the "
                "prompt can't be counted; pass tokenizer= (a tiktoken encoding name, a callable) to count without it"
            ) from error

    def _answers(self, kind: str, model: str) -> bool:
        """Whether the server answers this tokenize route."""
        try:
            self._ask(kind, model, "probe")
        except (httpx2.HTTPError, KeyError, ValueError, TypeError):
            return False
        return True
