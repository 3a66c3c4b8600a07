"""What the local backend answers on POST /responses: a Response object in OpenAI's wire format, and
its stream of typed events, each with a sequence number: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta (as tokens
come), response.output_text.done, response.content_part.done, response.output_item.done, then
response.completed (response.incomplete when max_output_tokens cut it; response.failed when the
model broke mid-stream). Imports without torch.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._responses_request import ResponsesRequest

if TYPE_CHECKING:
    from ._streaming import Delta


def response_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The Responses API's usage object (a local model neither reads nor writes a prompt cache, nor reasons: those counts are 0)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def status_of(finish_reason: str | None) -> str:
    """A response's status from its one choice's finish reason."""
    return "incomplete" if finish_reason == "length" else "completed"


@dataclass(frozen=True)
class Shell:
    """The fixed parts of one response: ids, creation time, model and the request's settings echoed back."""

    model: str
    request: ResponsesRequest
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    message_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The Response object in a given state."""
        request = self.request
        text_config = {"format": (request.text or {}).get("format") or {"type": "text"}, "verbosity": "medium"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "store": bool(request.store),
            "temperature": 1.0 if request.temperature is None else request.temperature,
            "text": text_config,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "truncation": "disabled",
            "usage": usage,
        }

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        """The assistant message output item; with text None it has no content part yet."""
        content = [] if text is None else [output_text(text)]
        return {"id": self.message_id, "type": "message", "role": "assistant", "status": status, "content": content}


def output_text(text: str) -> dict[str, Any]:
    """An output_text content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_body(shell: Shell, text: str, finish_reason: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The whole Response for one finished answer."""
    status = status_of(finish_reason)
    return shell.body(status, [shell.message(text, status)], response_usage(input_tokens, output_tokens))


def response_events(shell: Shell, deltas: Iterable[Delta], input_tokens: int) -> Iterator[dict[str, Any]]:
    """The Responses stream for one live answer: lifecycle events around its text deltas."""
    numbers = itertools.count()

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(numbers), **fields}

    where = {"item_id": shell.message_id, "output_index": 0, "content_index": 0}
    started = shell.body("in_progress", [], None)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event("response.output_item.added", output_index=0, item=shell.message(None, "in_progress"))
    yield event("response.content_part.added", **where, part=output_text(""))
    pieces: list[str] = []
    finish, spent = None, 0
    try:
        for delta in deltas:
            if delta.text:
                pieces.append(delta.text)
                yield event("response.output_text.delta", **where, delta=delta.text, logprobs=[])
            if delta.finish_reason is not None:
                finish, spent = delta.finish_reason, delta.completion_tokens
    except Exception as exc:  # the status line is sent: report it as the Responses stream does
        error = {"code": "server_error", "message": f"the local model failed: {exc}"}
        yield event("response.failed", response=shell.body("failed", [], None, error))
        return
    finally:
        close = getattr(deltas, "close", None)
        if close is not None:  # a reader that left early stops the model now
            close()
    text, status = "".join(pieces), status_of(finish)
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=output_text(text))
    item = shell.message(text, status)
    yield event("response.output_item.done", output_index=0, item=item)
    final = shell.body(status, [item], response_usage(input_tokens, spent))
    yield event(f"response.{status}", response=final)
