"""Types every layer shares: JSON bodies, routes (what differs between chat, completions,
embeddings and the Responses API), the reranker's scorer, and usage arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._exceptions import RerankerError

Json = dict[str, Any]
Scorer = Callable[[str, Sequence[str]], Sequence[float]]  # (question, answers) -> one score each, higher is better


def one_number_each(scores: object, answers: int, who: str = "reranker") -> list[float]:
    """A scorer's output as one float per answer; RerankerError for anything else (one number, None, a string of
    digits, words), which would otherwise surface as a bare TypeError or be read wrongly."""
    if scores is None or isinstance(scores, (str, bytes)) or not hasattr(scores, "__iter__"):
        what = "None" if scores is None else "a string" if isinstance(scores, (str, bytes)) else f"one {type(scores).__name__}"
    else:
        values = list(scores)
        try:
            numbers = [float(value) for value in values]
        except (TypeError, ValueError):
            bad = next(v for v in values if not isinstance(v, (int, float)))
            what = f"{len(values)} values that are not all numbers ({bad!r:.40})"
        else:
            if len(numbers) == answers:
                return numbers
            what = f"{len(numbers)} scores"
    raise RerankerError(f"the {who} returned {what} for {answers} answers: it must return one number per answer")


@dataclass(frozen=True)
class Route:
    """What differs between chat and legacy completions: where the text sits, what objects are called."""

    name: str
    object: str
    chunk_object: str

    def text(self, choice: Json) -> str:
        """The answer text of one choice."""
        if self.name == CHAT_NAME:
            return (choice.get("message") or {}).get("content") or ""
        return choice.get("text") or ""

    def with_text(self, choice: Json, text: str) -> Json:
        """A copy of `choice` whose answer text is `text`."""
        out = copy.deepcopy(choice)
        if self.name == CHAT_NAME:
            out.setdefault("message", {"role": "assistant"})["content"] = text
        else:
            out["text"] = text
        return out

    def cut_by_cap(self, choice: Json) -> bool:
        """Whether an answer stopped at its output-token cap (finish_reason "length")."""
        return choice.get("finish_reason") == "length"

    def delta_text(self, chunk_choice: Json) -> str:
        """The text a streamed chunk's choice adds."""
        if self.name == CHAT_NAME:
            return (chunk_choice.get("delta") or {}).get("content") or ""
        return chunk_choice.get("text") or ""

    def texts(self, response: Json) -> list[str]:
        """The answer text of each choice of a whole response."""
        return [self.text(choice) for choice in response.get("choices") or []]

    def usage(self, response: Json) -> Json | None:
        """A whole response's usage in the chat shape the budget settles (None when the server sent none)."""
        usage = response.get("usage")
        return usage if isinstance(usage, dict) and usage else None  # a server's list or string is no usage: counted instead

    def details(self, choice: Json) -> Json:
        """The detail counts (cached, reasoning tokens) a candidate's choice itself carries: none for a choice of
        chat or completions (the candidate keeps its share of its response's beside the choice)."""
        return {}


OUTPUT_DELTAS = frozenset({  # the Responses API's stream events whose `delta` is output the server bills as output tokens
    "response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta", "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
})


@dataclass(frozen=True)
class ResponsesRoute(Route):
    """The Responses API: one answer per request (no `n`), its text in the `output` messages,
    usage as input/output tokens, streamed as typed events rather than chunks of choices."""

    def text(self, choice: Json) -> str:
        """The `output_text` of a whole response (a candidate's choice is the whole response)."""
        return "".join(
            part.get("text") or ""
            for item in choice.get("output") or []
            if item.get("type") == "message"
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        )

    def cut_by_cap(self, choice: Json) -> bool:
        """Whether a response stopped at its `max_output_tokens` (status incomplete for that reason)."""
        return choice.get("status") == "incomplete" and (choice.get("incomplete_details") or {}).get("reason") == "max_output_tokens"

    def with_text(self, choice: Json, text: str) -> Json:
        """A copy of the response whose output is one assistant message holding `text`."""
        out = copy.deepcopy(choice)
        part = {"type": "output_text", "text": text, "annotations": []}
        message = {"type": "message", "id": f"msg_{out.get('id', '')}", "role": "assistant", "status": "completed", "content": [part]}
        out["output"] = [message]
        return out

    def delta_text(self, chunk_choice: Json) -> str:
        """The output a streamed event adds: an answer's text, and the other output billed as output tokens (a refusal,
        a call's arguments or input, reasoning, and a call's name, which comes whole in its item's added event), so that
        a stream cut short is charged for all that arrived."""
        kind, item = chunk_choice.get("type"), chunk_choice.get("item")
        if kind == "response.output_item.added":
            text = item.get("name") if isinstance(item, dict) else None
        else:
            text = chunk_choice.get("delta") if kind in OUTPUT_DELTAS else None
        return text if isinstance(text, str) else ""

    def texts(self, response: Json) -> list[str]:
        """The one answer text of a whole response."""
        return [self.text(response)]

    def usage(self, response: Json) -> Json | None:
        """Input/output tokens as the chat shape's prompt/completion tokens (cached input tokens kept)."""
        usage = response.get("usage")
        if not isinstance(usage, dict) or usage.get("output_tokens") is None:
            return None
        prompt, completion = usage.get("input_tokens") or 0, usage["output_tokens"]  # as sent: the budget charges what can't be real at the worst case
        given, made = usage.get("input_tokens_details"), usage.get("output_tokens_details")
        given = given if isinstance(given, dict) else {}
        chat = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": usage.get("total_tokens") or token_count(prompt) + token_count(completion),
            "prompt_tokens_details": {**given, "cached_tokens": given.get("cached_tokens") or 0},  # cache writes and their breakdown too
        }
        if isinstance(made, dict):  # reasoning tokens: inside output_tokens already, as chat's are inside completion_tokens
            chat["completion_tokens_details"] = dict(made)
        return chat

    def details(self, choice: Json) -> Json:
        """The detail counts of the usage a whole response (a candidate's choice) carries, in the chat shape."""
        usage = self.usage(choice) or {}
        return {key: usage[key] for key in DETAILS if key in usage}


