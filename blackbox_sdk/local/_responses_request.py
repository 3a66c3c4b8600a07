"""What the local backend accepts on POST /responses: OpenAI's Responses request body, checked before
any compute and turned into the chat request the one generation path runs (instructions first as a
system message, then the input items as messages, an earlier turn's calls and their outputs as the chat
path reads them). Imports without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from openai.types.responses import response_create_params
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from ._requests import (
    LOCAL_PARAMS,
    ChatRequest,
    CustomCall,
    FunctionCall,
    LocalRequestError,
    Message,
    PositiveInt,
    item_error,
    openai_params,
    reject_mistyped,
    reject_unknown,
    validated,
)

# Options that change what the model would do in ways this backend can't: refused with a 400 when set.
UNSUPPORTED = (
    "tools", "previous_response_id", "reasoning", "include", "conversation", "prompt", "max_tool_calls",
    "top_logprobs", "context_management", "moderation", "image", "access_programs", "background_options",
)  # fmt: skip
TEXT_PARTS = {"input_text": "text", "output_text": "text"}  # parts the model reads -> their text field
ROLES = ("user", "system", "developer", "assistant")
KNOWN = openai_params(response_create_params.ResponseCreateParamsBase, "stream", "seed", *LOCAL_PARAMS)  # seed: as chat's


class ResponsesRequest(BaseModel):
    """The body of POST /responses; `store`, `user`, `truncation` and the like are type-checked, then ignored."""

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

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_items(cls, value: object) -> object:
        """A string or a list of item objects; otherwise a 400 saying which, not pydantic's `input.str`."""
        if not isinstance(value, (str, list)):
            raise ValueError(f"input must be a string or a list of input items, not {type(value).__name__}")
        for i, item in enumerate(value if isinstance(value, list) else []):
            if not isinstance(item, dict):
                raise item_error(i, item, f"an input item must be an object, not {type(item).__name__}")
        return value

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
    reject_mistyped(params, response_create_params.ResponseCreateParamsBase, ResponsesRequest.model_fields)
    return validated(ResponsesRequest.model_validate, params)


class FunctionCallItem(FunctionCall):
    """A `function_call` input item: a function an earlier assistant turn called."""

    call_id: str

    def tool_call(self) -> dict[str, Any]:
        """The item as the chat path's tool call."""
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class CustomCallItem(CustomCall):
    """A `custom_tool_call` input item: a custom tool an earlier assistant turn called."""

    call_id: str

    def tool_call(self) -> dict[str, Any]:
        """The item as the chat path's tool call."""
        return {"id": self.call_id, "type": "custom", "custom": {"name": self.name, "input": self.input}}


class CallOutputItem(BaseModel):
    """A `function_call_output` or `custom_tool_call_output` input item: a tool's answer to a call."""

    model_config = ConfigDict(extra="allow")
    call_id: str
    output: str | list[Any]


CALLS: dict[str, Callable[[object], FunctionCallItem | CustomCallItem]] = {
    "function_call": FunctionCallItem.model_validate, "custom_tool_call": CustomCallItem.model_validate
}  # fmt: skip
OUTPUTS = ("function_call_output", "custom_tool_call_output")


def chat_request(request: ResponsesRequest) -> ChatRequest:
    """The chat request that answers a Responses request on the shared generation path."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    for i, item in enumerate(request.input if isinstance(request.input, list) else []):
        _add_item(messages, item, f"input[{i}]")
    body: dict[str, Any] = {"messages": [Message.model_validate(m) for m in messages], "max_tokens": request.max_output_tokens}
    body |= {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}
    return validated(ChatRequest.model_validate, {**body, "soft_prompt": request.soft_prompt})


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any], param: str) -> None:
    """Add one input item to the chat messages as the chat path reads the same history: a call joins the
    assistant turn before it (or starts one), a call's output is a tool message; other items are a 400."""
    kind = str(item.get("type", "message"))
    if kind == "message":
        messages.append(_message(item, param))
    elif kind in CALLS:
        call = validated(CALLS[kind], item, prefix=param).tool_call()
        if not messages or messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": None})
        messages[-1].setdefault("tool_calls", []).append(call)
    elif kind in OUTPUTS:
        output = validated(CallOutputItem.model_validate, item, prefix=param)
        text = _content(output.output, f"{param}.output", "tool")
        messages.append({"role": "tool", "tool_call_id": output.call_id, "content": text})
    else:
        supported = "messages, function and custom tool calls and their outputs"
        raise LocalRequestError(f"input items of type {kind!r} are not supported locally ({supported})", param=param)


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    """A message item as a chat message whose content is text, or a 400."""
    role = item.get("role")
    if role not in ROLES:
        raise LocalRequestError(f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role")
    return {"role": role, "content": _content(item.get("content"), f"{param}.content", role)}


def _content(content: object, param: str, role: str) -> str:
    """A message's text: a string, or its text parts joined with newlines (an assistant's refusals too)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise LocalRequestError(f"{param} must be a string or a list of content parts", param=param)
    kinds = {**TEXT_PARTS, **({"refusal": "refusal"} if role == "assistant" else {})}
    texts = []
    for i, part in enumerate(content):
        kind = str(part.get("type")) if isinstance(part, dict) else type(part).__name__
        text = part.get(kinds[kind]) if isinstance(part, dict) and kind in kinds else None
        if not isinstance(text, str):
            message = f"content parts of type {kind!r} are not supported locally ({', '.join(kinds)} only)"
            raise LocalRequestError(message, param=f"{param}[{i}]")
        texts.append(text)
    return "\n".join(texts)
