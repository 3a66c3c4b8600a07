"""Generation on a loaded model: one `model.generate` per request (n choices batched), each row
cut at end-of-sequence and stop strings, with OpenAI's per-token log-probs from the raw logits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList

from .._exceptions import BackendError
from ._constrained import SchemaConstraint
from ._loading import LoadedModel
from ._prompts import Decoding, Prompt

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a sentencepiece byte-fallback token


@dataclass
class Candidate:
    """One finished choice: its text, why it stopped, tokens spent and per-token log-probs."""

    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[dict[str, Any]] = field(default_factory=list)


def cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in text, or None (OpenAI cuts the text there)."""
    found = [index for index in (text.find(s) for s in stop) if index >= 0]
    return min(found) if found else None


def logprob_entry(tokenizer: Any, logits: torch.Tensor, token_id: int, top: int) -> dict[str, Any]:
    """OpenAI's per-token log-prob record, from one step's raw logits [V]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [V]
    entry = _token_entry(tokenizer, token_id, float(logprobs[token_id]))
    values, ids = torch.topk(logprobs, top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
    entry["top_logprobs"] = [_token_entry(tokenizer, int(i), float(v)) for v, i in zip(values, ids, strict=True)]
    return entry


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    """A `{token, logprob, bytes}` record for one token id."""
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(_token_bytes(tokenizer, token_id, text))}


def _token_bytes(tokenizer: Any, token_id: int, text: str) -> bytes:
    """A token's own UTF-8 bytes, so that half a character's bytes join the next token's as OpenAI's `bytes` do.

    Decoding one token alone turns half a character into U+FFFD; the raw bytes come from the vocabulary
    piece instead: a byte-level BPE piece (checked against the decoded text) or a `<0xNN>` byte token."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and (byte := _BYTE_PIECE.fullmatch(piece)):
        return bytes([int(byte.group(1), 16)])
    decoder = _byte_level_decoder()
    if isinstance(piece, str) and piece and all(char in decoder for char in piece):
        raw = bytes(decoder[char] for char in piece)
        if raw.decode("utf-8", errors="replace") == text:
            return raw
    return text.encode("utf-8")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte: printable bytes stand for themselves, the rest from U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


def run_generate(
    lm: LoadedModel, prompt: Prompt, decoding: Decoding, n: int, *, with_logits: bool, **extra: Any
) -> Any:
    """One model.generate call under the model lock, seeded when the request has a seed, held to its schema if any."""
    config = _generation_config(lm, decoding, n, with_logits=with_logits)
    if decoding.structured is not None:
        start = len(prompt.ids) if prompt.soft is None else 0  # with inputs_embeds, input_ids hold only new tokens
        constraint = SchemaConstraint(lm, decoding.structured.node, start)
        extra = {**extra, "logits_processor": LogitsProcessorList([constraint])}
    with lm.lock, _seeded(decoding.seed, lm.device), torch.inference_mode():
        inputs = _model_inputs(lm, prompt)  # the soft prompt's embedding lookup is a model use too
        return lm.model.generate(**inputs, generation_config=config, tokenizer=lm.tokenizer, **extra)


def generate(lm: LoadedModel, prompt: Prompt, decoding: Decoding, n: int) -> list[Candidate]:
    """n candidates from ONE batched generate (num_return_sequences); greedy decodes once and repeats it."""
    rows = 1 if decoding.temperature == 0 else n  # greedy choices are identical by definition
    try:
        output = run_generate(lm, prompt, decoding, rows, with_logits=decoding.top_logprobs is not None)
    except (RuntimeError, ValueError) as exc:
        raise BackendError(f"generation failed on {lm.name}: {exc}") from exc
    start = len(prompt.ids) if prompt.soft is None else 0  # with inputs_embeds only new tokens come back
    sequences = output.sequences[:, start:].tolist()  # rows of S new tokens
    logits = None if output.logits is None else torch.stack(output.logits, dim=1)  # [rows, S, V]
    candidates = [
        _candidate(lm, seq, None if logits is None else logits[i], decoding) for i, seq in enumerate(sequences)
    ]
    return candidates if rows == n else [dataclasses.replace(candidates[0]) for _ in range(n)]


def _generation_config(lm: LoadedModel, decoding: Decoding, n: int, *, with_logits: bool) -> GenerationConfig:
    """A fresh GenerationConfig from the request alone (the model's own sampling defaults are ignored)."""
    sampling = decoding.temperature > 0
    options: dict[str, Any] = {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": 0}
    return GenerationConfig(
        max_new_tokens=decoding.max_new_tokens,
        num_return_sequences=n,
        do_sample=sampling,
        eos_token_id=lm.eos_ids,
        pad_token_id=lm.pad_id,
        bos_token_id=lm.model.generation_config.bos_token_id,
        stop_strings=list(decoding.stop) or None,
        return_dict_in_generate=True,
        output_logits=with_logits,
        **(options if sampling else {}),
    )


def _model_inputs(lm: LoadedModel, prompt: Prompt) -> dict[str, torch.Tensor]:
    """input_ids, or inputs_embeds with the soft prompt in front, plus the attention mask."""
    ids = torch.tensor([prompt.ids], device=lm.device)  # [1, T]
    mask = torch.ones(1, prompt.tokens, dtype=torch.long, device=lm.device)  # [1, L+T]
    if prompt.soft is None:
        return {"input_ids": ids, "attention_mask": mask}
    embeds = torch.cat([prompt.soft[None], lm.input_embeddings()(ids)], dim=1)  # [1, L+T, H]
    return {"inputs_embeds": embeds, "attention_mask": mask}


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch for one generate without disturbing the caller's random state; no-op without a seed."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _candidate(lm: LoadedModel, ids: list[int], logits: torch.Tensor | None, decoding: Decoding) -> Candidate:
    """Parse one generated row: cut at end-of-sequence and stop strings, count tokens, add logprobs."""
    ended = next((i for i, t in enumerate(ids) if t in lm.eos_ids), None)
    kept = ids if ended is None else ids[:ended]
    text = lm.tokenizer.decode(kept, skip_special_tokens=True)
    cut = cut_at_stop(text, decoding.stop)
    if cut is not None:
        text, finish, spent = text[:cut], "stop", len(kept)
        kept = kept[: tokens_within(lm.tokenizer, kept, cut)]
    elif ended is not None:
        finish, spent = "stop", len(kept) + 1
    else:
        finish, spent = ("length" if len(ids) >= decoding.max_new_tokens else "stop"), len(kept)
    top = decoding.top_logprobs or 0
    entries = [] if logits is None else [logprob_entry(lm.tokenizer, logits[s], t, top) for s, t in enumerate(kept)]
    return Candidate(text, finish, spent, entries)


def tokens_within(tokenizer: Any, ids: list[int], length: int) -> int:
    """How many leading tokens start inside the first `length` characters of the decoded text."""
    count = 0
    while count < len(ids) and len(tokenizer.decode(ids[:count], skip_special_tokens=True)) < length:
        count += 1
    return count
