"""Streaming on a loaded model: a live generate in a worker thread feeds a queue, the reader turns
tokens into text deltas (holding back what may begin a stop string) and the deltas into OpenAI's
stream chunks. A reader that leaves early stops the worker at its next step.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .._exceptions import BackendError
from ._generation import cut_at_stop, logprob_entry, run_generate, tokens_within
from ._loading import LoadedModel
from ._prompts import Decoding, Prompt
from ._requests import CompletionRequest
from ._responses import chunk_choice, envelope, legacy_logprobs, text_chunk, usage

_END = object()  # end-of-generation marker on a streaming queue


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed choice: new text, its tokens' log-probs, and the end when it comes."""

    text: str
    logprobs: list[dict[str, Any]]
    finish_reason: str | None = None
    completion_tokens: int = 0


class _QueueStreamer(BaseStreamer):
    """Hands each generated token (with its step's raw logits when recorded) to the reading thread."""

    def __init__(self, step_logits: collections.deque[torch.Tensor]) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._step_logits = step_logits  # filled by a forward hook (when logprobs are asked), one [V] per step
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        """Skip the prompt (generate's first put), then queue each new token id."""
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        logits = self._step_logits.popleft() if self._step_logits else None
        self.queue.put((int(value.reshape(-1)[0]), logits))

    def end(self) -> None:
        """Mark the end of generation."""
        self.queue.put(_END)


class _Cancelled(StoppingCriteria):
    """Stops generation when the stream's reader has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        """True for every row once the event is set."""
        stop = torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)
        return cast("torch.BoolTensor", stop)


def chat_chunks(
    lm: LoadedModel, prompt: Prompt, decoding: Decoding, n: int, include_usage: bool
) -> Iterator[dict[str, Any]]:
    """ChatCompletionChunk JSON: per choice a role chunk, content deltas, a finish chunk; then usage."""
    head = envelope("chatcmpl", "chat.completion.chunk", lm.name)
    extra = {"usage": None} if include_usage else {}
    spent = 0
    for index in range(n):
        yield {**head, **extra, "choices": [chunk_choice(index, {"role": "assistant", "content": ""}, None, None)]}
        for delta in stream_choice(lm, prompt, decoding, _choice_seed(decoding, index)):
            logprobs = {"content": delta.logprobs, "refusal": None} if delta.logprobs else None
            if delta.text:
                yield {**head, **extra, "choices": [chunk_choice(index, {"content": delta.text}, logprobs, None)]}
                logprobs = None
            if delta.finish_reason is not None:
                yield {**head, **extra, "choices": [chunk_choice(index, {}, logprobs, delta.finish_reason)]}
            spent += delta.completion_tokens
    if include_usage:
        yield {**head, "choices": [], "usage": usage(prompt.tokens, spent)}


def completion_chunks(
    lm: LoadedModel, request: CompletionRequest, prompts: list[Prompt], decoding: Decoding
) -> Iterator[dict[str, Any]]:
    """Completion chunks: choices one after another, each a live generate; then usage if asked."""
    head = envelope("cmpl", "text_completion", lm.name)
    spent = 0
    for p, (source, prompt) in enumerate(zip(request.prompt, prompts, strict=True)):
        for i in range(request.n):
            index = p * request.n + i
            offset = len(source) if request.echo else 0
            if request.echo:
                yield {**head, "choices": [text_chunk(index, source, None, None)]}
            for delta in stream_choice(lm, prompt, decoding, _choice_seed(decoding, index)):
                logprobs = None if request.logprobs is None else legacy_logprobs(delta.logprobs, offset)
                offset += len(delta.text)
                spent += delta.completion_tokens
                yield {**head, "choices": [text_chunk(index, delta.text, logprobs, delta.finish_reason)]}
    if request.include_usage:
        yield {**head, "choices": [], "usage": usage(sum(p.tokens for p in prompts), spent)}


def stream_choice(lm: LoadedModel, prompt: Prompt, decoding: Decoding, seed: int | None) -> Iterator[Delta]:
    """Text deltas of one live choice, stop strings honoured; the last delta carries the finish."""
    ids: list[int] = []
    pending: list[dict[str, Any]] = []
    sent, finish = 0, None
    for token, logits in _stream_tokens(lm, prompt, decoding, seed):
        ids.append(token)
        if token in lm.eos_ids:
            finish = "stop"
            break
        if logits is not None:
            pending.append(logprob_entry(lm.tokenizer, logits, token, decoding.top_logprobs or 0))
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        cut = cut_at_stop(text, decoding.stop)
        if cut is not None:
            yield Delta(text[sent:cut], _before_stop(lm, ids, pending, cut), "stop", len(ids))
            return
        safe = len(text) - _held_back(text, decoding.stop)
        if safe > sent:
            yield Delta(text[sent:safe], pending)
            sent, pending = safe, []
    text = lm.tokenizer.decode([t for t in ids if t not in lm.eos_ids], skip_special_tokens=True)
    finish = finish or ("length" if len(ids) >= decoding.max_new_tokens else "stop")
    yield Delta(text[sent:], pending, finish, len(ids))


def _before_stop(lm: LoadedModel, ids: list[int], pending: list[dict[str, Any]], cut: int) -> list[dict[str, Any]]:
    """The unsent log-probs of the tokens before a stop string: its own tokens have none, as in a whole answer."""
    if not pending:
        return pending
    unsent_from = len(ids) - len(pending)  # pending holds the log-probs of the last tokens, one each
    return pending[: max(0, tokens_within(lm.tokenizer, ids, cut) - unsent_from)]


def _choice_seed(decoding: Decoding, index: int) -> int | None:
    """The seed of the index-th streamed choice: seed + index, or None when unseeded."""
    return None if decoding.seed is None else decoding.seed + index


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters to withhold while streaming: a partial stop string or character."""
    held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return max(held, 1 if text.endswith("\ufffd") else 0)


