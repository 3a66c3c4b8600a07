"""Requests whose answers were lost: the server took the request (a read timed out, the connection
dropped after it was sent) and bills what it generates, though the SDK never sees it. Under a budget
each is charged its worst case, and a retry after one is held on the budget before it is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from .._exceptions import BudgetExceededError
from .._types import Json
from ..budget import TokenCount
from ._call import Call, Sender

if TYPE_CHECKING:
    from ._core import Core

NEVER_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.WriteError, httpx2.WriteTimeout, httpx2.UnsupportedProtocol)


def answer_lost(error: BaseException) -> bool:
    """Whether a failed request reached the server with no answer back: a connection error (a timeout
    included) other than one before the request was whole on the wire (a connection never made, a write cut)."""
    return isinstance(error, openai.APIConnectionError) and not isinstance(error.__cause__, NEVER_SENT)


def choices_of(call: Call, send: Callable[[], Any]) -> int:
    """How many choices a request asks for: its Sender says; the caller's n for a request sent as the caller wrote it."""
    return send.choices if isinstance(send, Sender) else call.n


def note_lost(core: Core, call: Call, error: BaseException, send: Callable[[], Any]) -> None:
    """A request's last attempt failed: if its answer was lost under a budget, the call is charged its worst case."""
    if call.reservation is not None and answer_lost(error):
        with core._lock:
            call.lost.append(call.worst_case(choices_of(call, send)))


def hold_retry(core: Core, call: Call, error: BaseException, send: Callable[[], Any]) -> None:
    """Before a retry: count it; after a lost answer under a budget, charge that answer's worst case on a hold of its
    own, taken as any call's is (BudgetExceededError refuses the retry, and the call is charged the lost answer)."""
    core.count_retry(call)
    if call.reservation is None or not answer_lost(error):
        return
    choices = choices_of(call, send)
    usage = call.worst_case(choices)
    with core._lock:
        call.lost.append(usage)
    try:
        hold = call.meter.reserve(
            call_id=call.info.call_id, model=call.model, prompt_tokens=TokenCount(usage["prompt_tokens"], "reserved", True),
            max_output_tokens=usage["completion_tokens"] // choices, n=choices, local=core.local, shrink=False,
        )
    except BudgetExceededError as refused:
        refused.add_note(f"it was the retry of a request whose answer was lost ({type(error).__name__}), charged its worst case")
        raise refused from error
    with core._lock:
        call.lost.remove(usage)
        call.lost_tokens += usage["total_tokens"]
    call.info.cost_usd += call.meter.settle(hold, usage)
