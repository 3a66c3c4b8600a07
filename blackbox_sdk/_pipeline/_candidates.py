"""Candidates: one sampled answer each, the unit the cache stores and fan-out and reranking merge.

A response with k choices splits into k candidates; a stream splits into one chunk list per
choice, each with the whole choice its chunks add up to (text, refusal, tool calls, logprobs), as
openai's own stream accumulation rebuilds it. Each candidate keeps its share of the usage: the
prompt and completion tokens and the detail counts (cached, reasoning tokens...), shared out so
that the candidates of one response sum to its usage again. Any list of candidates rebuilds into
one response (choices re-indexed, usage summed) or one chunk sequence (the stored chunks replayed
as they came, choice indices re-numbered; a whole answer as chunks that add up to it again).
Everything here works on JSON dicts, so that what the cache holds is plain data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._types import CHAT, COMPLETIONS, DETAILS, RESPONSES, Json, Route, add_usage, is_token_count, token_count
from ._response_events import check_stored
from ._stored_shapes import check_shapes, warn_skipped

_PIECES = re.compile(r"\s*\S+\s*|\s+")


@dataclass
class Candidate:
    """One answer: its choice (index 0), its stream chunks when it came streamed, and what it cost:
    tokens, and its share of the usage's detail counts (none in an entry stored before they were kept)."""

    choice: Json
    meta: Json
    completion_tokens: int
    prompt_tokens: int
    chunks: list[Json] | None = None
    details: Json = field(default_factory=dict)

    def to_json(self) -> Json:
        """The candidate as the JSON the cache stores."""
        return {
            "choice": self.choice,
            "meta": self.meta,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "chunks": self.chunks,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: Json, route: Route) -> Candidate:
        """Rebuild a stored candidate of `route`; KeyError/TypeError/ValueError on anything foreign (the cache drops
        those) or shaped unlike what a hit serves and replays: for chat and completions a choice, for
        Responses a whole response and its events (`check_stored`)."""
        choice, meta = data["choice"], data["meta"]
        if not isinstance(choice, dict) or not isinstance(meta, dict):
            raise TypeError("candidate choice and meta must be objects")
        chunks = data.get("chunks")
        if chunks is not None and not (isinstance(chunks, list) and all(isinstance(c, dict) for c in chunks)):
            raise TypeError("candidate chunks must be a list of objects")
        details = data.get("details") or {}
        if not isinstance(details, dict) or (details and not all(isinstance(part, dict) for part in details.values())):
            raise TypeError("candidate details must be an object of objects")
        if route is CHAT or route is COMPLETIONS:
            check_shapes(choice, meta, chunks)
        elif route is RESPONSES:
            check_stored(choice, chunks)
        counts = data["completion_tokens"], data["prompt_tokens"]
        if not (is_token_count(counts[0]) and is_token_count(counts[1])):
            raise ValueError("a stored candidate's token counts must be whole numbers from 0")
        return cls(choice, meta, int(counts[0]), int(counts[1]), chunks, details)


def stored(entry: Json, route: Route, key: str) -> Candidate | None:
    """A bucket's entry at `key` as a candidate of `route`, or None when it is shaped unlike one (warned of once per key)."""
    try:
        return Candidate.from_json(entry, route)
    except (KeyError, TypeError, ValueError) as error:
        warn_skipped(key, error)
        return None


CORE_META = ("id", "created", "model", "system_fingerprint", "service_tier")  # what every chunk of a stream carries


def _meta(response: Json, extras: bool = True) -> Json:
    """The fields every candidate keeps: id, created, model, fingerprint, and with `extras` the rest
    of a whole response's own fields beside its choices and usage (a provider's, such as Azure's
    `prompt_filter_results`), so that a hit gives them back."""
    if not extras:
        return {k: response[k] for k in CORE_META if response.get(k) is not None}
    return {k: v for k, v in response.items() if k not in ("object", "choices", "usage") and v is not None}


def _core_meta(meta: Json) -> Json:
    """The part of a candidate's fields that each chunk of a stream carries."""
    return {k: meta[k] for k in CORE_META if k in meta}


def _share(total: int, weights: list[int]) -> list[int]:
    """Split an integer total in proportion to weights, summing exactly to the total."""
    if not weights:
        return []
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    parts[0] += total - sum(parts)
    return parts


def _share_counts(counts: Json, weights: list[int]) -> list[Json]:
    """Detail counts split in proportion to weights, nested breakdowns too: each count sums back exactly."""
    parts: list[Json] = [{} for _ in weights]
    for name, value in counts.items():
        shares: list[Any]
        if isinstance(value, dict):
            shares = _share_counts(value, weights)
        elif isinstance(value, int) and not isinstance(value, bool):
            shares = _share(value, weights)
        else:
            continue
        for part, share in zip(parts, shares):
            part[name] = share
    return parts


