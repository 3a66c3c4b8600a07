"""What the local backend accepts: OpenAI's request bodies as pydantic schemas, checked before any
compute, and `LocalRequestError`, the refusal the transport answers with an HTTP 400.

Imports without torch, so the `local` face can export the error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_type_hints

from openai.types import completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .._exceptions import ConfigError

MAX_STOP_STRINGS = 4  # OpenAI accepts up to 4 stop sequences
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's cap for chat top_logprobs
MAX_LOGPROBS_COMPLETION = 5  # OpenAI's cap for legacy completions logprobs
MAX_N = 128  # OpenAI's cap on choices per request
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's cap on the inputs of one /embeddings request
LOCAL_PARAMS = ("soft_prompt",)  # this backend's own body fields, beside OpenAI's
PART_TEXT = {"text": "text", "refusal": "refusal"}  # content part type -> the field holding its text
ROLE_PARTS = {"assistant": ("text", "refusal"), "user": ("text", "image_url", "input_audio", "file")}  # others: text
UNSUPPORTED_PARAMS = ("tools", "functions", "audio", "prediction", "logit_bias", "suffix", "best_of")
ENABLING_PARAMS = ("web_search_options",)  # set at all, even to {} (its defaults), they ask for what the backend lacks

Schema = TypeVar("Schema")
OpenAIBodyT = TypeVar("OpenAIBodyT", bound="OpenAIBody")
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
Penalty = Annotated[float, Field(strict=True, ge=-2, le=2)]


def openai_params(typed: type, *extra: str) -> frozenset[str]:
    """The body fields an openai-python params TypedDict names, plus extras (`stream`, which its base leaves out; ours)."""
    return frozenset(typed.__annotations__) | set(extra)


class LocalRequestError(ConfigError):
    """A request the local backend refuses by OpenAI's rules, before any compute; the transport answers it with a 400.

    `param` names the offending field as OpenAI does (`messages[0].role`), `code` is OpenAI's
    error code when it has one (`context_length_exceeded`).
    """

    def __init__(self, message: str, *, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class FunctionCall(BaseModel):
    """A function an assistant turn called: `function_call`, or a tool call's `function`."""

    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str

    @property
    def text(self) -> str:
        """The call as the model reads it: `name(arguments)`."""
        return f"{self.name}({self.arguments})"


class CustomCall(BaseModel):
    """A custom tool an assistant turn called: a tool call's `custom`."""

    model_config = ConfigDict(extra="allow")
    name: str
    input: str

    @property
    def text(self) -> str:
        """The call as the model reads it: `name(input)`."""
        return f"{self.name}({self.input})"


