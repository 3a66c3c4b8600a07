"""Every method the SDK overrides is openai's to the letter: `inspect.signature` lists openai's
parameters (names, kinds, defaults, annotations), then the SDK's per-call options, keyword-only;
`help()` shows openai's name and docstring; and a call openai would refuse (an unknown keyword, a
positional argument, a missing required one) raises openai's TypeError with openai's message,
before anything is reserved, logged or sent."""

from __future__ import annotations

import asyncio
import inspect
import json
import pydoc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

import blackbox_sdk
from blackbox_sdk import Budget
from blackbox_sdk._options import OPTION_NAMES

HI = [{"role": "user", "content": "hi"}]
CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}

# Every method the SDK overrides, as a dotted path from the client: the same path on openai's client is the reference.
METHODS = {"chat.completions": ("create", "parse", "stream"), "completions": ("create",), "embeddings": ("create",), "responses": ("create", "parse", "stream")}
VIEWS = {"chat.completions": ("create", "parse"), "completions": ("create",), "embeddings": ("create",), "responses": ("create", "parse")}
PATHS = (
    [f"{resource}.{name}" for resource, names in METHODS.items() for name in names]
    + [f"{resource}.with_raw_response.{name}" for resource, names in VIEWS.items() for name in names]
    + [f"{resource}.with_streaming_response.{name}" for resource, names in VIEWS.items() for name in names if resource != "responses" or name == "create"]
    + ["with_raw_response.chat.completions.create", "with_streaming_response.embeddings.create", "chat.with_streaming_response.completions.parse"]
)
# A valid call of each route (openai's arguments for it), to which each case below adds its fault.
VALID = {
    "chat": {"model": "gpt-4o-mini", "messages": HI},
    "completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "responses": {"model": "gpt-4o-mini", "input": "hi"},
}  # priced models: a budget would reserve for them
NO_REQUIRED = ("responses",)  # every argument of openai's responses methods is optional: nothing to leave out
CASES = {
    "an unknown keyword": lambda valid: ((), {**valid, "mesages": HI}),
    "a misspelt SDK option": lambda valid: ((), {**valid, "budgt": Budget(total_usd=1.0)}),
    "a positional argument": lambda valid: (("gpt-4o-mini",), valid),
    "a missing required argument": lambda valid: ((), {name: value for name, value in valid.items() if name != "model"}),
}
BAD = [(path, case) for path in PATHS for case in CASES if not (case == "a missing required argument" and "responses" in path)]


def route(path: str) -> str:
    """The route a method path calls."""
    return next(name for name in ("chat", "completions", "embeddings", "responses") if name in path.split("."))


class Recorder:
    """An upstream that answers a chat completion and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return httpx2.Response(200, json=CHAT)


def clients(is_async: bool, **options: Any) -> tuple[Any, Any, Recorder]:
    """openai's client and the SDK's (with `options`) of one kind, the SDK's on a recording upstream."""
    recorder = Recorder()
    transport = httpx2.MockTransport(recorder)
    kwargs: dict[str, Any] = {"api_key": "sk-test", "base_url": "https://api.test/v1", "max_retries": 0}
    if is_async:
        return openai.AsyncOpenAI(**kwargs), blackbox_sdk.AsyncOpenAI(**kwargs, http_client=httpx2.AsyncClient(transport=transport), **options), recorder
    return openai.OpenAI(**kwargs), blackbox_sdk.OpenAI(**kwargs, http_client=httpx2.Client(transport=transport), **options), recorder


def at(client: Any, path: str) -> Callable[..., Any]:
    """The attribute at a dotted path."""
    for step in path.split("."):
        client = getattr(client, step)
    return client


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", PATHS)
def test_the_signature_is_openais_then_the_sdks_options(path: str, is_async: bool) -> None:
    theirs, ours, _ = clients(is_async)
    expected, got = inspect.signature(at(theirs, path)), inspect.signature(at(ours, path))
    openai_params = list(expected.parameters.values())
    assert list(got.parameters.values())[: len(openai_params)] == openai_params  # names, kinds, defaults, annotations
    sdk_params = list(got.parameters.values())[len(openai_params) :]
    # The SDK accepts more keyword names than openai: exactly its per-call options, keyword-only, "not given" by default.
    assert [p.name for p in sdk_params] == list(OPTION_NAMES)
    assert all(p.kind is p.KEYWORD_ONLY and p.default is openai.NOT_GIVEN for p in sdk_params)
    assert got.return_annotation == expected.return_annotation


def origin(method: Any) -> Any:
    """The function a method finally runs as openai wrote it (past its decorators and openai's view wrappers)."""
    method = inspect.unwrap(method)
    return getattr(method, "__func__", method)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("path", PATHS)
def test_help_shows_openais_method(path: str, is_async: bool) -> None:
    theirs, ours, _ = clients(is_async)
    reference, method = at(theirs, path), at(ours, path)
    assert (method.__name__, method.__qualname__, method.__module__) == (reference.__name__, reference.__qualname__, reference.__module__)
    assert origin(method) is origin(reference)  # __wrapped__ leads to openai's own function
    page = pydoc.render_doc(method, renderer=pydoc.plaintext)
    if reference.__doc__:
        assert method.__doc__.startswith(reference.__doc__) and reference.__doc__.strip().splitlines()[0] in page
    first = next(iter(inspect.signature(reference).parameters.values()))
    assert str(first) in page and "budget_key: Any = NOT_GIVEN" in page


def outcome(call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[type, str]:
    """The TypeError a call raises: at the call, or where openai's views check their arguments (its
    async raw views on `await`, its streaming views on `with`); the SDK's views at the call."""
    with pytest.raises(TypeError) as error:
        result = call(*args, **kwargs)
        if inspect.isawaitable(result):
            asyncio.run(result)
        elif hasattr(result, "__aenter__"):
            asyncio.run(result.__aenter__())
        else:
            result.__enter__()
    return error.type, str(error.value)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("path", "case"), BAD)
def test_a_call_openai_refuses_fails_as_openai_fails_before_anything_is_spent(path: str, case: str, is_async: bool, tmp_path: Path) -> None:
    budget, log = Budget(total_usd=1.0), blackbox_sdk.CallLog(tmp_path / "calls.db")
    theirs, ours, upstream = clients(is_async, budget=budget, log=log)
    args, kwargs = CASES[case](VALID[route(path)])
    assert outcome(at(ours, path), args, kwargs) == outcome(at(theirs, path), args, kwargs)
    log.flush()
    assert upstream.requests == [] and list(log.calls()) == [] and budget.report().spent_usd == 0
    assert budget.report().outstanding_reservations == 0


@pytest.mark.parametrize("path", ["chat.completions.create", "chat.completions.with_raw_response.create"])
def test_the_sdks_options_are_still_taken_per_call(path: str, tmp_path: Path) -> None:
    """The SDK's options (here `log`, `budget_key`) are keyword arguments beside openai's, as before."""
    _, ours, upstream = clients(False)
    log = blackbox_sdk.CallLog(tmp_path / "calls.db")
    at(ours, path)(model="gpt-4o-mini", messages=HI, log=log, budget_key="team-a")
    log.flush()
    assert len(upstream.requests) == 1 and "budget_key" not in json.loads(upstream.requests[0].content)
    assert [(record.model, record.key) for record in list(log.calls())] == [("gpt-4o-mini", "team-a")]
