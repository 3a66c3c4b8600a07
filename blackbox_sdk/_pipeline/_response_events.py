"""The Responses API's stream events, as JSON: the events a whole response streams as (for a cached
or reranked answer replayed as a stream), and what a received event list comes to (its final
response, the text that arrived) for a live stream's account.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from openai._models import construct_type
from openai.types.responses import ResponseStreamEvent

from .._types import RESPONSES, Json
from ._stored_shapes import is_number, texts_or_null

_PIECES = re.compile(r"\s*\S+\s*|\s+")
ENDED = ("response.completed", "response.incomplete")  # a stream that ended with one of these is whole
FAILED = ("response.failed", "error")
_STREAMED_PARTS = {  # the content parts a server streams as deltas: the field holding their text, their events' prefix
    "output_text": ("text", "response.output_text"),
    "refusal": ("refusal", "response.refusal"),
    "reasoning_text": ("text", "response.reasoning_text"),
}
_PROGRESS = {  # the hosted tool calls a server reports the progress of between an item's added and done
    "web_search_call": ("in_progress", "searching"),
    "file_search_call": ("in_progress", "searching"),
    "image_generation_call": ("in_progress", "generating"),
}


def check_stored(response: Json, events: list[Json] | None) -> None:
    """TypeError unless a stored Responses answer has the shapes a hit serves and replays: its id, model and status
    strings, its output a list of items (a message's or reasoning's parts objects with text that is a string or null),
    and its stored events (when it came streamed) ending in the one that carries the response; else it would be served,
    or raise on replay."""
    output, created = response.get("output"), response.get("created_at")
    if not isinstance(output, list) or not all(_item_shaped(item) for item in output):
        raise TypeError("a stored response's output must be a list of output items with lists of parts")
    if not texts_or_null(response, "id", "object", "model", "status") or not (created is None or is_number(created)):
        raise TypeError("a stored response's id, model and status must be strings and its created_at a number")
    if events and not isinstance(events[-1].get("response"), dict):
        raise TypeError("a stored response's events must end with the event that carries the response")


def _item_shaped(item: Any) -> bool:
    """Whether a stored output item is an object with the parts and texts replay reads (its type, id, role, status, name
    and call id; a message's or reasoning's parts, a function call's arguments); the other kinds are replayed whole."""
    if not isinstance(item, dict) or not texts_or_null(item, "type", "id", "role", "status", "name", "call_id"):
        return False
    if item.get("type") in ("function_call", "custom_tool_call"):
        return texts_or_null(item, "arguments", "input")
    parts = [item.get("content"), item.get("summary")] if item.get("type") in ("message", "reasoning") else []
    return all(part is None or (isinstance(part, list) and all(isinstance(p, dict) and texts_or_null(p, "text", "refusal") for p in part)) for part in parts)


def event(data: Json) -> Any:
    """A typed stream event from its JSON, built leniently as the openai client builds what a server sent."""
    return construct_type(type_=ResponseStreamEvent, value=data)


def _call_events(item: Json, index: int) -> Iterator[Json]:
    """A function call's events as a server streams them: added with empty arguments, the arguments
    piece by piece, their done, then the whole item (openai's stream helper and UIs read the deltas)."""
    arguments = item.get("arguments") or ""
    where = {"item_id": item.get("id") or "", "output_index": index}
    yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "arguments": "", "status": "in_progress"}}
    for piece in _PIECES.findall(arguments):
        yield {"type": "response.function_call_arguments.delta", **where, "delta": piece}
    yield {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _reasoning_events(item: Json, index: int) -> Iterator[Json]:
    """A reasoning item's events as a server streams them: added with no text (its content and summary
    empty); each reasoning text part as a content part (`_part_events`); for each summary part, the part
    added empty, its text piece by piece, the text done, the part done; then the whole item."""
    content = item.get("content")
    started = {**item, "summary": [], **({"content": []} if isinstance(content, list) else {}), **({"status": "in_progress"} if item.get("status") else {})}
    yield {"type": "response.output_item.added", "output_index": index, "item": started}
    for content_index, part in enumerate(content if isinstance(content, list) else []):
        yield from _part_events(part, {"item_id": item.get("id") or "", "output_index": index, "content_index": content_index})
    for summary_index, part in enumerate(item.get("summary") or []):
        where = {"item_id": item.get("id") or "", "output_index": index, "summary_index": summary_index}
        text = part.get("text") or ""
        yield {"type": "response.reasoning_summary_part.added", **where, "part": {**part, "text": ""}}
        for piece in _PIECES.findall(text):
            yield {"type": "response.reasoning_summary_text.delta", **where, "delta": piece}
        yield {"type": "response.reasoning_summary_text.done", **where, "text": text}
        yield {"type": "response.reasoning_summary_part.done", **where, "part": part}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _progress_events(item: Json, index: int) -> Iterator[Json]:
    """A hosted tool call's events as a server streams them: added in progress, its progress (in progress,
    searching or generating, and completed when it did), then the whole item."""
    kind, where = item["type"], {"item_id": item.get("id") or "", "output_index": index}
    steps = _PROGRESS[kind] + (("completed",) if item.get("status") == "completed" else ())
    yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress"}}
    for step in steps:
        yield {"type": f"response.{kind}.{step}", **where}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _item_events(item: Json, index: int) -> Iterator[Json]:
    """One output item's events: added, then (for a message) each text part piece by piece, (for a
    function call) its arguments, (for reasoning) its summary, (for a hosted tool call) its progress, then done."""
    if item.get("type") == "function_call":
        yield from _call_events(item, index)
        return
    if item.get("type") == "reasoning":
        yield from _reasoning_events(item, index)
        return
    if item.get("type") in _PROGRESS:
        yield from _progress_events(item, index)
        return
    if item.get("type") != "message":
        yield {"type": "response.output_item.added", "output_index": index, "item": item}
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
        return
    item_id = item.get("id") or f"msg_{index}"
    yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "id": item_id, "status": "in_progress", "content": []}}
    for part_index, part in enumerate(item.get("content") or []):
        yield from _part_events(part, {"item_id": item_id, "output_index": index, "content_index": part_index})
    yield {"type": "response.output_item.done", "output_index": index, "item": {**item, "id": item_id}}


