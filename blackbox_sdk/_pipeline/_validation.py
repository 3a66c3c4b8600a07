"""Checks a request before anything is spent: wrong shapes fail as `InvalidRequestError` (a 400)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard

import openai
import pydantic

from .._exceptions import InvalidRequestError
from .._types import CHAT, COMPLETIONS, RESPONSES, Route

_UNSET = (openai.NotGiven, openai.Omit)


def given(value: Any) -> TypeGuard[Any]:
    """False for None and the openai NOT_GIVEN / omit sentinels (a type guard: a given value is not None)."""
    return value is not None and not isinstance(value, _UNSET)


def as_sent(params: Mapping[str, Any]) -> dict[str, Any]:
    """The request as openai's client sends it, so that every check, key, count and record sees that: a tuple
    or an iterator read once into a list (the `timeout` aside), and a pydantic model anywhere in it (a
    `ChatCompletionMessage` or a Responses output item passed back as history) dumped as openai dumps it."""
    return {name: value if name == "timeout" else _plain(value) for name, value in params.items()}


def _plain(value: Any) -> Any:
    """``value`` with its pydantic models dumped (set fields only, JSON mode, the model's API exclusions) and
    its tuples and iterators read into lists: arrays on the wire."""
    if value is None or isinstance(value, (str, int, float)):  # most of a request: first, as pydantic's own check is slow
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, Iterator)):
        return [_plain(item) for item in value]
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, exclude=getattr(value, "__api_exclude__", None))
    return value


def _check_number(params: Mapping[str, Any], name: str, low: float, high: float) -> None:
    """A numeric option inside [low, high], when given."""
    value = params.get(name)
    if not given(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a number in [{low}, {high}], got {value!r}", param=name)


MAX_N = 128  # OpenAI's own limit on `n`; more would fan out that many requests where a server ignores `n`
MAX_TOKENS = 2**53 - 1  # an output cap past it is no model's, and no budget's ledger counts it exactly
SEEDS = (-(2**63), 2**63 - 1)  # OpenAI's range for `seed`, a signed 64-bit integer
SAMPLING = frozenset({"n", "seed", "extra_body", "max_tokens", "max_completion_tokens", "temperature", "top_p"})


def _check_integer(params: Mapping[str, Any], name: str, low: int, high: int | None = None) -> None:
    """An integer option inside [low, high], when given."""
    value = params.get(name)
    if given(value) and (isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high)):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidRequestError(f"{name} must be an integer {bounds}, got {value!r}", param=name)


def validate_sampling(params: Mapping[str, Any], min_tokens: int = 1) -> None:
    """`n` in [1, 128], the output caps from `min_tokens` to MAX_TOKENS, `temperature` and `top_p` in range, `seed`
    an integer (the SDK seeds each fanned-out request from it: a string broke that, a fraction or a bool changed it)."""
    present = params.keys() & SAMPLING  # a request gives one or two of them, mostly: those are checked
    if "n" in present:
        _check_integer(params, "n", 1, MAX_N)
    if "seed" in present:
        _check_integer(params, "seed", *SEEDS)
    if "extra_body" in present and isinstance(body := params["extra_body"], Mapping):
        _check_integer(body, "seed", *SEEDS)  # as the caller's seed too (`Call.seed`)
    if "max_tokens" in present:
        _check_integer(params, "max_tokens", min_tokens, MAX_TOKENS)
    if "max_completion_tokens" in present:
        _check_integer(params, "max_completion_tokens", 1, MAX_TOKENS)
    if "temperature" in present:
        _check_number(params, "temperature", 0.0, 2.0)
    if "top_p" in present:
        _check_number(params, "top_p", 0.0, 1.0)


def validate_stream(params: Mapping[str, Any]) -> None:
    """`stream` a bool and `stream_options` an object, only with `stream` true, its `include_usage` a bool (OpenAI's
    400 otherwise), when given: a truthy string would open a stream the caller does not expect to read (and so never settles)."""
    if "stream" not in params and "stream_options" not in params:
        return
    stream, options = params.get("stream"), params.get("stream_options")
    if given(stream) and not isinstance(stream, bool):
        raise InvalidRequestError(f"stream must be true or false, got {stream!r}", param="stream")
    if given(options) and not isinstance(options, Mapping):
        raise InvalidRequestError(f"stream_options must be an object, got {options!r}", param="stream_options")
    if given(options) and stream is not True:
        raise InvalidRequestError("The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options")
    usage = options.get("include_usage") if given(options) else None
    if given(usage) and not isinstance(usage, bool):  # the SDK would read "yes", even "no", as asked for: the server refuses it
        raise _invalid_type("stream_options.include_usage", "a boolean", usage)


def validate_user(params: Mapping[str, Any]) -> None:
    """`user` a string, when given, as OpenAI checks it (a server such as llama.cpp's Python one answers 500 for a number)."""
    user = params.get("user")
    if given(user) and not isinstance(user, str):
        raise InvalidRequestError(f"Invalid type for 'user': expected a string, but got {type(user).__name__} instead.", param="user")


def _invalid_type(param: str, expected: str, value: Any) -> InvalidRequestError:
    """OpenAI's 400 for a value of the wrong type, naming its type only (a schema or a part may be large, or private)."""
    kind = "null" if value is None else type(value).__name__
    return InvalidRequestError(f"Invalid type for '{param}': expected {expected}, but got {kind} instead.", param=param)


def _check_tools(params: Mapping[str, Any], name: str = "tools") -> None:
    """`tools` (or chat's legacy `functions`) a list of objects, when given, as OpenAI checks it: the budget counts
    each as its JSON object."""
    tools = params.get(name)
    if given(tools) and not isinstance(tools, list):
        raise _invalid_type(name, "an array of objects", tools)
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, Mapping):
            raise _invalid_type(f"{name}[{i}]", "an object", tool)


def _check_parts(where: str, parts: list[Any]) -> None:
    """A chat message's content parts: each an object (or a string, vLLM's plain text part), a text part's `text` a
    string and an image part's `image_url` an object, as the prompt's count and a reranker's question read them."""
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if isinstance(part, str):
            continue
        if not isinstance(part, Mapping):
            raise _invalid_type(at, "a content part (an object)", part)
        kind = part.get("type")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _invalid_type(f"{at}.text", "a string", part.get("text"))
        if kind == "image_url" and not isinstance(part.get("image_url"), Mapping):
            raise _invalid_type(f"{at}.image_url", "an object with a url", part.get("image_url"))


def validate_chat(params: Mapping[str, Any]) -> None:
    """Chat messages: a non-empty list of {role, content}, each role a string (servers add their own, such as vLLM's
    "ipython"), content a string or a list of parts; `tools` and `functions` lists of objects."""
    messages = params.get("messages")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise InvalidRequestError("messages must be a list of {'role', 'content'} objects", param="messages")
    messages = list(messages)
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"messages[{i}] must be an object with a role (a string)", param=f"messages[{i}]")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")
        if isinstance(content, list):
            _check_parts(f"messages[{i}].content", content)
    if "tools" in params or "functions" in params:
        _check_tools(params)
        _check_tools(params, "functions")
    validate_sampling(params)


