"""What the local backend accepts on POST /responses: OpenAI's Responses request body, checked before
any compute and turned into the chat request the one generation path runs (instructions first as a
system message, then the input items as messages). Imports without torch.
"""

from __future__ import annotations

from typing import Annotated, Any

from openai.types.responses import response_create_params
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ._requests import (
    LOCAL_PARAMS,
    ChatRequest,
    LocalRequestError,
    Message,
    PositiveInt,
    openai_params,
    reject_unknown,
    validated,
)

# Options that change what the model would do in ways this backend can't: refused with a 400 when set.
UNSUPPORTED = (
    "tools", "previous_response_id", "reasoning", "include", "conversation", "prompt", "max_tool_calls",
    "top_logprobs", "context_management", "moderation", "image", "access_programs", "background_options",
)  # fmt: skip
TEXT_PARTS = ("input_text", "output_text")  # parts whose text the model reads
ROLES = ("user", "system", "developer", "assistant")
KNOWN = openai_params(response_create_params.ResponseCreateParamsBase, "stream", "seed", *LOCAL_PARAMS)  # seed: as chat's


class ResponsesRequest(BaseModel):
    """The body of POST /responses; `metadata`, `store`, `user`, `truncation` and the like are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    seed: Annotated[int, Field(strict=True, ge=-(2**63), lt=2**64)] | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    text: dict[str, Any] | None = None
    soft_prompt: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        """An empty input gives the model nothing to answer."""
        if not value:
            raise ValueError("input must be a non-empty string or list of input items")
        return value


def parse_responses_request(params: object) -> ResponsesRequest:
    """Check a /responses body: its schema, then the options the backend can't honour."""
    if not isinstance(params, dict):
        raise LocalRequestError("the request body must be a JSON object", param=None)
    for name in UNSUPPORTED:
        if params.get(name) not in (None, [], {}):
            raise LocalRequestError(f"{name!r} is not supported by the local HF backend", param=name)
    if params.get("background") is True:
        raise LocalRequestError("'background' is not supported by the local HF backend", param="background")
    if params.get("tool_choice") not in (None, "none", "auto"):
        raise LocalRequestError("'tool_choice' is not supported by the local HF backend", param="tool_choice")
    reject_unknown(params, KNOWN)
    return validated(ResponsesRequest.model_validate, params)


def chat_request(request: ResponsesRequest) -> ChatRequest:
    """The chat request that answers a Responses request on the shared generation path."""
    messages = [Message(role="system", content=request.instructions)] if request.instructions else []
    if isinstance(request.input, str):
        messages.append(Message(role="user", content=request.input))
    else:
        messages += [_message(item, f"input[{i}]") for i, item in enumerate(request.input)]
    body = {"messages": messages, "max_tokens": request.max_output_tokens, "temperature": request.temperature}
    body |= {"top_p": request.top_p, "seed": request.seed, "soft_prompt": request.soft_prompt}
    return validated(ChatRequest.model_validate, body)


def _message(item: dict[str, Any], param: str) -> Message:
    """One input item as a chat message: a message item whose content is text, or a 400."""
    kind = item.get("type", "message")
    if kind != "message":
        raise LocalRequestError(f"input items of type {kind!r} are not supported locally (messages only)", param=param)
    role = item.get("role")
    if role not in ROLES:
        raise LocalRequestError(f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role")
    return Message(role=role, content=_content(item.get("content"), f"{param}.content"))


def _content(content: object, param: str) -> str:
    """A message's text: a string, or its input_text / output_text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise LocalRequestError(f"{param} must be a string or a list of content parts", param=param)
    texts = []
    for i, part in enumerate(content):
        text = part.get("text") if isinstance(part, dict) and part.get("type") in TEXT_PARTS else None
        if not isinstance(text, str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            message = f"content parts of type {kind!r} are not supported locally (input_text only)"
            raise LocalRequestError(message, param=f"{param}[{i}]")
        texts.append(text)
    return "\n".join(texts)
