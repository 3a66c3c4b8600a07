"""The shapes a stored chat or completions answer must have to be served: a hit serves what the cache holds as it is,
so a bucket someone edited or a corrupt shared value (a number for a text, a text for an object) is refused here,
and skipped as a miss, rather than served with wrong types or raised raw on replay; warned of once per key
(`warn_skipped`), so that a cache that never hits says why."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .._logging import logger
from .._types import Json

_WARN_KEYS = 1024  # the latest keys warned of: each warned once, not once per call, in bounded memory
_WARNED: OrderedDict[str, None] = OrderedDict()
_WARNED_LOCK = threading.Lock()


def warn_skipped(key: str, error: BaseException) -> None:
    """Warn once per key that a stored entry shaped unlike an answer (another version's, hand-edited) was skipped:
    its call is sent for, and each call after it too, with no other sign why the cache never hits."""
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED[key] = None
        if len(_WARNED) > _WARN_KEYS:
            _WARNED.popitem(last=False)
    why = f"no {error} field" if isinstance(error, KeyError) else str(error)
    logger.warning("cache: a stored entry at %s was skipped, shaped unlike an answer this version serves (%s); "
                   "calls asking it are sent for (warned once per key)", key, why)


def check_shapes(choice: Json, meta: Json, chunks: list[Json] | None) -> None:
    """TypeError unless a stored chat or completions choice, its fields and its chunks have the types replay serves."""
    _check_choice(choice, "message")
    _check_meta(meta)
    for chunk in chunks or []:
        if not _objects(chunk.get("choices")):
            raise TypeError("a stored chunk's choices must be a list of objects")
        _check_meta(chunk)
        for chunk_choice in chunk.get("choices") or []:
            _check_choice(chunk_choice, "delta")


def _objects(value: object) -> bool:
    """Whether a stored value is null or a list of JSON objects (choices, tool calls)."""
    return value is None or (isinstance(value, list) and all(isinstance(item, dict) for item in value))


def _check_choice(choice: Json, body: str) -> None:
    """TypeError unless a stored choice (or chunk choice) has the shape replay reads: its ``body``
    (message or delta) an object, with role, text and refusal strings or null, a finish_reason string or null,
    logprobs an object or null, and tool calls a list of calls (`_check_call`)."""
    inner = choice.get(body)
    if inner is None:
        inner = {}
    elif not isinstance(inner, dict):
        raise TypeError(f"a stored choice's {body} must be an object")
    _check_texts(choice, ("text", "finish_reason"))
    _check_texts(inner, ("role", "content", "refusal"))
    if not isinstance(choice.get("logprobs"), (dict, type(None))) or not _objects(inner.get("tool_calls")):
        raise TypeError("a stored choice's logprobs must be an object and its tool calls a list of objects")
    for call in [inner.get("function_call"), *(inner.get("tool_calls") or [])]:
        _check_call(call)


def _check_call(call: Any) -> None:
    """TypeError unless a stored tool call (or legacy function_call) is null or an object whose id, type, name,
    arguments and input are strings or null, its function or custom part an object, and its index an integer."""
    if call is None:
        return
    if not isinstance(call, dict):
        raise TypeError("a stored tool call must be an object")
    inner, index = call.get("function") or call.get("custom") or call, call.get("index")
    if not isinstance(inner, dict) or not (index is None or (isinstance(index, int) and not isinstance(index, bool))):
        raise TypeError("a stored tool call must be an object with an object function and an integer index")
    _check_texts(call, ("id", "type"))
    _check_texts(inner, ("name", "arguments", "input"))


def _check_meta(fields: Json) -> None:
    """TypeError unless a stored answer's (or chunk's) id, model, fingerprint and tier are strings or null, created a number."""
    _check_texts(fields, ("id", "model", "system_fingerprint", "service_tier"))
    if not (fields.get("created") is None or is_number(fields["created"])):
        raise TypeError("a stored answer's created must be a number")


def _check_texts(value: Json, names: tuple[str, ...]) -> None:
    """TypeError unless each named field of a stored object is a string or null (a hit serves them as they are)."""
    if not texts_or_null(value, *names):
        raise TypeError(f"a stored answer's {', '.join(names)} must each be a string or null")


def texts_or_null(value: Json, *names: str) -> bool:
    """Whether each named field of a stored object is a string or null (a loop: a hit checks a dozen of them)."""
    for name in names:
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            return False
    return True


def is_number(value: Any) -> bool:
    """Whether a stored value is a JSON number (an int or a float; a bool is neither)."""
    return type(value) in (int, float)
