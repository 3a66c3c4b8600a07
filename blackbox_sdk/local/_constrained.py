"""Constrained decoding: a logits processor that lets each row of a generate choose only tokens that
keep its answer a prefix of a valid document (`_schema.match`), and end only when it is complete.

Each step it looks at the model's best candidates (and the first token of any text the schema
forces next, such as a key), keeps those that stay valid, and masks the rest; when none of the
best stay valid it looks further down the model's order. So the model still writes every value
(and its own choice of tokens for the keys), while keys, punctuation and types come from the schema.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import LogitsProcessor

from ._loading import LoadedModel
from ._matching import match
from ._schema import Node

CANDIDATES = 64  # tokens checked per step, in the model's order, before looking further


@functools.lru_cache(maxsize=8)
def token_texts(tokenizer: Any) -> tuple[str, ...]:
    """Each token id's text; special tokens map to "" so that no constraint ever picks them."""
    texts = list(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
    for special in tokenizer.all_special_ids:
        if 0 <= special < len(texts):
            texts[special] = ""
    return tuple(texts)


class SchemaConstraint(LogitsProcessor):
    """Masks, per row, every token that would leave the schema; only end-of-sequence once the answer is complete."""

    def __init__(self, lm: LoadedModel, node: Node, start: int) -> None:
        self._node, self._start = node, start  # start: where the answer begins in each row of input_ids
        self._tokenizer = lm.tokenizer
        self._texts = token_texts(lm.tokenizer)
        self._eos = sorted(lm.eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores [B, V] with the tokens that break the schema set to -inf."""
        for row in range(input_ids.shape[0]):
            ids = input_ids[row, self._start :].tolist()
            if any(token in self._eos for token in ids):
                continue  # a finished row only pads from here
            allowed = torch.tensor(self._allowed("".join(self._texts[t] for t in ids), scores[row]))
            kept = scores[row, allowed]  # [A]
            if not torch.isfinite(kept).any():  # top-p or temperature already ruled them all out
                kept = torch.zeros_like(kept)
            scores[row] = float("-inf")
            scores[row, allowed] = kept
        return scores

    def _allowed(self, text: str, scores: torch.Tensor) -> list[int]:
        """Token ids that keep `text` on a valid path, best first by the model's scores."""
        state = match(self._node, text)
        if state.status != "partial":
            return self._eos  # complete: end here (invalid can't happen, but ending is the safe way out)
        allowed: list[int] = []
        if state.forced:
            first = self._tokenizer.encode(state.forced, add_special_tokens=False)[0]
            if self._viable(text, first):
                allowed.append(first)
        best = torch.topk(scores, CANDIDATES).indices.tolist()
        allowed += [t for t in best if t not in allowed and self._viable(text, t)]
        if allowed:
            return allowed
        for token in torch.argsort(scores, descending=True)[CANDIDATES:].tolist():
            if self._viable(text, token):
                return [token]
        return self._eos

    def _viable(self, text: str, token: int) -> bool:
        """Whether appending the token keeps the text a prefix of (or makes it) a valid document."""
        piece = self._texts[token]
        return bool(piece) and match(self._node, text + piece).status != "invalid"
