"""Structured outputs on chat completions: `parse` as a `create` through the SDK, with openai's
own helpers turning a pydantic type into the request's response format and the answer back into
`ParsedChatCompletion` (`message.parsed`, parsed tool arguments).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from openai import omit
from openai._models import add_request_id
from openai.lib._parsing import parse_chat_completion, type_to_response_format_param, validate_input_tools
from openai.lib._parsing._completions import _parse_content as parse_content
from openai.lib._parsing._completions import parse_function_tool_arguments
from openai.types.chat.chat_completion_message_function_tool_call import Function

from .._info import attach
from .._types import CHAT, RESPONSES, Json, Parses, Route

STRUCTURED = ("response_format", "tools")  # the arguments `parse` takes as types and openai converts


Valid = Callable[[str], bool] | None


def parse_request(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Valid, Callable[[Any], Any]]:
    """The `create` arguments of a `parse` call; which answers fit its response format (the reranker
    ranks those first); and what turns the completion into openai's parsed one."""
    response_format = kwargs.pop("response_format", omit)
    tools = kwargs.pop("tools", omit)
    tools = validate_input_tools(tools)  # a list: an iterator given as `tools` is read once, here
    headers = {"X-Stainless-Helper-Method": "chat.completions.parse", **(kwargs.pop("extra_headers", None) or {})}  # as openai's parse
    request = {**kwargs, "response_format": type_to_response_format_param(response_format), "tools": tools, "stream": False, "extra_headers": headers}

    def finish(completion: Any) -> Any:
        parsed = parse_chat_completion(response_format=response_format, chat_completion=completion, input_tools=tools)
        add_request_id(parsed, getattr(completion, "_request_id", None))  # openai's parse keeps the request's id
        return attach(parsed, completion.blackbox)

    return request, fitting(response_format, tools), finish


JSON_FORMATS = ("json_object", "json_schema")  # response formats whose answers must be JSON


def asked_format(route: Route, params: Mapping[str, Any]) -> Any:
    """The response format a `create` call asks for: chat's `response_format`, the Responses API's `text.format`."""
    if route is RESPONSES:
        text = params.get("text")
        return text.get("format") if isinstance(text, Mapping) else None
    return params.get("response_format") if route is CHAT else None


def fitting(response_format: Any, tools: Any = omit) -> Valid:
    """Which answers fit a response format (reranking ranks those first): a type's parse, and the strict `tools`' arguments'
    (`parse`, `stream`), JSON for a `json_object` or `json_schema` format (`create`: an answer cut by max_tokens is not);
    None for any other."""
    calls = calls_fitting(tools)
    if isinstance(response_format, type) or calls is not None:  # openai's `parse` and stream helper parse these, and raise
        text = fits(lambda answer: parse_content(response_format, answer)) if isinstance(response_format, type) else fits(str)
        return Parses(text, calls)
    if isinstance(response_format, Mapping) and response_format.get("type") in JSON_FORMATS:
        return fits(json.loads)
    return None


def calls_fitting(tools: Any) -> Callable[[Json], bool] | None:
    """Whether a chat answer's tool calls parse as openai's helpers parse them (a pydantic tool's arguments into its model,
    a strict one's as JSON); None without a list of tools (an iterator is left for openai's helper to read)."""
    if not isinstance(tools, (list, tuple)) or not tools:
        return None
    parses = fits(lambda call: parse_function_tool_arguments(input_tools=list(tools), function=Function.construct(**call["function"])))

    def fit(choice: Json) -> bool:
        calls = (choice.get("message") or {}).get("tool_calls") or []
        return isinstance(calls, list) and all(parses(call) for call in calls if call.get("type") == "function")

    return fit


def fits(parse: Callable[[Any], Any]) -> Callable[[Any], bool]:
    """Whether an answer parses (reranking ranks the answers that fit a schema first)."""

    def valid(answer: str) -> bool:
        try:
            parse(answer)
        except Exception:  # noqa: BLE001 - any failure to parse means the answer does not fit
            return False
        return True

    return valid