def _part_events(part: Json, where: Json) -> Iterator[Json]:
    """One content part's events: added empty, its text (refusal, reasoning text) piece by piece (an output
    text's annotations among them), its done with the whole text (and an output text's logprobs), then the
    part done; another kind of part whole."""
    kind = part.get("type")
    if kind not in _STREAMED_PARTS:
        yield {"type": "response.content_part.added", **where, "part": part}
        yield {"type": "response.content_part.done", **where, "part": part}
        return
    field, prefix = _STREAMED_PARTS[kind]
    text = part.get(field) or ""
    empty = {**part, field: "", **({"annotations": [], "logprobs": []} if kind == "output_text" else {})}
    yield {"type": "response.content_part.added", **where, "part": empty}
    yield from _text_events(part, where, text, prefix)
    done_logprobs = {"logprobs": part.get("logprobs") or []} if kind == "output_text" else {}
    yield {"type": f"{prefix}.done", **where, field: text, **done_logprobs}
    yield {"type": "response.content_part.done", **where, "part": part}


def _text_events(part: Json, where: Json, text: str, prefix: str) -> Iterator[Json]:
    """A part's text as deltas (an output text's logprobs on the first, as a live stream's deltas carry their tokens'); an
    output text's annotations each added (in order) after the delta that streams the text up to its end, as a server
    adds them while the text streams."""
    output_text = part.get("type") == "output_text"
    listed = part.get("annotations") if output_text else None
    pending = list(enumerate(listed if isinstance(listed, list) else []))
    logprobs = part.get("logprobs") or []
    streamed = 0
    for number, piece in enumerate(_PIECES.findall(text)):
        streamed += len(piece)
        yield {"type": f"{prefix}.delta", **where, "delta": piece, **({"logprobs": [] if number else logprobs} if output_text else {})}
        while pending and _annotation_end(pending[0][1], len(text)) <= streamed:
            yield _annotation_event(*pending.pop(0), where)
    for number, annotation in pending:
        yield _annotation_event(number, annotation, where)


def _annotation_end(annotation: Any, length: int) -> int:
    """Where in its text an annotation ends (a citation's end, a file's insertion point), else the text's end."""
    end = annotation.get("end_index", annotation.get("index")) if isinstance(annotation, dict) else None
    return end if isinstance(end, int) and not isinstance(end, bool) else length


def _annotation_event(number: int, annotation: Any, where: Json) -> Json:
    """The event that adds an output text's annotation."""
    return {"type": "response.output_text.annotation.added", **where, "annotation_index": number, "annotation": annotation}


def events_of(response: Json) -> list[Json]:
    """The events a server streams a whole response as: created, in progress, each output item, then
    completed (or incomplete) with the whole response; numbered in order."""
    started = {**copy.deepcopy(response), "status": "in_progress", "output": [], "usage": None}
    events: list[Json] = [{"type": "response.created", "response": started}, {"type": "response.in_progress", "response": started}]
    for index, item in enumerate(response.get("output") or []):
        events += _item_events(item, index)
    last = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append({"type": last, "response": response})
    return [{**e, "sequence_number": number} for number, e in enumerate(events)]


def final_response(events: list[Json]) -> Json | None:
    """The whole response a stream ended with (completed or incomplete), or None when it did not end so."""
    last = events[-1] if events else {}
    return last.get("response") if last.get("type") in ENDED else None


def arrived(events: list[Json]) -> tuple[str, Json | None]:
    """What a stream that did not end whole brought: the output streamed (an answer's text, and the other outputs
    the server bills as output tokens: a refusal, a call's arguments or input, reasoning), and a failed response's
    own account of it (None when the stream was cut or closed before one came)."""
    text = "".join(RESPONSES.delta_text(e) for e in events)
    failed = next((e.get("response") for e in reversed(events) if e.get("type") in FAILED), None)
    return text, failed if isinstance(failed, dict) else None
