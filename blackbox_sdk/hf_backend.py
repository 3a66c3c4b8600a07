"""A local HuggingFace causal LM (a model folder or a GGUF file) answering OpenAI-shaped requests.

`HFBackend` turns the JSON bodies of `/chat/completions`, `/completions` and `/embeddings` into
`model.generate` / forward calls and returns the JSON an OpenAI server would send; `hf_transport`
puts it behind an `httpx2` transport. It also exposes the embedding-level hooks that Black-Box
Tuning needs (`input_embeddings`, `forward_embeds`, `register_soft_prompt`).

Errors: a model that can't be loaded or run raises `BackendError`; a request that breaks OpenAI's
rules raises `InvalidRequest` (a `ConfigError`, so a `ValueError`) before any compute, carrying the
offending `param` so the transport can answer 400 the way OpenAI does.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import jinja2
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from .errors import BackendError, ConfigError

__all__ = ["HFBackend", "InvalidRequest", "load_backend"]

GGUF_MAGIC = b"GGUF"
MAX_STOP_STRINGS = 4  # OpenAI accepts up to 4 stop sequences
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's cap for chat top_logprobs
MAX_LOGPROBS_COMPLETION = 5  # OpenAI's cap for legacy completions logprobs
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
EMBEDDING_BATCH = 16  # inputs per forward pass when embedding
DEFAULT_CONTEXT = 2048  # context window assumed when the config names none
UNSUPPORTED_PARAMS = ("tools", "functions", "audio", "prediction", "logit_bias", "suffix", "best_of")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_END = object()  # end-of-generation marker on a streaming queue

Model = TypeVar("Model", bound=BaseModel)


class InvalidRequest(ConfigError):
    """A request breaks OpenAI's rules (answered with HTTP 400); raised before any compute."""

    def __init__(self, message: str, *, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# ---------------------------------------------------------------- request schemas (OpenAI rules)

PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class _Message(BaseModel):
    """One chat message; content parts are flattened to text, since the model reads only text."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: object) -> object:
        """Join a list of `{"type": "text", "text": ...}` parts with newlines."""
        if isinstance(value, list):
            return "\n".join(_part_text(part) for part in value)
        return value


class _StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` changes what is sent."""

    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    """Options shared by chat and text completions, with OpenAI's names, defaults and ranges."""

    model_config = ConfigDict(extra="allow")
    n: PositiveInt = 1
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: Annotated[int, Field(strict=True, ge=-(2**63), lt=2**64)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None  # accepted, not applied
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None  # accepted, not applied
    stream: StrictBool | None = None
    stream_options: _StreamOptions | None = None
    soft_prompt: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        """Accept one stop string, a list of them, or null, as OpenAI does."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage-only chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class _ChatRequest(_Sampling):
    """The body of POST /chat/completions."""

    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=MAX_TOP_LOGPROBS_CHAT)] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        """OpenAI refuses top_logprobs unless logprobs is true."""
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs=true")
        return value


class _CompletionRequest(_Sampling):
    """The body of POST /completions (text prompts only, not token-id prompts)."""

    prompt: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    logprobs: Annotated[int, Field(strict=True, ge=0, le=MAX_LOGPROBS_COMPLETION)] | None = None
    echo: StrictBool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_as_list(cls, value: object) -> object:
        """Accept one prompt or a list of prompts."""
        return [value] if isinstance(value, str) else value


class _EmbeddingRequest(BaseModel):
    """The body of POST /embeddings: strings or token-id lists, float or base64 output."""

    model_config = ConfigDict(extra="allow")
    input: list[str | list[int]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_as_list(cls, value: object) -> object:
        """Normalise a string or a token-id list into a list of inputs; each a non-empty text or id list."""
        if isinstance(value, str) or (isinstance(value, list) and value and _is_token_id(value[0])):
            value = [value]
        if not isinstance(value, list) or not all(_is_embedding_input(item) for item in value):
            raise ValueError("input must be a non-empty string, a list of them, or non-empty lists of token ids")
        return value


_MESSAGES = TypeAdapter(list[_Message])


def _is_token_id(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_embedding_input(item: object) -> bool:
    """A non-empty string or a non-empty list of token ids."""
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, list) and bool(item) and all(_is_token_id(t) for t in item)


def _part_text(part: object) -> str:
    """The text of one content part; anything but a text part is refused."""
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise ValueError("content parts must be {'type': 'text', 'text': str}; this local model reads text only")


def _param_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as OpenAI names params, e.g. `messages[0].role`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validated(schema: Callable[[object], Model], params: object, *, prefix: str = "") -> Model:
    """Validate a request body with a schema, turning the first problem into an InvalidRequest."""
    try:
        return schema(params)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _param_path((prefix, *error["loc"]) if prefix else error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for {param or 'the body'!r}: {message}", param=param) from None


def _reject_unsupported(params: dict[str, Any]) -> None:
    """Refuse OpenAI options this backend can't honour, rather than silently ignoring them."""
    for name in UNSUPPORTED_PARAMS:
        if params.get(name) not in (None, [], {}):
            raise InvalidRequest(f"{name!r} is not supported by the local HF backend", param=name)
    response_format = params.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise InvalidRequest("only response_format {'type': 'text'} is supported locally", param="response_format")


def _parse_request(schema: type[Model], params: object) -> Model:
    """Check a request body (a JSON object) against its schema and the unsupported options."""
    if not isinstance(params, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    _reject_unsupported(params)
    return _validated(schema.model_validate, params)


# ---------------------------------------------------------------- decoding plans and results


@dataclass(frozen=True)
class _Decoding:
    """One request's sampling settings, validated and in generate's terms."""

    max_new_tokens: int
    temperature: float  # 0 means greedy
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    top_logprobs: int | None  # None: no logprobs; k: the chosen token plus k alternatives


@dataclass(frozen=True)
class _Prompt:
    """Token ids of one prompt plus an optional soft prompt prepended as embeddings."""

    ids: list[int]
    soft: torch.Tensor | None  # [L, H] or None

    @property
    def tokens(self) -> int:
        """Positions the model reads: real tokens plus soft-prompt vectors."""
        return len(self.ids) + (0 if self.soft is None else self.soft.shape[0])


@dataclass
class _Candidate:
    """One finished choice: its text, why it stopped, tokens spent and per-token log-probs."""

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Delta:
    """A piece of a streamed choice: new text, its tokens' log-probs, and the end when it comes."""

    text: str
    logprobs: list[dict[str, Any]]
    finish_reason: str | None = None
    completion_tokens: int = 0


def _cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in text, or None (OpenAI cuts the text there)."""
    found = [index for index in (text.find(s) for s in stop) if index >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters to withhold while streaming: a partial stop string or character."""
    held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return max(held, 1 if text.endswith("\ufffd") else 0)


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    """A `{token, logprob, bytes}` record for one token id."""
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _logprob_entry(tokenizer: Any, logits: torch.Tensor, token_id: int, top: int) -> dict[str, Any]:
    """OpenAI's per-token log-prob record, from one step's raw logits [V]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [V]
    entry = _token_entry(tokenizer, token_id, float(logprobs[token_id]))
    values, ids = torch.topk(logprobs, top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
    entry["top_logprobs"] = [_token_entry(tokenizer, int(i), float(v)) for v, i in zip(values, ids, strict=True)]
    return entry


def _legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat-style log-prob records in the legacy /completions shape, text offsets from `offset`."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


class _QueueStreamer(BaseStreamer):
    """Hands each generated token (with its step's raw logits when recorded) to the reading thread."""

    def __init__(self, step_logits: collections.deque[torch.Tensor]) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._step_logits = step_logits  # filled by a forward hook (when logprobs are asked), one [V] per step
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        """Skip the prompt (generate's first put), then queue each new token id."""
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        logits = self._step_logits.popleft() if self._step_logits else None
        self.queue.put((int(value.reshape(-1)[0]), logits))

    def end(self) -> None:
        """Mark the end of generation."""
        self.queue.put(_END)


class _Cancelled(StoppingCriteria):
    """Stops generation when the stream's reader has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """True for every row once the event is set."""
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------- loading


def _existing_path(path: str | Path) -> Path:
    """The resolved model path, or a BackendError when nothing is there."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise BackendError(f"no model at {resolved}: pass a .gguf file or a HuggingFace model folder")
    return resolved


def _resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; anything else must be a usable torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on cuda, float32 elsewhere; else one of float32/bfloat16/float16."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"invalid dtype {dtype!r}: use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _check_gguf(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic bytes."""
    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise BackendError(f"{path} is not a GGUF file: pass a .gguf file or a HuggingFace model folder")


def _check_causal_folder(path: Path) -> None:
    """Refuse a folder whose config.json names no causal-LM architecture (an encoder, say)."""
    if not (path / "config.json").is_file():
        raise BackendError(f"{path} has no config.json, so it is not a HuggingFace model folder")
    config = AutoConfig.from_pretrained(path)
    known = {name for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for name in _as_tuple(names)}
    architectures = list(getattr(config, "architectures", None) or [])
    if not known.intersection(architectures):
        raise BackendError(f"{path} holds {architectures or 'an unnamed architecture'}, not a causal language model")


def _as_tuple(names: str | tuple[str, ...]) -> tuple[str, ...]:
    """A mapping value (one class name or several) as a tuple."""
    return (names,) if isinstance(names, str) else tuple(names)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' loading progress bars, restoring the caller's setting afterwards."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a GGUF file or a model folder, wrapping failures in BackendError."""
    if path.is_file():
        _check_gguf(path)
        source, extra = path.parent, {"gguf_file": path.name}
    else:
        source, extra = path, {}
    try:
        if not extra:
            _check_causal_folder(path)
        with _quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except BackendError:
        raise
    except Exception as exc:  # any failure to read the files means the model can't be loaded
        raise BackendError(f"can't load a causal LM from {path}: {exc}") from exc
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- the backend


class HFBackend:
    """A local HF causal LM (model folder or GGUF file) answering OpenAI-shaped requests."""

    supports_embeddings: bool = True

    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto") -> None:
        self.path = _existing_path(path)
        self.device = _resolve_device(device)
        self.model, self.tokenizer = _load(self.path, self.device, _resolve_dtype(dtype, self.device))
        self.model_id = self.path.name
        self.created = int(time.time())
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or DEFAULT_CONTEXT)
        self._eos_ids = self._find_eos_ids()
        self._pad_id = self._eos_ids[0] if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id
        self.lock = threading.Lock()  # one model use at a time; hold it (not re-entrant) for direct use of .model
        self._soft_prompts: dict[str, torch.Tensor] = {}

    def _find_eos_ids(self) -> list[int]:
        """The token ids that end a reply, from the generation config and the tokenizer."""
        configured = self.model.generation_config.eos_token_id
        ids = [configured] if isinstance(configured, int) else list(configured or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise BackendError(f"{self.path} defines no end-of-sequence token, so replies could not end")
        return ids

    # ------------------------------------------------------------ public OpenAI routes

    def chat_completion(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /chat/completions body with ChatCompletion JSON (n choices from one generate)."""
        request = _parse_request(_ChatRequest, params)
        prompt = self._chat_prompt(request)
        decoding = self._chat_decoding(request, prompt)
        candidates = self._generate(prompt, decoding, request.n)
        choices = [_chat_choice(i, c, decoding.top_logprobs is not None) for i, c in enumerate(candidates)]
        return {
            **self._envelope("chatcmpl", "chat.completion"),
            "choices": choices,
            "usage": _usage(prompt.tokens, sum(c.completion_tokens for c in candidates)),
        }

    def chat_completion_stream(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Validate a streaming chat body now, then yield ChatCompletionChunk JSON as tokens come."""
        request = _parse_request(_ChatRequest, params)
        prompt = self._chat_prompt(request)
        decoding = self._chat_decoding(request, prompt)
        return self._chat_chunks(prompt, decoding, request.n, request.include_usage)

    def completion(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer a /completions body with Completion JSON (choice index = prompt * n + i)."""
        request = _parse_request(_CompletionRequest, params)
        prompts, decoding = self._completion_plan(request)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p, (text, prompt) in enumerate(zip(request.prompt, prompts, strict=True)):
            candidates = self._generate(prompt, decoding, request.n)
            prompt_tokens += prompt.tokens
            completion_tokens += sum(c.completion_tokens for c in candidates)
            for i, candidate in enumerate(candidates):
                choices.append(_completion_choice(p * request.n + i, candidate, request, text))
        return {
            **self._envelope("cmpl", "text_completion"),
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def completion_stream(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Validate a streaming /completions body now, then yield Completion chunks as tokens come."""
        request = _parse_request(_CompletionRequest, params)
        prompts, decoding = self._completion_plan(request)
        return self._completion_chunks(request, prompts, decoding)

    def embeddings(self, params: dict[str, Any]) -> dict[str, Any]:
        """Answer an /embeddings body: mean-pooled last hidden states, L2-normalised, float or base64."""
        request = _parse_request(_EmbeddingRequest, params)
        id_lists = [self._embedding_ids(item, f"input[{i}]") for i, item in enumerate(request.input)]
        vectors = self._embed(id_lists)  # [N, H]
        if request.dimensions is not None:
            vectors = self._truncate(vectors, request.dimensions)
        encode = _base64_vector if request.encoding_format == "base64" else _float_vector
        tokens = sum(len(ids) for ids in id_lists)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def models(self) -> dict[str, Any]:
        """The /models list: just this model."""
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        """The /models/{id} object for this model."""
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "local"}

    def count_tokens(self, text: str) -> int:
        """Tokens in a plain text, without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chat_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of the messages after the chat template, the way a chat request counts them."""
        return len(self._template_ids(_validated(_MESSAGES.validate_python, messages, prefix="messages")))

    # ------------------------------------------------------------ Black-Box Tuning hooks

    def input_embeddings(self) -> torch.nn.Embedding:
        """The model's token-embedding table (model.get_input_embeddings())."""
        return self.model.get_input_embeddings()

    def forward_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, *, logits_to_keep: int = 1
    ) -> torch.Tensor:
        """Logits [B, logits_to_keep, V] (float32) of the last positions for inputs_embeds [B, T, H]; no grads."""
        self._check_embeds(inputs_embeds, attention_mask, logits_to_keep)
        embeds = inputs_embeds.to(self.device, self.model.dtype)  # [B, T, H]
        mask = attention_mask.to(self.device, torch.long)  # [B, T]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T], left padding aware
        with self.lock, torch.inference_mode():
            out = self.model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=logits_to_keep
            )
        return out.logits.float()  # [B, logits_to_keep, V]

    def register_soft_prompt(self, name: str, embeds: torch.Tensor) -> None:
        """Store a soft prompt [L, H]; requests with `"soft_prompt": name` get it prepended to their input."""
        hidden = self.input_embeddings().embedding_dim
        if not isinstance(name, str) or not name:
            raise ConfigError("a soft prompt needs a non-empty name")
        if embeds.ndim != 2 or embeds.shape[1] != hidden or embeds.shape[0] < 1:
            raise ConfigError(f"a soft prompt must have shape [L, {hidden}], got {list(embeds.shape)}")
        if not torch.isfinite(embeds).all():
            raise ConfigError("a soft prompt must hold finite numbers only")
        self._soft_prompts[name] = embeds.detach().to(self.device, self.model.dtype).clone()

    def _check_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> None:
        """Refuse embeddings or masks of the wrong shape before the forward pass."""
        hidden = self.input_embeddings().embedding_dim
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != hidden:
            raise ConfigError(f"inputs_embeds must have shape [B, T, {hidden}], got {list(inputs_embeds.shape)}")
        if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise ConfigError(f"attention_mask must have shape {list(inputs_embeds.shape[:2])}")
        if not 1 <= logits_to_keep <= inputs_embeds.shape[1]:
            raise ConfigError(f"logits_to_keep must be in 1..{inputs_embeds.shape[1]}, got {logits_to_keep}")

    # ------------------------------------------------------------ request -> prompt and decoding

    def _template_ids(self, messages: list[_Message]) -> list[int]:
        """Token ids of the conversation after the chat template, ready for the assistant's turn."""
        conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]
        if not self.tokenizer.chat_template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant:"
            return self.tokenizer.encode(text)
        try:
            return list(
                self.tokenizer.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}", param="messages") from None

    def _soft_prompt(self, name: str | None) -> torch.Tensor | None:
        """The registered soft prompt a request names, or a 400 when there is none by that name."""
        if name is None:
            return None
        if name not in self._soft_prompts:
            raise InvalidRequest(f"no soft prompt named {name!r} is registered", param="soft_prompt")
        return self._soft_prompts[name]

    def _chat_prompt(self, request: _ChatRequest) -> _Prompt:
        """The templated prompt of a chat request."""
        return _Prompt(self._template_ids(request.messages), self._soft_prompt(request.soft_prompt))

    def _chat_decoding(self, request: _ChatRequest, prompt: _Prompt) -> _Decoding:
        """Decoding settings of a chat request (max_completion_tokens wins over max_tokens)."""
        top = (request.top_logprobs or 0) if request.logprobs else None
        limit = request.max_completion_tokens or request.max_tokens
        return self._decoding(request, prompt, limit, top)

    def _completion_plan(self, request: _CompletionRequest) -> tuple[list[_Prompt], _Decoding]:
        """Prompts and decoding settings of a /completions request (default max_tokens 16)."""
        soft = self._soft_prompt(request.soft_prompt)
        prompts = [_Prompt(self.tokenizer.encode(text), soft) for text in request.prompt]
        if request.echo and request.logprobs is not None:
            raise InvalidRequest("echo with logprobs is not supported locally", param="echo")
        limit = request.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS
        longest = max(prompts, key=lambda p: p.tokens)
        return prompts, self._decoding(request, longest, limit, request.logprobs)

    def _decoding(self, request: _Sampling, prompt: _Prompt, limit: int | None, top: int | None) -> _Decoding:
        """Settings for generate, refusing a prompt plus reply longer than the context window."""
        room = self.context_length - prompt.tokens
        if room < 1 or (limit is not None and limit > room):
            raise InvalidRequest(
                f"this model's context is {self.context_length} tokens; the prompt has {prompt.tokens} "
                f"and {limit or 1} more were asked for",
                param="messages" if isinstance(request, _ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        return _Decoding(
            max_new_tokens=limit or room,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=tuple(request.stop),
            seed=request.seed,
            top_logprobs=top,
        )

    # ------------------------------------------------------------ generation

    def _generation_config(self, decoding: _Decoding, n: int, *, with_logits: bool) -> GenerationConfig:
        """A fresh GenerationConfig from the request alone (the model's own sampling defaults are ignored)."""
        sampling = decoding.temperature > 0
        options: dict[str, Any] = {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            num_return_sequences=n,
            do_sample=sampling,
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            bos_token_id=self.model.generation_config.bos_token_id,
            stop_strings=list(decoding.stop) or None,
            return_dict_in_generate=True,
            output_logits=with_logits,
            **(options if sampling else {}),
        )

    def _model_inputs(self, prompt: _Prompt) -> dict[str, torch.Tensor]:
        """input_ids, or inputs_embeds with the soft prompt in front, plus the attention mask."""
        ids = torch.tensor([prompt.ids], device=self.device)  # [1, T]
        mask = torch.ones(1, prompt.tokens, dtype=torch.long, device=self.device)  # [1, L+T]
        if prompt.soft is None:
            return {"input_ids": ids, "attention_mask": mask}
        embeds = torch.cat([prompt.soft[None], self.input_embeddings()(ids)], dim=1)  # [1, L+T, H]
        return {"inputs_embeds": embeds, "attention_mask": mask}

    def _run_generate(self, prompt: _Prompt, decoding: _Decoding, n: int, *, with_logits: bool, **extra: Any) -> Any:
        """One model.generate call under the model lock, seeded when the request has a seed."""
        config = self._generation_config(decoding, n, with_logits=with_logits)
        with self.lock, _seeded(decoding.seed, self.device), torch.inference_mode():
            return self.model.generate(
                **self._model_inputs(prompt), generation_config=config, tokenizer=self.tokenizer, **extra
            )

    def _generate(self, prompt: _Prompt, decoding: _Decoding, n: int) -> list[_Candidate]:
        """n candidates from ONE batched generate (num_return_sequences); greedy decodes once and repeats it."""
        rows = 1 if decoding.temperature == 0 else n  # greedy choices are identical by definition
        try:
            output = self._run_generate(prompt, decoding, rows, with_logits=decoding.top_logprobs is not None)
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"generation failed on {self.model_id}: {exc}") from exc
        start = len(prompt.ids) if prompt.soft is None else 0  # with inputs_embeds only new tokens come back
        sequences = output.sequences[:, start:].tolist()  # rows of S new tokens
        logits = None if output.logits is None else torch.stack(output.logits, dim=1)  # [rows, S, V]
        candidates = [
            self._candidate(seq, None if logits is None else logits[i], decoding) for i, seq in enumerate(sequences)
        ]
        return candidates if rows == n else [dataclasses.replace(candidates[0]) for _ in range(n)]

    def _candidate(self, ids: list[int], logits: torch.Tensor | None, decoding: _Decoding) -> _Candidate:
        """Parse one generated row: cut at end-of-sequence and stop strings, count tokens, add logprobs."""
        ended = next((i for i, t in enumerate(ids) if t in self._eos_ids), None)
        kept = ids if ended is None else ids[:ended]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = _cut_at_stop(text, decoding.stop)
        if cut is not None:
            text, finish, spent = text[:cut], "stop", len(kept)
            kept = kept[: self._tokens_within(kept, cut)]
        elif ended is not None:
            finish, spent = "stop", len(kept) + 1
        else:
            finish, spent = ("length" if len(ids) >= decoding.max_new_tokens else "stop"), len(kept)
        entries = [] if logits is None else self._entries(kept, logits, decoding.top_logprobs or 0)
        return _Candidate(text, finish, spent, entries)

    def _tokens_within(self, ids: list[int], length: int) -> int:
        """How many leading tokens start inside the first `length` characters of the decoded text."""
        count = 0
        while count < len(ids) and len(self.tokenizer.decode(ids[:count], skip_special_tokens=True)) < length:
            count += 1
        return count

    def _entries(self, ids: list[int], logits: torch.Tensor, top: int) -> list[dict[str, Any]]:
        """Per-token log-prob records for ids, from the raw logits [S, V] of their steps."""
        return [_logprob_entry(self.tokenizer, logits[step], token, top) for step, token in enumerate(ids)]

    # ------------------------------------------------------------ streaming

    def _stream_tokens(self, prompt: _Prompt, decoding: _Decoding, seed: int | None) -> Iterator[tuple[int, Any]]:
        """(token id, raw logits or None) pairs from a live generate in a worker thread."""
        step_logits: collections.deque[torch.Tensor] = collections.deque()
        streamer = _QueueStreamer(step_logits)
        cancel = threading.Event()
        plan = dataclasses.replace(decoding, seed=seed)
        worker = threading.Thread(target=self._generate_into, args=(prompt, plan, streamer, cancel, step_logits))
        worker.start()
        try:
            while (item := streamer.queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise BackendError(f"generation failed on {self.model_id}: {item}") from item
                yield item
        finally:
            cancel.set()  # a reader that left early stops the worker at its next step
            worker.join()

    def _generate_into(
        self,
        prompt: _Prompt,
        decoding: _Decoding,
        streamer: _QueueStreamer,
        cancel: threading.Event,
        step_logits: collections.deque[torch.Tensor],
    ) -> None:
        """Worker body: generate into the streamer, recording raw logits when logprobs are asked for."""
        hook = None
        if decoding.top_logprobs is not None:
            worker = threading.get_ident()  # record only this thread's forwards

            def record(_module: torch.nn.Module, _args: Any, out: Any) -> None:
                if threading.get_ident() == worker:
                    step_logits.append(out.logits[0, -1].detach())  # [V]

            hook = self.model.register_forward_hook(record)
        try:
            stopping = StoppingCriteriaList([_Cancelled(cancel)])
            self._run_generate(prompt, decoding, 1, with_logits=False, streamer=streamer, stopping_criteria=stopping)
        except Exception as exc:  # handed to the reading thread, which raises it
            streamer.queue.put(exc)
        finally:
            if hook is not None:
                hook.remove()

    def _stream_choice(self, prompt: _Prompt, decoding: _Decoding, seed: int | None) -> Iterator[_Delta]:
        """Text deltas of one live choice, stop strings honoured; the last delta carries the finish."""
        ids: list[int] = []
        pending: list[dict[str, Any]] = []
        sent, finish = 0, None
        for token, logits in self._stream_tokens(prompt, decoding, seed):
            ids.append(token)
            if token in self._eos_ids:
                finish = "stop"
                break
            if logits is not None:
                pending.append(_logprob_entry(self.tokenizer, logits, token, decoding.top_logprobs or 0))
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = _cut_at_stop(text, decoding.stop)
            if cut is not None:
                yield _Delta(text[sent:cut], pending, "stop", len(ids))
                return
            safe = len(text) - _held_back(text, decoding.stop)
            if safe > sent:
                yield _Delta(text[sent:safe], pending)
                sent, pending = safe, []
        text = self.tokenizer.decode([t for t in ids if t not in self._eos_ids], skip_special_tokens=True)
        finish = finish or ("length" if len(ids) >= decoding.max_new_tokens else "stop")
        yield _Delta(text[sent:], pending, finish, len(ids))

    def _choice_seed(self, decoding: _Decoding, index: int) -> int | None:
        """The seed of the index-th streamed choice: seed + index, or None when unseeded."""
        return None if decoding.seed is None else decoding.seed + index

    def _chat_chunks(
        self, prompt: _Prompt, decoding: _Decoding, n: int, include_usage: bool
    ) -> Iterator[dict[str, Any]]:
        """ChatCompletionChunk JSON: per choice a role chunk, content deltas, a finish chunk; then usage."""
        head = self._envelope("chatcmpl", "chat.completion.chunk")
        extra = {"usage": None} if include_usage else {}
        spent = 0
        for index in range(n):
            yield {**head, **extra, "choices": [_chunk_choice(index, {"role": "assistant", "content": ""}, None, None)]}
            for delta in self._stream_choice(prompt, decoding, self._choice_seed(decoding, index)):
                logprobs = {"content": delta.logprobs, "refusal": None} if delta.logprobs else None
                if delta.text:
                    yield {**head, **extra, "choices": [_chunk_choice(index, {"content": delta.text}, logprobs, None)]}
                    logprobs = None
                if delta.finish_reason is not None:
                    yield {**head, **extra, "choices": [_chunk_choice(index, {}, logprobs, delta.finish_reason)]}
                spent += delta.completion_tokens
        if include_usage:
            yield {**head, "choices": [], "usage": _usage(prompt.tokens, spent)}

    def _completion_chunks(
        self, request: _CompletionRequest, prompts: list[_Prompt], decoding: _Decoding
    ) -> Iterator[dict[str, Any]]:
        """Completion chunks: choices one after another, each a live generate; then usage if asked."""
        head = self._envelope("cmpl", "text_completion")
        spent = 0
        for p, (source, prompt) in enumerate(zip(request.prompt, prompts, strict=True)):
            for i in range(request.n):
                index = p * request.n + i
                offset = len(source) if request.echo else 0
                if request.echo:
                    yield {**head, "choices": [_text_chunk(index, source, None, None)]}
                for delta in self._stream_choice(prompt, decoding, self._choice_seed(decoding, index)):
                    logprobs = None if request.logprobs is None else _legacy_logprobs(delta.logprobs, offset)
                    offset += len(delta.text)
                    spent += delta.completion_tokens
                    yield {**head, "choices": [_text_chunk(index, delta.text, logprobs, delta.finish_reason)]}
        if request.include_usage:
            yield {**head, "choices": [], "usage": _usage(sum(p.tokens for p in prompts), spent)}

    # ------------------------------------------------------------ embeddings

    def _embedding_ids(self, item: str | list[int], param: str) -> list[int]:
        """Token ids of one embedding input, refused when longer than the context or out of vocabulary."""
        ids = self.tokenizer.encode(item) if isinstance(item, str) else item
        vocab = self.input_embeddings().num_embeddings
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"{param} holds token ids outside 0..{vocab - 1}", param=param)
        if len(ids) > self.context_length:
            raise InvalidRequest(
                f"{param} has {len(ids)} tokens; this model's context is {self.context_length}",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def _embed(self, id_lists: list[list[int]]) -> torch.Tensor:
        """L2-normalised mean of the last hidden states over each input's tokens: [N, H] float32."""
        parts = [self._embed_batch(id_lists[i : i + EMBEDDING_BATCH]) for i in range(0, len(id_lists), EMBEDDING_BATCH)]
        return torch.nn.functional.normalize(torch.cat(parts), dim=-1)

    def _embed_batch(self, id_lists: list[list[int]]) -> torch.Tensor:
        """Mean-pooled last hidden states [B, H] of one right-padded batch."""
        width = max(len(ids) for ids in id_lists)
        ids = torch.tensor([x + [self._pad_id] * (width - len(x)) for x in id_lists], device=self.device)  # [B, T]
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in id_lists], device=self.device)  # [B, T]
        with self.lock, torch.inference_mode():
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, T, H]
        weights = mask.unsqueeze(-1).float()  # [B, T, 1]
        return (hidden * weights).sum(1) / weights.sum(1)  # [B, H]

    def _truncate(self, vectors: torch.Tensor, dimensions: int) -> torch.Tensor:
        """Keep the first `dimensions` components and re-normalise (OpenAI's `dimensions`)."""
        if dimensions > vectors.shape[1]:
            raise InvalidRequest(f"dimensions must be at most {vectors.shape[1]} for this model", param="dimensions")
        return torch.nn.functional.normalize(vectors[:, :dimensions], dim=-1)

    # ------------------------------------------------------------ JSON helpers

    def _envelope(self, prefix: str, kind: str) -> dict[str, Any]:
        """The id/object/created/model fields every response and chunk starts with."""
        created = int(time.time())
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": created, "model": self.model_id}


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch for one generate without disturbing the caller's random state; no-op without a seed."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_choice(index: int, candidate: _Candidate, with_logprobs: bool) -> dict[str, Any]:
    """One choice of a ChatCompletion."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": candidate.text, "refusal": None},
        "finish_reason": candidate.finish_reason,
        "logprobs": {"content": candidate.logprobs, "refusal": None} if with_logprobs else None,
    }


def _completion_choice(index: int, candidate: _Candidate, request: _CompletionRequest, prompt: str) -> dict[str, Any]:
    """One choice of a Completion (the prompt in front when echo is set)."""
    logprobs = None if request.logprobs is None else _legacy_logprobs(candidate.logprobs, 0)
    text = prompt + candidate.text if request.echo else candidate.text
    return {"index": index, "text": text, "finish_reason": candidate.finish_reason, "logprobs": logprobs}


def _chunk_choice(index: int, delta: dict[str, Any], logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    """One choice of a ChatCompletionChunk."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def _text_chunk(index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    """One choice of a streamed Completion."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def _float_vector(vector: torch.Tensor) -> list[float]:
    """An embedding as a JSON list of floats."""
    return vector.tolist()


def _base64_vector(vector: torch.Tensor) -> str:
    """An embedding as base64 of little-endian float32 bytes (what openai asks for by default)."""
    return base64.b64encode(vector.cpu().numpy().astype("<f4").tobytes()).decode("ascii")


_BACKENDS: dict[tuple[str, str], HFBackend] = {}
_BACKENDS_LOCK = threading.Lock()


def load_backend(path: str | Path, *, device: str = "auto") -> HFBackend:
    """The process-wide HFBackend for a path and device: loaded once, shared by every client (thread-safe)."""
    key = (str(_existing_path(path)), device)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = HFBackend(key[0], device=device)
        return _BACKENDS[key]