def _token_ids(value: Any) -> bool:
    """Whether `value` is a list of token ids (integers, not bools)."""
    return isinstance(value, list) and all(isinstance(token, int) and not isinstance(token, bool) for token in value)


def _check_texts(name: str, value: str | list[Any]) -> None:
    """A completions `prompt` or embeddings `input`: a string, or a list of strings, token ids or lists of token ids,
    the shapes OpenAI takes and the SDK counts (a mixed list was a ConfigError mid-call, not this 400 before it)."""
    if isinstance(value, str) or all(isinstance(item, str) for item in value) or _token_ids(value) or all(_token_ids(item) for item in value):
        return
    raise InvalidRequestError(f"{name} must be a string, a list of strings, a list of token ids, or a list of such lists", param=name)


def validate_completion(params: Mapping[str, Any]) -> None:
    """Legacy completions: a prompt string (or list of strings / token ids); `max_tokens` may be 0 (with `echo`, to
    score a prompt); `best_of` an integer (the budget reserves for that many answers)."""
    prompt = params.get("prompt")
    if not isinstance(prompt, (str, list)):
        raise InvalidRequestError("prompt must be a string or a list", param="prompt")
    _check_texts("prompt", prompt)
    _check_integer(params, "best_of", 0)
    validate_sampling(params, min_tokens=0)


def validate_embedding(params: Mapping[str, Any]) -> None:
    """Embeddings: a non-empty string or list, of strings or token ids."""
    value = params.get("input")
    if not isinstance(value, (str, list)) or len(value) == 0:
        raise InvalidRequestError("input must be a non-empty string or list", param="input")
    _check_texts("input", value)


def validate_responses(params: Mapping[str, Any]) -> None:
    """Responses: `input`, when given (instructions alone, a stored prompt, response or conversation
    can stand for it), a string or a list of items; `instructions` a string; `tools` a list of objects;
    `max_output_tokens`, `temperature`, `top_p` in range."""
    value, instructions = params.get("input"), params.get("instructions")
    if given(value) and not isinstance(value, (str, list)):
        raise InvalidRequestError("input must be a string or a list of input items", param="input")
    if given(instructions) and not isinstance(instructions, str):
        raise InvalidRequestError(f"instructions must be a string, got {instructions!r}", param="instructions")
    for i, item in enumerate(value if isinstance(value, list) else ()):
        _check_input_item(i, item)
    _check_tools(params)
    _check_integer(params, "max_output_tokens", 1, MAX_TOKENS)
    _check_number(params, "temperature", 0.0, 2.0)
    _check_number(params, "top_p", 0.0, 1.0)


def _check_input_item(i: int, item: Any) -> None:
    """One Responses input item: an object (openai's own items, such as a previous response's output,
    are dumped to one by `as_sent`), a message's content a string or a list of parts."""
    if not isinstance(item, Mapping):
        raise InvalidRequestError(f"input[{i}] must be an input item (an object), got {item!r}", param=f"input[{i}]")
    content = item.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise InvalidRequestError(f"input[{i}].content must be a string or a list of parts", param=f"input[{i}].content")


def validate_model(params: Mapping[str, Any], *, optional: bool = False) -> None:
    """A model name: a non-empty string (None would go out as `"model": null`, and no price fits it); left
    out only where it is `optional` (the Responses API, whose stored prompt can name the model)."""
    model = params.get("model", openai.omit)
    if optional and isinstance(model, _UNSET):
        return
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model must be a non-empty string, got {model!r}", param="model")


def validate(route: Route, params: Mapping[str, Any]) -> None:
    """The checks of the request's route."""
    validate_model(params, optional=route is RESPONSES)
    validate_stream(params)
    validate_user(params)
    if route is CHAT:
        validate_chat(params)
    elif route is COMPLETIONS:
        validate_completion(params)
    elif route is RESPONSES:
        validate_responses(params)
    else:
        validate_embedding(params)