def _stream_tokens(lm: LoadedModel, prompt: Prompt, decoding: Decoding, seed: int | None) -> Iterator[tuple[int, Any]]:
    """(token id, raw logits or None) pairs from a live generate in a worker thread."""
    step_logits: collections.deque[torch.Tensor] = collections.deque()
    streamer = _QueueStreamer(step_logits)
    cancel = threading.Event()
    plan = dataclasses.replace(decoding, seed=seed)
    worker = threading.Thread(target=_generate_into, args=(lm, prompt, plan, streamer, cancel, step_logits))
    worker.start()
    try:
        while (item := streamer.queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise BackendError(f"generation failed on {lm.name}: {item}") from item
            yield item
    finally:
        cancel.set()  # a reader that left early stops the worker at its next step
        if worker is not threading.current_thread():  # a dropped stream may be collected by the worker's own allocations
            worker.join()


def _generate_into(
    lm: LoadedModel,
    prompt: Prompt,
    decoding: Decoding,
    streamer: _QueueStreamer,
    cancel: threading.Event,
    step_logits: collections.deque[torch.Tensor],
) -> None:
    """Worker body: generate into the streamer, recording raw logits when logprobs are asked for."""
    hook = None
    if decoding.top_logprobs is not None:
        worker = threading.get_ident()  # record only this thread's forwards

        def record(_module: torch.nn.Module, _args: Any, out: Any) -> None:
            if threading.get_ident() == worker:
                step_logits.append(out.logits[0, -1].detach())  # [V]

        hook = lm.model.register_forward_hook(record)
    try:
        stopping = StoppingCriteriaList([_Cancelled(cancel)])
        run_generate(lm, prompt, decoding, 1, with_logits=False, streamer=streamer, stopping_criteria=stopping)
    except Exception as exc:  # handed to the reading thread, which raises it
        streamer.queue.put(exc)
    finally:
        if hook is not None:
            hook.remove()