def _apportion(route: Route, candidates: list[Candidate], usage: Json) -> list[Candidate]:
    """Give each candidate its share of the usage: completion tokens (and their details) by answer
    length, prompt tokens (and theirs) evenly."""
    by_length = [len(generated(route, c.choice)) for c in candidates]
    evenly = [1] * len(candidates)
    for candidate, tokens in zip(candidates, _share(token_count(usage.get("completion_tokens")), by_length)):
        candidate.completion_tokens = tokens
    for candidate, tokens in zip(candidates, _share(token_count(usage.get("prompt_tokens")), evenly)):
        candidate.prompt_tokens = tokens
    for name, weights in zip(DETAILS, (evenly, by_length)):  # prompt_tokens_details, completion_tokens_details
        given = usage.get(name)
        for candidate, part in zip(candidates, _share_counts(given, weights) if isinstance(given, dict) else []):
            candidate.details[name] = part
    return candidates


def generated(route: Route, choice: Json) -> str:
    """All that one answer generated, which a server bills as output tokens: its text, refusal and reasoning, and its
    tool calls' names and arguments (chat's `tool_calls` and legacy `function_call`; a response's function and
    custom tool calls, its reasoning): what is counted for an answer whose server sent no usage."""
    if route is RESPONSES:
        items = _dicts(choice.get("output"))
        said = [part for item in items for name in ("content", "summary") for part in _dicts(item.get(name))]
        return _joined([*(_called(item) for item in items), *([part.get("text"), part.get("refusal")] for part in said)])
    if route is not CHAT:
        return route.text(choice)
    given = choice.get("message")
    message: Json = given if isinstance(given, dict) else {}
    calls = [message.get("function_call"), *_dicts(message.get("tool_calls"))]
    return _joined([[message.get(name) for name in ("reasoning_content", "content", "refusal")], *(_called(call) for call in calls)])


def _called(call: Any) -> list[Any]:
    """A tool call's name and what it passes: chat's function or custom call, a legacy function_call, a response's item."""
    inner = (call.get("function") or call.get("custom") or call) if isinstance(call, dict) else {}
    return [inner.get(name) for name in ("name", "arguments", "input")] if isinstance(inner, dict) else []


def _dicts(value: Any) -> list[Json]:
    """The objects of a list a server sent (none for its null, text or number)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _joined(groups: Iterable[list[Any]]) -> str:
    """The strings among `groups`, one per line (the rest, a server's null or number, left out)."""
    return "\n".join(text for group in groups for text in group if isinstance(text, str) and text)


def split_response(route: Route, response: Json, usage: Json) -> list[Candidate]:
    """One candidate per choice, each with its share of the usage (`_apportion`).

    The candidates take the response's own choice objects (not copies): pass a fresh ``to_dict()``.
    """
    listed = response.get("choices")
    choices = sorted((c for c in listed if isinstance(c, dict)) if isinstance(listed, list) else [], key=lambda c: c.get("index", 0))  # a server's null, text or object: none
    return _apportion(route, [Candidate({**c, "index": 0}, _meta(response), 0, 0) for c in choices], usage)


def split_chunks(route: Route, chunks: list[Json], usage: Json) -> list[Candidate]:
    """One candidate per choice index of a finished stream, each with its own chunks (index 0) and its share
    of the usage; a chunk without choices other than the usage's (Azure's `prompt_filter_results` first)
    goes, as it came and where it came, with the first choice's chunks, so that a replay gives it back."""
    indices = [int(choice.get("index", 0)) for chunk in chunks for choice in chunk.get("choices") or []]
    per_index: dict[int, list[Json]] = {}
    for chunk in chunks:
        if not chunk.get("choices") and not chunk.get("usage") and indices:
            per_index.setdefault(min(indices), []).append(copy.deepcopy(chunk))
        for choice in chunk.get("choices") or []:
            one = copy.deepcopy(chunk)
            one["choices"] = [{**copy.deepcopy(choice), "index": 0}]
            one.pop("usage", None)
            per_index.setdefault(int(choice.get("index", 0)), []).append(one)
    candidates = [Candidate(_whole_choice(route, own), _meta(next(c for c in own if c["choices"]), extras=False), 0, 0, own)
                  for _, own in sorted(per_index.items())]
    return _apportion(route, candidates, usage)


def _whole_choice(route: Route, own: list[Json]) -> Json:
    """The choice a whole response holds for one choice's chunks, as openai's stream accumulation
    rebuilds it: text, refusal and tool calls gathered, logprobs joined, the last finish_reason."""
    choice: Json = {"index": 0, "finish_reason": None}
    message: Json = {}
    for chunk in own:
        for name, value in (chunk["choices"] or [{}])[0].items():
            if name == "delta" and isinstance(value, dict):
                _fold(message, value)
            elif name in ("text", "logprobs"):
                _fold(choice, {name: value})
            elif name != "index" and value is not None:
                choice[name] = copy.deepcopy(value)  # finish_reason and a provider's own fields: the last one sent
    if route is not CHAT:
        choice.setdefault("text", "")
        return choice
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    if message.get("tool_calls"):
        calls = sorted(message["tool_calls"], key=_position)
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in calls]
    choice["message"] = message
    return choice