class Parses:
    """An answer check that is the caller's own parse (`parse`, a stream helper given a type): openai's helper raises at
    an answer it rejects, so such an answer is never stored (a retry of the call would replay the error from the cache)."""

    def __init__(self, check: Callable[[str], bool], calls: Callable[[Json], bool] | None = None) -> None:
        self.check = check
        self.calls = calls  # whether an answer's (a choice's) tool calls parse as the caller's strict tools' arguments

    def __call__(self, answer: str) -> bool:
        """Whether `answer` parses as the caller's type."""
        return self.check(answer)

    def takes_calls(self, choice: Json) -> bool:
        """Whether the tool calls of an answer (a choice) parse as the helper parses them (a strict tool's arguments)."""
        return self.calls is None or self.calls(choice)


CHAT_NAME = "chat.completions"
DETAILS = ("prompt_tokens_details", "completion_tokens_details")  # the breakdowns a usage may carry beside its counts
CHAT = Route(name=CHAT_NAME, object="chat.completion", chunk_object="chat.completion.chunk")
COMPLETIONS = Route(name="completions", object="text_completion", chunk_object="text_completion")
EMBEDDINGS = Route(name="embeddings", object="list", chunk_object="")
RESPONSES = ResponsesRoute(name="responses", object="response", chunk_object="")


def token_count(value: Any) -> int:
    """A token count from a usage: an int; 0 for none, or for what a server wrote that can't be one (infinity, NaN, a word)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def is_token_count(value: Any) -> bool:
    """Whether a server's usage count reads as a real one: an integer (or what int() takes) from 0 up to below 2**53."""
    try:
        return not isinstance(value, bool) and 0 <= int(value) < 2**53
    except (TypeError, ValueError, OverflowError):
        return False


def usage_to_charge(usages: Sequence[Json]) -> Json:
    """Several answers' usages summed for the budget to charge (`add_usage`), except that a prompt or
    completion count a server wrote that can't be one (negative, infinite, NaN, a word) stays as it
    came: `Budget.settle` then charges the call's reserved worst case, as for one answer, not 0 for it."""
    total: Json = {}
    for usage in usages:
        total = add_usage(total, usage)
    for key in ("prompt_tokens", "completion_tokens"):
        unreal = [usage[key] for usage in usages if usage.get(key) is not None and not is_token_count(usage[key])]
        if unreal:
            total[key] = unreal[0]
    return total


def add_usage(a: Json, b: Json) -> Json:
    """Two usages summed: prompt, completion and total tokens, and the counts in their details
    (cached, cache write, reasoning, audio tokens, and breakdowns of them) where either has them."""
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    total: Json = {k: token_count(a.get(k)) + token_count(b.get(k)) for k in keys}
    for details in DETAILS:
        parts = [part for part in (a.get(details), b.get(details)) if isinstance(part, dict)]
        if parts:
            total[details] = add_counts(parts)
    return total


def add_counts(parts: Sequence[Json]) -> Json:
    """Detail counts summed key by key, nested breakdowns too; what no part has as a count is left out."""
    total: Json = {}
    for key in sorted({k for part in parts for k in part}):
        values = [part.get(key) for part in parts]
        nested = [v for v in values if isinstance(v, dict)]
        if nested:
            total[key] = add_counts(nested)
        elif any(isinstance(v, int) and not isinstance(v, bool) for v in values):
            total[key] = sum(token_count(v) for v in values if not isinstance(v, bool))
    return total
