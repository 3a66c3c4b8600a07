"""What the local backend answers: the JSON objects an OpenAI server sends (envelopes, choices,
stream chunks, usage, log-probs, embedding lists), built from plain values.
"""

from __future__ import annotations

import base64
import codecs
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._requests import CompletionRequest

if TYPE_CHECKING:
    import torch

    from ._generation import Candidate


def envelope(prefix: str, kind: str, model_id: str) -> dict[str, Any]:
    """The id/object/created/model fields every response and chunk starts with."""
    created = int(time.time())
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": created, "model": model_id}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat-style log-prob records in the legacy /completions shape, text offsets from `offset`."""
    tokens, offsets = _token_texts(entries), []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def _token_texts(entries: list[dict[str, Any]]) -> list[str]:
    """Each token's share of the text, from its bytes: a character split over tokens goes to the one that completes it
    (the others add ""), so the tokens join to the text and the offsets stay in it (alone, each decodes to U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(bytes(entry["bytes"])) for entry in entries]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)  # a character cut short by the length limit: U+FFFD, as in the text
    return texts


def chat_choice(index: int, candidate: Candidate, with_logprobs: bool) -> dict[str, Any]:
    """One choice of a ChatCompletion."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": candidate.text, "refusal": None},
        "finish_reason": candidate.finish_reason,
        "logprobs": {"content": candidate.logprobs, "refusal": None} if with_logprobs else None,
    }


def completion_choice(index: int, candidate: Candidate, request: CompletionRequest, prompt: str) -> dict[str, Any]:
    """One choice of a Completion (the prompt in front when echo is set)."""
    logprobs = None if request.logprobs is None else legacy_logprobs(candidate.logprobs, 0)
    text = prompt + candidate.text if request.echo else candidate.text
    return {"index": index, "text": text, "finish_reason": candidate.finish_reason, "logprobs": logprobs}


def chunk_choice(index: int, delta: dict[str, Any], logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    """One choice of a ChatCompletionChunk."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def text_chunk(index: int, text: str, logprobs: Any, finish_reason: str | None) -> dict[str, Any]:
    """One choice of a streamed Completion."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def embedding_list(vectors: torch.Tensor, encoding_format: str | None, model_id: str, tokens: int) -> dict[str, Any]:
    """The /embeddings answer for vectors [N, H]: floats, or base64 when that format is asked for."""
    encode = _base64_vector if encoding_format == "base64" else _float_vector
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _float_vector(vector: torch.Tensor) -> list[float]:
    """An embedding as a JSON list of floats."""
    return vector.tolist()


def _base64_vector(vector: torch.Tensor) -> str:
    """An embedding as base64 of little-endian float32 bytes (what openai asks for by default)."""
    return base64.b64encode(vector.cpu().numpy().astype("<f4").tobytes()).decode("ascii")
