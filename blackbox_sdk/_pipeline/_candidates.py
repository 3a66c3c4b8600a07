"""Candidates: one sampled answer each, the unit the cache stores and fan-out and reranking merge.

A response with k choices splits into k candidates; a stream splits into one chunk list per
choice. Any list of candidates rebuilds into one response (choices re-indexed, usage summed) or
one chunk sequence (the stored chunks replayed as they came, choice indices re-numbered).
Everything here works on JSON dicts, so that what the cache holds is plain data.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .._types import CHAT, Json, Route

_PIECES = re.compile(r"\s*\S+\s*|\s+")


@dataclass
class Candidate:
    """One answer: its choice (index 0), its stream chunks when it came streamed, and what it cost."""

    choice: Json
    meta: Json
    completion_tokens: int
    prompt_tokens: int
    chunks: list[Json] | None = None

    def to_json(self) -> Json:
        """The candidate as the JSON the cache stores."""
        return {
            "choice": self.choice,
            "meta": self.meta,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "chunks": self.chunks,
        }

    @classmethod
    def from_json(cls, data: Json) -> Candidate:
        """Rebuild a stored candidate; KeyError/TypeError on anything foreign (the cache drops those)."""
        choice, meta = data["choice"], data["meta"]
        if not isinstance(choice, dict) or not isinstance(meta, dict):
            raise TypeError("candidate choice and meta must be objects")
        chunks = data.get("chunks")
        if chunks is not None and not (isinstance(chunks, list) and all(isinstance(c, dict) for c in chunks)):
            raise TypeError("candidate chunks must be a list of objects")
        return cls(choice, meta, int(data["completion_tokens"]), int(data["prompt_tokens"]), chunks)


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


def split_response(route: Route, response: Json, usage: Json) -> list[Candidate]:
    """One candidate per choice; completion tokens shared out by answer length when there are several.

    The candidates take the response's own choice objects (not copies): pass a fresh ``to_dict()``.
    """
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    completion = _share(int(usage.get("completion_tokens") or 0), [len(route.text(c)) for c in choices])
    prompt = _share(int(usage.get("prompt_tokens") or 0), [1] * len(choices))
    return [Candidate({**c, "index": 0}, _meta(response), completion[i], prompt[i]) for i, c in enumerate(choices)]


def split_chunks(route: Route, chunks: list[Json], usage: Json) -> list[Candidate]:
    """One candidate per choice index of a finished stream, each with its own chunks (index 0)."""
    per_index: dict[int, list[Json]] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            one = copy.deepcopy(chunk)
            one["choices"] = [{**copy.deepcopy(choice), "index": 0}]
            one.pop("usage", None)
            per_index.setdefault(int(choice.get("index", 0)), []).append(one)
    candidates = []
    for index in sorted(per_index):
        own = per_index[index]
        text = "".join(route.delta_text(c["choices"][0]) for c in own)
        finish = next((c["choices"][0].get("finish_reason") for c in reversed(own) if c["choices"][0].get("finish_reason")), None)
        choice = route.with_text({"index": 0, "finish_reason": finish}, text)
        if route is CHAT:
            choice["message"]["role"] = "assistant"
        candidates.append(Candidate(choice, _meta(own[0], extras=False), 0, 0, own))
    texts = [len(route.text(c.choice)) for c in candidates]
    for candidate, tokens in zip(candidates, _share(int(usage.get("completion_tokens") or 0), texts)):
        candidate.completion_tokens = tokens
    for candidate, tokens in zip(candidates, _share(int(usage.get("prompt_tokens") or 0), [1] * len(candidates))):
        candidate.prompt_tokens = tokens
    return candidates


def sum_usage(candidates: Iterable[Candidate]) -> Json:
    """Usage summed over candidates, in the openai `CompletionUsage` shape."""
    items = list(candidates)
    prompt = sum(c.prompt_tokens for c in items)
    completion = sum(c.completion_tokens for c in items)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response_from_candidates(route: Route, candidates: list[Candidate], usage: Json | None = None) -> Json:
    """One response whose choices are the candidates in order, re-indexed from 0.

    Each choice is a new top-level object over the candidate's nested ones (a candidate is built
    fresh for each call, from the cache's JSON or a fresh ``to_dict()``, and only read after)."""
    if not candidates:
        raise ValueError("a response needs at least one candidate")
    response: Json = {"object": route.object, **candidates[0].meta}
    response["choices"] = [{**c.choice, "index": i} for i, c in enumerate(candidates)]
    response["usage"] = usage if usage is not None else sum_usage(candidates)
    return response


def _synthetic_chunks(route: Route, candidate: Candidate) -> list[Json]:
    """Chunks for a candidate that arrived whole: a role chunk, its text piece by piece, the finish."""
    base = {"object": route.chunk_object, **_core_meta(candidate.meta)}
    choice = candidate.choice
    pieces = _PIECES.findall(route.text(choice)) or [""]
    if route is CHAT:
        deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
        return chunks
    chunks = [{**base, "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]} for p in pieces]
    chunks[-1]["choices"][0]["finish_reason"] = choice.get("finish_reason")
    return chunks


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
