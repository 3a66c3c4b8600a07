"""Calibration in the call path: until an endpoint and model are calibrated, one call at a time
passes the gate; each answer's reported prompt tokens teach the budget what the endpoint adds.
A call billed for what the SDK can't count (a Responses call that continues stored state: a previous
response, a conversation, a stored prompt; a chat or Responses call that gives a file by reference,
`file_id` or `file_url`) neither takes the gate nor teaches the endpoint's overhead. Instead each
Responses answer teaches the ledger the context a continuation of it carries (its input and output,
under its id and its conversation; a stored prompt's template size), each answer the tokens of a file
it was the first to show (one call at a time gives a file no answer has shown: the file's gate), and a
later call reserves what is known of them. Store outages while learning are warnings (a later answer
teaches the same; the gate's lease frees it). An answer past the output cap sent shows
an endpoint that ignores it: warned about once per endpoint and model. A chat endpoint that refuses a
`max_tokens` the SDK chose (a reasoning model under a name of its own) is learnt, in this process, to
take `max_completion_tokens` for that model.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import openai

from .._exceptions import StoreUnavailableError
from .._logging import logger
from .._types import CHAT, RESPONSES, Json
from ..budget import UNCALIBRATED_ALLOWANCE
from ._call import Call
from ._meter import reported
from ._response_input import input_messages
from ._validation import given

STORED_STATE = ("previous_response_id", "conversation", "prompt")  # what a Responses call continues, billed as input
_IGNORED_CAP: set[tuple[str, str]] = set()  # (endpoint, model) seen answering past the output cap: warned once
_SEEN_LOCK = threading.Lock()  # guards the sets of what was seen of endpoints
_COMPLETION_CAP: set[tuple[str, str]] = set()  # (endpoint, model) seen refusing `max_tokens`: sent `max_completion_tokens`


class Core(Protocol):
    """What calibration needs of the client's core: where calls go, and the local model if one answers."""

    endpoint: str
    backend: Any


@lru_cache(maxsize=64)
def public_endpoint(endpoint: str) -> str:
    """The endpoint without what a URL can carry a credential in (user:password@, the query, the
    fragment): what calibration is kept under in the ledger and what its messages show (worked out
    once per endpoint: a budgeted call asks several times)."""
    parts = urlsplit(endpoint)
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return endpoint
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def calibration_key(core: Core, call: Call) -> str:
    """What an overhead is learnt for, with the model: the endpoint and the route (templates differ by route)."""
    return f"{public_endpoint(core.endpoint)}#{call.route.name}"


def continues_stored_state(call: Call) -> bool:
    """Whether the call is billed for a stored history the SDK can't count (a Responses call with a
    previous response, a conversation or a stored prompt)."""
    return call.route is RESPONSES and any(given(call.sent(name)) for name in STORED_STATE)


def file_refs(call: Call) -> list[str]:
    """The files a chat or Responses call gives by reference (a `file_id`, or a Responses `file_url`; not one given
    inline as `file_data`, which the count reads), in order, once each time given: the server reads and bills them.
    Worked out once per call (its reserve, gate and settle each ask)."""
    if call.files is None:
        call.files = []
        for message in _messages(call):
            content = message.get("content") if isinstance(message, Mapping) else None
            for part in content if isinstance(content, (list, tuple)) else []:
                file = part.get("file") if isinstance(part, Mapping) and part.get("type") == "file" else None
                ref = None if not isinstance(file, Mapping) or file.get("file_data") else file.get("file_id") or file.get("file_url")
                if isinstance(ref, str) and ref:
                    call.files.append(ref)
    return call.files


def _messages(call: Call) -> list[Any]:
    """A chat call's messages, or a Responses call's instructions and input read as chat messages; none for other routes."""
    if call.route is CHAT:
        messages = call.sent("messages")
        return list(messages) if isinstance(messages, (list, tuple)) else []
    if call.route is RESPONSES:
        return input_messages({"instructions": call.sent("instructions"), "input": call.sent("input")})
    return []


def billed_unseen(call: Call) -> bool:
    """Whether the call is billed for input the SDK can't count (stored state it continues, a file given by
    reference): its usage tells nothing of the endpoint's overhead, so it neither takes the gate nor calibrates."""
    return continues_stored_state(call) or bool(file_refs(call))