def _fold(into: Json, delta: Json) -> None:
    """Add one stream delta to what was gathered so far, copying: strings concatenated, objects folded
    in turn, tool calls folded by their index, other lists extended; a role, type or index replaced."""
    for name, value in delta.items():
        have = into.get(name)
        if value is None:
            into.setdefault(name, None)
        elif isinstance(value, dict) and (have is None or isinstance(have, dict)):
            into[name] = have if have is not None else {}
            _fold(into[name], value)
        elif isinstance(value, list) and (have is None or isinstance(have, list)):
            into[name] = have if have is not None else []
            _extend(into[name], value, by_index=name == "tool_calls")
        elif isinstance(value, str) and isinstance(have, str) and name not in ("role", "type", "index"):
            into[name] = have + value
        else:
            into[name] = value


def _extend(into: list[Any], items: list[Any], *, by_index: bool) -> None:
    """Add a delta's list items, copying; with ``by_index`` an object folds into the one of its index."""
    for item in items:
        if by_index and isinstance(item, dict):
            same = next((had for had in into if isinstance(had, dict) and had.get("index") == item.get("index")), None)
            if same is None:
                same = {}
                into.append(same)
            _fold(same, item)
        else:
            into.append(copy.deepcopy(item))


def _position(call: Json) -> int:
    """A gathered tool call's index, for putting the calls in order (0 when a server sent none)."""
    index = call.get("index")
    return index if isinstance(index, int) else 0


def sum_usage(candidates: Iterable[Candidate], route: Route = CHAT) -> Json:
    """Usage summed over candidates, in the openai `CompletionUsage` shape, with the detail counts the
    candidates carry (their shares, or a Responses candidate's own usage)."""
    total: Json = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for c in candidates:
        total = add_usage(total, {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                  "total_tokens": c.prompt_tokens + c.completion_tokens, **route.details(c.choice), **c.details})
    return total


def response_from_candidates(route: Route, candidates: list[Candidate], usage: Json | None = None) -> Json:
    """One response whose choices are the candidates in order, re-indexed from 0.

    Each choice is a new top-level object over the candidate's nested ones (a candidate is built
    fresh for each call, from the cache's JSON or a fresh ``to_dict()``, and only read after)."""
    if not candidates:
        raise ValueError("a response needs at least one candidate")
    response: Json = {"object": route.object, **candidates[0].meta}
    response["choices"] = [{**c.choice, "index": i} for i, c in enumerate(candidates)]
    response["usage"] = usage if usage is not None else sum_usage(candidates, route)
    return response


def _synthetic_chunks(route: Route, candidate: Candidate) -> list[Json]:
    """Chunks for a candidate that arrived whole, which openai's stream accumulation folds back into
    the same choice: a role chunk, its text and refusal piece by piece, one chunk per tool call, the
    finish (with the choice's other fields); the logprobs on the first chunk after the role's (on a
    later choice's first chunk openai's accumulation would take them twice)."""
    base = {"object": route.chunk_object, **_core_meta(candidate.meta)}
    choice = candidate.choice
    logprobs = choice.get("logprobs")
    rest = {k: v for k, v in choice.items() if k not in ("index", "message", "text", "logprobs", "finish_reason") and v is not None}
    if route is CHAT:
        deltas = _synthetic_deltas(choice.get("message") or {})
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason"), **rest}]})
    else:
        pieces = _PIECES.findall(route.text(choice)) or [""]
        chunks = [{**base, "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]} for p in pieces]
        chunks[-1]["choices"][0].update(finish_reason=choice.get("finish_reason"), **rest)
    if logprobs is not None:
        chunks[1 if route is CHAT else 0]["choices"][0]["logprobs"] = logprobs
    return chunks


def _synthetic_deltas(message: Json) -> list[Json]:
    """The deltas of a whole chat message: role (and any other field of its own), text pieces,
    refusal pieces, one delta per tool call with its index."""
    content, refusal = message.get("content"), message.get("refusal")
    own = {k: v for k, v in message.items() if k not in ("role", "content", "refusal", "tool_calls") and v is not None}
    deltas: list[Json] = [{"role": message.get("role") or "assistant", "content": None if content is None else "", **own}]
    if content is not None:
        deltas += [{"content": p} for p in _PIECES.findall(content) or [""]]
    if refusal is not None:
        deltas += [{"refusal": p} for p in _PIECES.findall(refusal) or [""]]
    deltas += [{"tool_calls": [{**call, "index": i}]} for i, call in enumerate(message.get("tool_calls") or [])]
    return deltas


def chunks_from_candidates(route: Route, candidates: Iterable[Candidate], first_index: int = 0) -> Iterator[Json]:
    """Each candidate's chunks in turn (stored ones as they came), choice indices from `first_index`."""
    for offset, candidate in enumerate(candidates):
        for chunk in candidate.chunks or _synthetic_chunks(route, candidate):
            out = copy.deepcopy(chunk)
            for choice in out.get("choices") or []:
                choice["index"] = first_index + offset
            yield out


def usage_chunk(route: Route, meta: Json, usage: Json) -> Json:
    """The last chunk of a stream asked for with include_usage: no choices, the usage."""
    return {"object": route.chunk_object, **_core_meta(meta), "choices": [], "usage": usage}
