"""What the call log keeps: one record per call and any number of feedback items on it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .._exceptions import ConfigError
from .._process import random_hex
from .._text import checked_text, is_utf8

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's own from Python 3.11

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, lt=2**63, strict=True)]  # a 64-bit SQLite INTEGER
Label = Literal["correct", "incorrect"]
LABELS: tuple[Label, ...] = get_args(Label)
_COUNTS = (int, bool, type(None))  # a usage's or an extra's values, exactly typed: plain JSON with no text to check
_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # made once: json.dumps with options makes one a call


def valid_text(value: str) -> str:
    """``value`` with each lone surrogate (half of an emoji a server cut) replaced by U+FFFD: text that
    SQLite and PostgreSQL can take as UTF-8, where a raw surrogate made every write of the record fail."""
    return value if is_utf8(value) else value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _valid(value: Any) -> Any:
    """Plain JSON data with ``valid_text`` applied to every string in it, keys too."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {_valid(k): _valid(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid(item) for item in value]
    return value


def as_config_error(error: pydantic.ValidationError, what: str) -> ConfigError:
    """pydantic's ValidationError as ConfigError naming each bad field, never the values (a request may hold a key);
    ``model_validate`` runs ``__init__`` inside pydantic, which wraps the ConfigError raised there: that one is returned."""
    raised = [item.get("ctx", {}).get("error") for item in error.errors()]
    if len(raised) == 1 and isinstance(raised[0], ConfigError):
        return raised[0]
    problems = "; ".join(": ".join(filter(None, [".".join(map(str, e["loc"])), e["msg"]])) for e in error.errors())
    return ConfigError(f"bad {what}: {problems}")


@contextmanager
def config_errors(what: str) -> Iterator[None]:
    """``as_config_error`` for what the block raises."""
    try:
        yield
    except pydantic.ValidationError as error:
        raise as_config_error(error, what) from None


def new_call_id() -> str:
    """A unique, time-sortable call id: ``bb-<ms since epoch, hex>-<16 random hex>``."""
    return f"bb-{int(time.time() * 1000):x}-{random_hex(8)}"