def passes_gate(core: Core, call: Call) -> bool:
    """Fail closed until calibrated: True once this endpoint and model are calibrated (or no budget
    or a local model counts them), or when this call took the gate; False while another call has it.
    A call billed for input the SDK can't count can't calibrate, so it passes without the endpoint's gate (reserved
    with the allowance until a plain call has calibrated the endpoint), but through the gate of each file it gives
    that no answer has shown yet (`_passes_file_gates`)."""
    budget = call.opts.budget
    if budget is None or core.backend is not None:
        return True
    if billed_unseen(call):
        return _passes_file_gates(core, call)
    if budget.calibration.overhead(calibration_key(core, call), call.model) is not None:
        return True
    call.gated = budget.calibration.open_gate(calibration_key(core, call), call.model, call.info.call_id)
    return call.gated


def gate_refusal(core: Core, call: Call) -> str:
    """Why a call that waited its longest at a gate is refused: the endpoint's first call, or a file's, still running."""
    if billed_unseen(call):
        return (f"a file this call gives is being read by another call to {public_endpoint(core.endpoint)}, "
                "whose answer shows what it costs, and that call is still running")
    return f"{public_endpoint(core.endpoint)} is not calibrated yet for {call.model} and its first call is still running"


def _passes_file_gates(core: Core, call: Call) -> bool:
    """Fail closed on files no answer has shown: the call takes the gate of each (True), so that one call at a time is
    charged past its hold for a file and the rest reserve what its answer shows; while another call holds one, False,
    with none held (no call holds one gate while it waits for another)."""
    calibration = call.opts.budget.calibration
    if call.file_gates:
        return True
    unseen = [key for key in dict.fromkeys(file_keys(core, call).values()) if calibration.context(key) is None]
    for key in unseen:
        if not calibration.open_gate(key, call.model, call.info.call_id):
            ungate(core, call)
            return False
        call.file_gates.append(key)
    return True


def learn(core: Core, call: Call, usage: Json) -> None:
    """Learn the endpoint's hidden prompt tokens from a reported usage, and let the next call through;
    not from the charge of a call interrupted with requests still in flight, or with answers lost (no answer showed it).
    What is kept is each text's share (`Calibration.learn`), reserved for each text of a call (`Call.framed`, `Core.reserve`).
    A call billed for what the SDK can't count teaches only the files it was the first to show (`remember_files`)."""
    budget = call.opts.budget
    if budget is None or core.backend is not None or call.counted_prompt is None or call.in_flight or call.lost:
        return
    prompt = reported(usage.get("prompt_tokens"))
    per_request = prompt // max(1, call.info.requests) if isinstance(prompt, int) else 0
    if billed_unseen(call):
        if per_request and not call.usage_counted:
            remember_files(core, call, per_request)
        ungate(core, call)
        return
    if call.usage_counted:  # the server said nothing: keep the allowance rather than stay gated
        per_request = call.counted_prompt + UNCALIBRATED_ALLOWANCE * call.framed if call.gated else 0
    try:
        if per_request:
            budget.calibration.learn(calibration_key(core, call), call.model, call.counted_prompt, per_request, call.framed)
    except StoreUnavailableError as error:  # learnt from a later answer instead
        logger.warning("call %s: the endpoint's overhead could not be stored now: %s", call.info.call_id, error)
    ungate(core, call)

def warn_ignored_cap(core: Core, call: Call, usage: Json, choices: int) -> None:
    """Warn once per endpoint and model when the server reports more completion tokens than the cap sent
    allows an answer of `choices`, while the SDK relies on that cap: it is settled at what it used, past
    its hold (a count of the SDK's own, an estimate, is not evidence)."""
    if call.usage_counted or not call.relies_on_cap or not call.past_cap(usage, choices):
        return
    seen = (public_endpoint(core.endpoint), call.model)
    with _SEEN_LOCK:
        if seen in _IGNORED_CAP:
            return
        _IGNORED_CAP.add(seen)
    logger.warning(
        "%s ignored the output cap for %s: call %s got %s completion tokens for %d choice(s), sent a cap of %d each; "
        "it is charged what it used, past what the budget or rate limit held for it", seen[0], call.model, call.info.call_id,
        usage.get("completion_tokens"), choices, call.sent_cap,
    )


