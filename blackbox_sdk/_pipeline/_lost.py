"""Requests whose answers were lost: the server took the request (a read timed out, the connection
dropped after it was sent) and bills what it generates, though the SDK never sees it. Under a budget
each is charged its worst case, and a retry after one is held on the budget before it is sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from .._exceptions import BudgetExceededError, StoreUnavailableError, add_note
from .._redact import redact_text
from .._retry import RETRIES_TAKEN
from .._types import Json
from ..budget import TokenCount
from ._call import Call, Sender, answer_lost

if TYPE_CHECKING:
    from ._core import Core


def choices_of(call: Call, send: Callable[[], Any]) -> int:
    """How many answers a request has the server generate: the choices it asks for (its Sender says; the caller's n
    for a request sent as the caller wrote it), `best_of` when more, for each of its prompts."""
    return call.generations(send.choices if isinstance(send, Sender) else call.n) * call.prompts


def answered(core: Core, call: Call, send: Callable[[], Any], outcome: Any) -> Any:
    """A request of a "send" came back (fan-out threads share the call): no longer in flight, and an answer is owed
    for until the call settles. A body openai could not read as JSON (it hands back its text: a server that streamed
    to a request that asked for no stream) is an `openai.APIResponseValidationError`, charged as a lost answer."""
    unreadable = isinstance(outcome, str)  # openai's parse hands back the text of a body that is not JSON
    if unreadable:
        outcome = _unreadable(str(outcome))
    with core._lock:
        if call.cut_off:  # charged as out when the interrupt came
            return outcome
        call.in_flight -= 1
        if unreadable and call.reservation is not None:  # the server generated, and bills, what could not be read
            call.lost.append(call.worst_case(choices_of(call, send)))
        elif not isinstance(outcome, BaseException):
            call.arrived.append(outcome)
    return outcome


def _unreadable(body: str) -> openai.APIResponseValidationError:
    """The error for an answer whose body is not JSON (its start shown, any secret in it redacted)."""
    shown = redact_text(body[:200])
    response = httpx2.Response(200, text=body, request=httpx2.Request("POST", "blackbox-sdk://answer"))
    message = f"the server's answer is not JSON (a stream to a request that asked for none?), so it can't be read: {shown!r}"
    return openai.APIResponseValidationError(response=response, body=shown, message=message)


def note_lost(core: Core, call: Call, error: BaseException, send: Callable[[], Any]) -> None:
    """A request's last attempt failed: if its answer was lost under a budget, the call is charged its worst case."""
    if call.reservation is not None and answer_lost(error):
        with core._lock:
            if not call.cut_off:  # else charged as out when the interrupt came
                call.lost.append(call.worst_case(choices_of(call, send)))


@dataclass
class Retries:
    """One request's retries on its call. While it waits for one the request is not out (it came back with its
    error): an interrupt then (a cancelled task, Ctrl-C) charges it nothing more than its lost answer (`abandoned`
    charges the requests out); it is out again as the retry is sent."""

    core: Core
    call: Call
    send: Callable[[], Any]
    counted: bool = field(init=False)  # the request is among the call's `in_flight` (a relay's later stream is while it opens)
    back: bool = field(init=False, default=False)  # taken off `in_flight` for the wait before a retry
    taken: int = field(init=False, default=0)  # retries sent so far
    error: BaseException | None = field(init=False, default=None)  # the error the next retry follows

    def __post_init__(self) -> None:
        """Whether the request is counted in flight: a sending effect counts each request it sends until it is answered."""
        self.counted = self.call.in_flight > 0

    def hold(self, error: BaseException) -> None:
        """Before a retry: the request is back, and `hold_retry` holds the retry; when that refuses it, the request's
        error goes back through `answered`, which takes it off `in_flight`. A call cut off by an interrupt retries nothing."""
        self.error = error
        if self.call.cut_off:
            raise error
        self._out(False)
        try:
            hold_retry(self.core, self.call, error, self.send)
        except Exception:
            self._out(True)
            raise

    def again(self) -> Any:
        """Send the retry: the request is out again, carrying its retry number."""
        with self._retrying():
            return self.send()

    async def again_async(self) -> Any:
        """`again` for an async client: the retry number stays set while the request is awaited."""
        with self._retrying():
            return await self.send()

    @contextmanager
    def _retrying(self) -> Iterator[None]:
        """While the next retry is sent: out again, its number in `RETRIES_TAKEN` (the request's headers carry it); none
        once an interrupt cut the call off during the wait (it was charged as out), the last error raised again."""
        if self.call.cut_off and self.error is not None:
            raise self.error
        self._out(True)
        self.taken += 1
        token = RETRIES_TAKEN.set(self.taken)
        try:
            yield
        finally:
            RETRIES_TAKEN.reset(token)

    def _out(self, out: bool) -> None:
        """Count the request in flight again, or not, once."""
        with self.core._lock:
            if self.counted and self.back == out and not self.call.cut_off:
                self.call.in_flight += 1 if out else -1
                self.back = not out


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
            call_spent_usd=call.spent_in_call() + call.reservation.worst_case_usd,  # the retry's own hold stands
        )
    except (BudgetExceededError, StoreUnavailableError) as refused:  # a ledger out of reach: the lost answer's charge is owed
        add_note(refused, f"it was the retry, not sent, of a request whose answer was lost ({type(error).__name__}), charged its worst case")
        if isinstance(refused, StoreUnavailableError):
            raise  # its cause is the store's own error
        raise refused from error
    with core._lock:
        call.lost.remove(usage)
        call.lost_tokens += usage["total_tokens"]
    cost = call.meter.settle(hold, usage)
    with core._lock:  # fan-out threads share the call
        call.info.cost_usd += cost