class CallRecord(BaseModel):
    """One call as the log keeps it; ``record()`` redacts ``request``, ``error`` and ``extra``."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(default_factory=new_call_id, min_length=1)
    created: FiniteFloat = Field(default_factory=time.time)  # seconds since the epoch
    endpoint_host: str  # host of the endpoint called ("api.openai.com", "127.0.0.1", "local")
    model: str
    route: str  # "chat.completions", "completions", "embeddings", "responses"
    request: dict[str, Any]  # the caller's request arguments (JSON)
    candidates: list[str] = Field(default_factory=list)  # every answer gathered, in gathering order
    chosen: list[Count] = Field(default_factory=list)  # indices into candidates returned, best first
    scores: list[FiniteFloat] | None = None  # reranker score per candidate
    usage: dict[str, Any] | None = None  # token usage summed over the requests sent
    usage_counted: bool = False  # the server sent no usage, so the SDK counted the tokens itself (as response.blackbox)
    cost_usd: FiniteFloat = Field(default=0.0, ge=0.0)
    latency_s: FiniteFloat = Field(default=0.0, ge=0.0)
    cache_hit: bool = False  # every returned candidate came from the cache
    error: str | None = None  # "ErrorType: message" when the call failed
    retries: Count = 0
    key: str | None = None  # the caller's grouping key (the client stores its budget key here)
    extra: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, /, **fields: Any) -> None:
        """Validate the fields (pydantic, underneath); ConfigError naming each bad one, never the values (a request may hold a key).
        A try of its own, not ``config_errors``: a record is built on every call's path."""
        try:
            super().__init__(**fields)
        except pydantic.ValidationError as error:
            raise as_config_error(error, "CallRecord") from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        """pydantic's ``model_validate``, with ``__init__``'s ConfigError for a bad field, not pydantic's ValidationError around it."""
        with config_errors("CallRecord"):
            return super().model_validate(obj, *args, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Self:
        """pydantic's ``model_validate_json``, with the same ConfigError for bad JSON or a bad field."""
        with config_errors("CallRecord"):
            return super().model_validate_json(json_data, *args, **kwargs)

    @pydantic.field_validator("request", "usage", "extra")
    @classmethod
    def _plain_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Only values that survive strict JSON encoding can be logged; lone surrogates in them are replaced."""
        if value and not all(type(k) is str and k.isascii() and type(v) in _COUNTS for k, v in value.items()):  # {} and counts: plain as they are
            try:
                text = _STRICT_JSON.encode(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"must be plain JSON: {exc}") from exc
            if not is_utf8(text):
                return _valid(value)  # type: ignore[no-any-return]  # a dict in, a dict out
        return value

    @pydantic.model_validator(mode="after")
    def _fits(self) -> CallRecord:
        """Lone surrogates in its text replaced (an answer cut mid-emoji), so that every store can write the record (one
        pass over the fields, not a validator each); ``chosen`` must index ``candidates``, with one score per candidate."""
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and not is_utf8(value):
                setattr(self, name, valid_text(value))
        if not all(map(is_utf8, self.candidates)):
            self.candidates = [valid_text(text) for text in self.candidates]
        if any(i >= len(self.candidates) for i in self.chosen):
            raise ValueError(f"chosen {self.chosen} must index the {len(self.candidates)} candidates")
        if self.scores is not None and len(self.scores) != len(self.candidates):
            raise ValueError(f"{len(self.scores)} scores for {len(self.candidates)} candidates")
        return self


_TEXT_FIELDS = ("call_id", "endpoint_host", "model", "route", "error", "key")


class Feedback(BaseModel):
    """One piece of feedback on a logged call; ``candidate`` is the answer ``reward`` and ``label`` rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    call_id: str
    created: FiniteFloat
    reward: FiniteFloat | None = None  # any finite number; higher is better
    label: Label | None = None
    preferred: Count | None = None  # index of the candidate the rater preferred
    reference: str | None = None  # the correct answer, written by the rater
    note: str | None = None
    candidate: Count | None = None  # chosen[0] when reward or label is given: the answer they rate

    @pydantic.field_validator("call_id", "reference", "note")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        """Lone surrogates replaced, so that every store can write the feedback."""
        return value if value is None else valid_text(value)


def feedback_fields(
    call_id: str, reward: float | None, label: Label | None, preferred: int | None, reference: str | None, note: str | None
) -> dict[str, Any]:
    """The feedback a caller gave, as fields; ConfigError naming the field for a call id no store can hold, a value
    of the wrong type (True and "1" are not 1.0), or no feedback at all (checked before any store is touched)."""
    checked_text(call_id, "call_id")
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float)) or not _finite(reward)):
        shown = "an integer too large for a float" if isinstance(reward, int) and not isinstance(reward, bool) else f"{reward!r:.80}"
        raise ConfigError(f"reward must be a finite number, got {shown}")
    if label is not None and label not in LABELS:
        raise ConfigError(f"label must be one of {', '.join(map(repr, LABELS))}, got {label!r:.80}")
    if preferred is not None and (isinstance(preferred, bool) or not isinstance(preferred, int)):
        raise ConfigError(f"preferred must be an integer (the index of a candidate), got {preferred!r:.80}")
    for name, text in (("reference", reference), ("note", note)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{name} must be a string, got {text!r:.80}")
    if isinstance(reference, str) and not reference.strip():  # stored, it would teach nothing: training skips a blank answer
        raise ConfigError(f"reference must be the right answer's text, got {reference!r}")
    if reward is None and label is None and preferred is None and reference is None and note is None:
        raise ConfigError("feedback() needs at least one of reward, label, preferred, reference, note")
    return {"reward": reward, "label": label, "preferred": preferred, "reference": reference, "note": note}


def _finite(number: float) -> bool:
    """Whether a number is finite as a float (an int past a float's range, 10**400, is not)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def feedback_on(call_id: str, count: int, chosen: list[int], fields: dict[str, Any]) -> Feedback:
    """Feedback on a logged call with ``count`` candidates and ``chosen`` returned, checked; ConfigError when it doesn't fit."""
    rated = fields["reward"] is not None or fields["label"] is not None
    if rated and not chosen:
        raise ConfigError(f"call {call_id!r} returned no answer, so reward and label have nothing to rate")
    preferred = fields["preferred"]
    if preferred is not None and not (isinstance(preferred, int) and 0 <= preferred < count):
        raise ConfigError(f"preferred={preferred!r} must index the {count} candidates of call {call_id!r}")
    with config_errors("feedback"):
        return Feedback(call_id=call_id, created=time.time(), candidate=chosen[0] if rated else None, **fields)