def takes_completion_cap(core: Core, call: Call) -> bool:
    """Whether this endpoint was seen, in this process, to refuse `max_tokens` for the call's model: its chat
    requests carry the output cap as `max_completion_tokens`."""
    return (public_endpoint(core.endpoint), call.model) in _COMPLETION_CAP


def refused_max_tokens(core: Core, call: Call, error: BaseException) -> bool:
    """Whether `error` is the server refusing a `max_tokens` the SDK chose for a chat call (the caller gave none;
    a budget or token limit relies on the cap), as a reasoning model under a name of its own does: then learnt for
    the endpoint and model, so that the request may go again at once carrying `max_completion_tokens`."""
    if call.route is not CHAT or not call.relies_on_cap or "max_tokens" in call.caps_given or not _refuses_max_tokens(error):
        return False
    seen = (public_endpoint(core.endpoint), call.model)
    with _SEEN_LOCK:
        learnt = seen not in _COMPLETION_CAP
        _COMPLETION_CAP.add(seen)
    if learnt:
        logger.info("%s refused max_tokens for %s (call %s): its requests carry max_completion_tokens from now on", seen[0], call.model, call.info.call_id)
    return True


def _refuses_max_tokens(error: BaseException) -> bool:
    """Whether `error` is OpenAI's 400 for a `max_tokens` the model does not take (its param and code, or a
    message that asks for `max_completion_tokens` in its place, as a gateway may word it)."""
    if not isinstance(error, openai.BadRequestError):
        return False
    body = error.body if isinstance(error.body, dict) else {}
    message = str(body.get("message") or error.message)
    return (error.param == "max_tokens" and error.code == "unsupported_parameter") or ("max_tokens" in message and "max_completion_tokens" in message)


def ungate(core: Core, call: Call, calibrates: bool = False) -> None:
    """Give back the calibration gates this call holds (its endpoint's, its files'); `calibrates`: before its answer has
    come (a stream handed to its caller, who sets its pace from then on), the call still the one whose answer teaches
    the endpoint (see `learn`)."""
    held = [calibration_key(core, call)] if call.gated else []
    held += call.file_gates
    call.gated, call.file_gates = call.gated and calibrates, []
    for key in held:
        call.opts.budget.calibration.close_gate(key, call.model, call.info.call_id)  # a store out of reach: owed, and a warning


def context_keys(core: Core, call: Call) -> dict[str, str]:
    """What a call is billed for that the SDK can't count, by kind, as keys under its endpoint: the files it gives
    by reference (`file_keys`), and the stored context a Responses call continues: the previous response, the
    conversation, the stored prompt (by id and version: its template's size)."""
    base, keys = public_endpoint(core.endpoint), file_keys(core, call)
    if call.route is not RESPONSES:
        return keys
    previous = call.sent("previous_response_id")
    if isinstance(previous, str) and previous:
        keys["response"] = f"{base}#response:{previous}"
    conversation = call.sent("conversation")
    conversation = conversation.get("id") if isinstance(conversation, dict) else conversation
    if isinstance(conversation, str) and conversation:
        keys["conversation"] = f"{base}#conversation:{conversation}"
    prompt = call.sent("prompt")
    if isinstance(prompt, dict) and isinstance(prompt.get("id"), str):
        keys["prompt"] = f"{base}#prompt:{prompt['id']}@{prompt.get('version') or ''}"
    return keys


def hidden_tokens(core: Core, call: Call, warn: bool = True) -> int:
    """The prompt tokens the server bills on top of the SDK's count, as far as the ledger knows them: the endpoint's
    learnt overhead for each text (UNCALIBRATED_ALLOWANCE until an answer shows it), and the stored context and files
    answers showed (`stored_context`). What a reservation and a rate limit's admission hold beside the count; 0
    without a budget (nothing learns them) or on a local model (its count is exact)."""
    budget = call.opts.budget
    if budget is None or core.backend is not None:
        return 0
    overhead = budget.calibration.overhead(calibration_key(core, call), call.model)
    return (UNCALIBRATED_ALLOWANCE if overhead is None else overhead) * call.framed + stored_context(core, call, warn)


