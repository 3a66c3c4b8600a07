"""Tools the provider runs itself (web and file search, code interpreter, image generation, remote MCP
servers, hosted shells): each call of one has a fee of its own, and its results come back as input
tokens the SDK never counted, so no reservation bounds them. Under a budget such a request is refused
before it is sent; a cache hit of it costs nothing and is served. So is a request whose `extra_body` (which
openai's client writes over the body) sets a field its worst case is reckoned from, and a Responses call that
names no model (its stored prompt picks one): no price fits it. A tokens-per-minute window admits a call at
its worst case too, so it refuses the same `extra_body` fields."""

from __future__ import annotations

from typing import Any

from .._exceptions import ConfigError, PriceMissingError
from .._types import CHAT, RESPONSES, Json, Route

RECKONED = (  # the fields a worst case is reckoned from: set in `extra_body`, the server would see others than were reserved for
    "model", "messages", "prompt", "input", "instructions", "n", "best_of", "max_tokens", "max_completion_tokens", "max_output_tokens",
    "service_tier", "modalities", "audio", "tools", "web_search_options", "previous_response_id", "conversation", "stream",
)
CLIENT_TOOLS = frozenset({"function", "custom", "namespace", "computer", "computer_use_preview", "local_shell", "apply_patch"})


def hosted_tools(route: Route, params: Json) -> list[str]:
    """The tools in a request that the provider runs (an unknown tool type counts as one: fail closed)."""
    if route is CHAT:
        return ["web_search_options"] if params.get("web_search_options") is not None else []
    tools = params.get("tools") if route is RESPONSES else None
    if not isinstance(tools, list):
        return []
    return [str(tool.get("type")) for tool in tools if isinstance(tool, dict) and not _runs_on_client(tool)]


def _runs_on_client(tool: dict[str, Any]) -> bool:
    """Whether the caller's code runs this tool (the provider only asks for it): functions, computer use, a local
    shell, patches, a tool search the client executes."""
    kind = tool.get("type")
    if kind == "shell":
        environment = tool.get("environment")
        return isinstance(environment, dict) and environment.get("type") == "local"
    if kind == "tool_search":
        return tool.get("execution") == "client"
    return kind in CLIENT_TOOLS


def refuse_hosted_tools(route: Route, params: Json) -> None:
    """PriceMissingError before a budgeted request that names a tool the provider runs is sent."""
    hosted = hosted_tools(route, params)
    if hosted:
        raise PriceMissingError(
            f"a budget is set and it can't bound what the provider's own tool {hosted[0]!r} costs (a fee per "
            "call, and the results it reads in as input tokens), so the call could run past the caps: refused. "
            "Send it from a copy without the budget: client.with_options(budget=None)"
        )


def refuse_hidden_fields(params: Json, limit: str = "the budget reserves for") -> None:
    """ConfigError before a budgeted request (or one a tokens-per-minute window admits: `limit` says which) whose
    `extra_body` sets a field the worst case is reckoned from."""
    body = params.get("extra_body")
    hidden = [name for name in RECKONED if name in body] if isinstance(body, dict) else []
    if hidden:
        raise ConfigError(
            f"extra_body sets {hidden[0]!r}, which {limit} and openai's client would send in place of the "
            f"argument: refused, as the call could run past the limits. Pass {hidden[0]}= to create itself"
        )


def refuse_unnamed_model(params: Json) -> None:
    """PriceMissingError before a budgeted request that names no model (a Responses call whose stored prompt picks it)."""
    if not isinstance(params.get("model"), str):
        raise PriceMissingError(
            "a budget is set and the request names no model (its stored prompt picks one), so no price fits it and its cost "
            "can't be bounded: refused. Pass model= (the one the prompt uses), or send it without the budget: "
            "client.with_options(budget=None)"
        )


def refuse_unbounded(route: Route, params: Json) -> None:
    """Before a budgeted request is reserved: refuse what no reservation can bound (see the module's docstring)."""
    refuse_unnamed_model(params)
    refuse_hosted_tools(route, params)
    refuse_hidden_fields(params)