class ToolCall(BaseModel):
    """One of an assistant turn's `tool_calls`: a function's or a custom tool's, as OpenAI takes them."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function", "custom"]
    function: FunctionCall | None = None
    custom: CustomCall | None = None

    @model_validator(mode="after")
    def _names_its_call(self) -> ToolCall:
        """OpenAI refuses a tool call without the object its type names."""
        if getattr(self, self.type) is None:
            raise ValueError(f"a tool call of type {self.type!r} needs its {self.type!r} object")
        return self

    @property
    def text(self) -> str:
        """The call as the model reads it."""
        return str(getattr(self, self.type).text)  # _names_its_call made sure it is there


class Message(BaseModel):
    """One chat message; content parts are flattened to text, since the model reads only text, and an
    assistant turn's calls join its text (a chat template without tools can read them only so)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]  # function: the deprecated tool message
    tool_calls: list[ToolCall] | None = None  # checked before content, which they join
    function_call: FunctionCall | None = None  # the deprecated single call
    content: str = Field(default=None, validate_default=True)  # null or left out only beside calls: _as_text
    tool_call_id: str | None = Field(default=None, validate_default=True)
    name: str | None = Field(default=None, validate_default=True)  # on a function message, the function it answers

    @field_validator("content", mode="before")
    @classmethod
    def _as_text(cls, value: object, info: ValidationInfo) -> object:
        """Text parts joined with newlines, then an assistant turn's calls, one a line; null only when it made calls."""
        if value == []:
            raise ValueError("content must not be an empty array of parts")
        if isinstance(value, list):
            value = _parts_text(value, info.data.get("role"))
        calls = [*(info.data.get("tool_calls") or []), *filter(None, [info.data.get("function_call")])]
        if info.data.get("role") == "function" and value is None:
            return ""  # OpenAI takes a function's answer as null
        if info.data.get("role") != "assistant" or not calls:
            if value is None:
                raise ValueError("content may be null only on an assistant message with tool_calls or function_call")
            return value
        if not isinstance(value, (str, type(None))):
            return value  # refused as no string
        return "\n".join(filter(None, [value, *(call.text for call in calls)]))

    @field_validator("tool_call_id")
    @classmethod
    def _tool_needs_its_call(cls, value: str | None, info: ValidationInfo) -> str | None:
        """OpenAI refuses a tool message that does not name the call it answers."""
        if value is None and info.data.get("role") == "tool":
            raise ValueError("a message with role 'tool' needs a tool_call_id")
        return value

    @field_validator("name")
    @classmethod
    def _function_needs_its_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        """OpenAI refuses a function message that does not name the function it answers."""
        if value is None and info.data.get("role") == "function":
            raise ValueError("a message with role 'function' needs the name of its function")
        return value


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` changes what is sent."""

    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class OpenAIBody(BaseModel):
    """A request body: OpenAI's fields that the backend reads, and the names of all it accepts."""

    model_config = ConfigDict(extra="allow")  # known fields it does not read are type-checked, then ignored
    openai_body: ClassVar[type]  # openai-python's TypedDict of this body: the types of the fields it ignores
    known_params: ClassVar[frozenset[str]] = frozenset()  # any other field is a 400, as OpenAI answers


class Sampling(OpenAIBody):
    """Options shared by chat and text completions, with OpenAI's names, defaults and ranges."""

    n: Annotated[int, Field(strict=True, ge=1, le=MAX_N)] = 1
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: Annotated[int, Field(strict=True, ge=-(2**63), lt=2**64)] | None = None
    presence_penalty: Penalty | None = None  # accepted, not applied
    frequency_penalty: Penalty | None = None  # accepted, not applied
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    soft_prompt: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        """Accept one stop string, a list of them, or null, as OpenAI does."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        """OpenAI refuses stream_options on a request that is not streamed."""
        if value is not None and info.data.get("stream") is not True:
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage-only chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(Sampling):
    """The body of POST /chat/completions."""

    openai_body = chat_create_params.CompletionCreateParamsBase
    known_params = openai_params(openai_body, "stream", *LOCAL_PARAMS)
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=MAX_TOP_LOGPROBS_CHAT)] | None = None
    response_format: dict[str, Any] | None = None  # read by _structured.chat_format
    tool_choice: Any = None  # only "none" or "auto": _no_forced_call
    function_call: Any = None  # the deprecated tool_choice, likewise

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_forced_call(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse a choice that forces a call ("required", a named function): without tools it can't be honoured."""
        if value not in (None, "none", "auto"):
            raise ValueError(f"{info.field_name} {value!r} forces a call, but the local HF backend does not support tools")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        """OpenAI refuses top_logprobs unless logprobs is true."""
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs=true")
        return value


class CompletionRequest(Sampling):
    """The body of POST /completions (text prompts only, not token-id prompts)."""

    openai_body = completion_create_params.CompletionCreateParamsBase
    known_params = openai_params(openai_body, "stream", *LOCAL_PARAMS)
    prompt: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    logprobs: Annotated[int, Field(strict=True, ge=0, le=MAX_LOGPROBS_COMPLETION)] | None = None
    echo: StrictBool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_as_list(cls, value: object) -> object:
        """Accept one prompt or a list of prompts; refuse token ids (a list of ints, or of such lists) by name."""
        if isinstance(value, list) and any(_is_token_id(item) or isinstance(item, list) for item in value):
            raise ValueError("token-id prompts are not supported by the local backend; send text")
        return [value] if isinstance(value, str) else value


class EmbeddingRequest(OpenAIBody):
    """The body of POST /embeddings: strings or token-id lists, float or base64 output."""

    openai_body = embedding_create_params.EmbeddingCreateParams
    known_params = openai_params(openai_body)
    input: list[str | list[int]] = Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)
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


_MESSAGES = TypeAdapter(list[Message])


def _is_token_id(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_embedding_input(item: object) -> bool:
    """A non-empty string or a non-empty list of token ids."""
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, list) and bool(item) and all(_is_token_id(t) for t in item)


def _parts_text(parts: list[object], role: object) -> str:
    """Content parts' texts joined with newlines; a part OpenAI refuses on this role, or one that is not
    text (images, audio, files: this model reads text only), is refused by its index, `content[j]`."""
    allowed = ROLE_PARTS.get(str(role), ("text",))
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        field = PART_TEXT.get(kind) if kind in allowed else None
        if field is not None and isinstance(part, dict) and isinstance(part.get(field), str):
            texts.append(part[field])
        elif field is not None:
            raise item_error(j, part, f"a {kind!r} content part needs its {field!r} string")
        elif kind in allowed:
            raise item_error(j, part, f"content parts of type {kind!r} are not supported: this model reads text only")
        else:
            kinds = " or ".join(map(repr, allowed))
            raise item_error(j, part, f"a {role} message's content parts must be of type {kinds}, not {kind!r}")
    return "\n".join(texts)


def item_error(index: int, part: object, why: str) -> ValidationError:
    """A refused list item (a content part, an input item), located at its index within the list."""
    error = PydanticCustomError("value_error", "{why}", {"why": why})
    return ValidationError.from_exception_data("item", [InitErrorDetails(type=error, loc=(index,), input=part)])


def _param_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as OpenAI names params, e.g. `messages[0].role`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validated(schema: Callable[[object], Schema], params: object, *, prefix: str = "") -> Schema:
    """Validate a request body with a schema, turning the first problem into a LocalRequestError."""
    try:
        return schema(params)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _param_path((prefix, *error["loc"]) if prefix else error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise LocalRequestError(f"Invalid value for {param or 'the body'!r}: {message}", param=param) from None


def _reject_unsupported(params: dict[str, Any]) -> None:
    """Refuse OpenAI options this backend can't honour, rather than silently ignoring them."""
    for name in UNSUPPORTED_PARAMS:
        if params.get(name) not in (None, [], {}):
            raise LocalRequestError(f"{name!r} is not supported by the local HF backend", param=name)
    for name in ENABLING_PARAMS:
        if params.get(name) is not None:
            raise LocalRequestError(f"{name!r} is not supported by the local HF backend", param=name)
    if isinstance(params.get("modalities"), list) and "audio" in params["modalities"]:
        raise LocalRequestError("an audio answer (modalities 'audio') is not supported by the local HF backend", param="modalities")


def reject_unknown(params: dict[str, Any], known: frozenset[str]) -> None:
    """Refuse a field OpenAI does not know, as OpenAI does, rather than silently ignoring a typo."""
    for name in params:
        if name not in known:
            raise LocalRequestError(f"Unrecognized request argument supplied: {name}", param=name)


def reject_mistyped(params: dict[str, Any], typed: type, read: Collection[str]) -> None:
    """Refuse a field the schema does not read whose value openai-python's type for it refuses (`truncation: 5`),
    as OpenAI answers 400, rather than silently ignoring it; null passes, as OpenAI takes it for "not given"."""
    for name, value in params.items():
        if value is None or name in read or name not in _openai_types(typed):
            continue
        try:
            _openai_type(typed, name).validate_python(value, strict=True)
        except ValidationError as exc:
            message = f"Invalid value for {name!r}: {exc.errors()[0]['msg']}"
            raise LocalRequestError(message, param=name) from None


@functools.cache
def _openai_types(typed: type) -> dict[str, Any]:
    """The field types an openai-python params TypedDict declares."""
    return get_type_hints(typed)


@functools.cache
def _openai_type(typed: type, name: str) -> TypeAdapter[Any]:
    """A validator of one field of an openai-python params TypedDict, built once."""
    return TypeAdapter(_openai_types(typed)[name])


def parse_request(schema: type[OpenAIBodyT], params: object) -> OpenAIBodyT:
    """Check a request body (a JSON object) against the unsupported options, the known fields, their openai types
    and its schema."""
    if not isinstance(params, dict):
        raise LocalRequestError("the request body must be a JSON object", param=None)
    _reject_unsupported(params)
    reject_unknown(params, schema.known_params)
    reject_mistyped(params, schema.openai_body, schema.model_fields)
    return validated(schema.model_validate, params)


def parse_messages(messages: object) -> list[Message]:
    """Check a chat `messages` list alone, errors named from `messages`."""
    return validated(_MESSAGES.validate_python, messages, prefix="messages")