def stored_context(core: Core, call: Call, warn: bool = True) -> int:
    """The tokens of stored context this call continues and of the files it gives by reference, as far as
    answers through the ledger showed them: reserved on top of its count. A part no answer showed can't be reserved; it is charged when
    the call settles, with a warning (`warn`: one call's overshoot of a cap)."""
    budget = call.opts.budget
    if budget is None or core.backend is not None or not billed_unseen(call):
        return 0
    call.context = {kind: budget.calibration.context(key) for kind, key in context_keys(core, call).items()}
    unknown = [kind for kind, tokens in call.context.items() if tokens is None]
    if unknown and warn:
        logger.warning(
            "call %s is billed for context this ledger has not seen (%s): it can't be reserved, and is charged "
            "when the call settles", call.info.call_id, ", ".join(unknown),
        )
    return sum(tokens or 0 for tokens in call.context.values())


def remember_context(core: Core, call: Call, response: Json, usage: Json) -> None:
    """What a Responses answer showed: a continuation of it, or of its conversation, carries its input
    and output; a stored prompt's template is its input beyond the count and the rest of its context."""
    budget = call.opts.budget
    prompt, completion = reported(usage.get("prompt_tokens")), reported(usage.get("completion_tokens"))
    if budget is None or core.backend is not None or call.usage_counted or not (type(prompt) is int and type(completion) is int):
        return
    keys, base = context_keys(core, call), public_endpoint(core.endpoint)
    kept = {keys["conversation"]: prompt + completion} if "conversation" in keys else {}
    if isinstance(response.get("id"), str) and call.sent("store") is not False:
        kept[f"{base}#response:{response['id']}"] = prompt + completion
    others = [tokens for kind, tokens in call.context.items() if kind != "prompt"]
    if "prompt" in keys and call.counted_prompt is not None and None not in others:
        kept[keys["prompt"]] = max(0, prompt - call.counted_prompt - sum(others))  # type: ignore[arg-type]  # None ruled out
    try:
        for key, tokens in kept.items():
            budget.calibration.keep_context(key, tokens)
    except StoreUnavailableError as error:  # a continuation of it is charged at settle instead
        logger.warning("call %s: the context it leaves could not be stored now: %s", call.info.call_id, error)


def file_keys(core: Core, call: Call) -> dict[str, str]:
    """The files a call gives by reference, by kind (``file <id>``, ``file_url``; numbered when one comes again, as each
    is billed), as keys under the endpoint and model (a PDF's pages cost what the model's images cost). A reference is
    kept hashed: a signed URL's query is a credential."""
    base = public_endpoint(core.endpoint)
    keys: dict[str, str] = {}
    times: dict[str, int] = {}
    for ref in file_refs(call):
        kind = "file_url" if "://" in ref or ref.startswith("data:") else f"file {ref}"
        times[kind] = times.get(kind, 0) + 1
        keys[kind if times[kind] == 1 else f"{kind} #{times[kind]}"] = f"{base}#file:{call.model}:{hashlib.sha256(ref.encode()).hexdigest()[:32]}"
    return keys


def remember_files(core: Core, call: Call, prompt: int) -> None:
    """What an answer showed of the files it was the first to show: its reported ``prompt`` (one request's) beyond
    its count and the context known to it, kept for each such file (two new files together are each kept at both:
    a later call holds more than it needs, never less). Not when the call also continued a history no answer showed."""
    unseen = [kind for kind, tokens in call.context.items() if tokens is None]
    if not unseen or any(not kind.startswith("file") for kind in unseen) or call.counted_prompt is None:
        return
    tokens = max(0, prompt - call.counted_prompt - sum(tokens or 0 for tokens in call.context.values()))
    keys = context_keys(core, call)
    try:
        for kind in unseen:
            call.opts.budget.calibration.keep_context(keys[kind], tokens)
    except StoreUnavailableError as error:  # a later call with the file is charged at settle instead
        logger.warning("call %s: what its files cost could not be stored now: %s", call.info.call_id, error)
