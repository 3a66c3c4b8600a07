"""Templates and verbalizers: where the soft prompt goes in each example, and which token is each label.

A soft prompt is L vectors in a model's input-embedding space. Each example becomes
`head + <soft prompt> + tail`, and the model's next-token log-probabilities after the tail, read at
the verbalizer tokens, score the labels. Where the soft prompt goes (`placement`):

- `prefix`: before everything (the paper): `<p> Review: {text} It was`
- `after_text`: right after the text: `Review: {text} <p> It was`
- `suffix`: right before the answer: `Review: {text} It was <p>`

With `after_text` and `suffix` the head (template start and text) does not depend on the prompt,
so a scorer can compute each example's KV cache once and let every candidate prompt reuse it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._exceptions import TuningError

Placement = Literal["prefix", "after_text", "suffix"]
TEXT_SLOT = "{text}"
LABEL_SLOT = "{label}"


@dataclass(frozen=True)
class EncodedExamples:
    """Examples as token ids split around the soft prompt: `head + <soft> + tail`, answer next."""

    heads: tuple[tuple[int, ...], ...]
    tails: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]  # class index of each example; -1 when unknown (classify)
    key: str  # content hash, so scorers can cache per example set

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.heads)

    def tokens_per_sequence(self, prompt_len: int) -> list[int]:
        """Positions each example's sequence holds with a soft prompt of prompt_len vectors."""
        return [len(h) + prompt_len + len(t) for h, t in zip(self.heads, self.tails, strict=True)]


def _split_template(template: str) -> tuple[str, str, str]:
    """(before text, between text and label without its trailing space, that space); TuningError if malformed."""
    if template.count(TEXT_SLOT) != 1 or template.count(LABEL_SLOT) != 1:
        raise TuningError(f"the template needs exactly one {TEXT_SLOT} and one {LABEL_SLOT} slot, got {template!r}")
    before, rest = template.split(TEXT_SLOT)
    if LABEL_SLOT in before:
        raise TuningError(f"{LABEL_SLOT} must come after {TEXT_SLOT}: a causal LM reads the answer after the text")
    between, after = rest.split(LABEL_SLOT)
    if after.strip():
        raise TuningError(
            f"{LABEL_SLOT} must end the template (a causal LM predicts it last), found {after!r} after it"
        )
    stripped = between.rstrip()
    return before, stripped, between[len(stripped) :]


class PromptTemplate:
    """A template such as `"Review: {text} It was {label}"` and a verbalizer {label: word}, tokenizer-checked."""

    def __init__(self, template: str, verbalizer: Mapping[str, str], tokenizer: Any, placement: Placement) -> None:
        self.template = template
        self.verbalizer = dict(verbalizer)
        self.placement = placement
        self._tokenizer = tokenizer
        self._before, self._between, separator = _split_template(template)
        self.labels = list(self.verbalizer)
        self.label_token_ids = self._label_tokens(separator)
        self._bos = self._leading_bos()

    def _label_tokens(self, separator: str) -> list[int]:
        """One distinct token per label (the word as it follows the template, space included)."""
        if len(self.verbalizer) < 2:
            raise TuningError(f"a verbalizer needs at least two labels, got {self.verbalizer}")
        ids = [self._label_token(label, word, separator) for label, word in self.verbalizer.items()]
        if len(set(ids)) != len(ids):
            raise TuningError(f"verbalizer words map to the same token: {dict(zip(self.labels, ids, strict=True))}")
        return ids

    def _label_token(self, label: str, word: Any, separator: str) -> int:
        """The single token of one label's verbalizer word; TuningError when it is empty or several tokens."""
        if not isinstance(word, str) or not word.strip():
            raise TuningError(f"label {label!r} has an empty verbalizer word")
        tokens = self._tokenizer.encode(separator + word.strip(), add_special_tokens=False)
        if len(tokens) != 1:
            raise TuningError(
                f"verbalizer word {separator + word.strip()!r} for label {label!r} is {len(tokens)} tokens "
                f"{tokens}; each must be a single token"
            )
        return tokens[0]

    def _leading_bos(self) -> list[int]:
        """[bos] when the tokenizer puts one in front of a text by itself, else []."""
        bos = self._tokenizer.bos_token_id
        return [bos] if bos is not None and self._tokenizer.encode("x")[:1] == [bos] else []

    def _ids(self, text: str) -> tuple[int, ...]:
        """Token ids of a piece of text, no special tokens."""
        return tuple(self._tokenizer.encode(text, add_special_tokens=False)) if text else ()

    def split(self, text: str) -> tuple[str, str]:
        """(head, tail) text of one example around the soft prompt, by placement."""
        full_head = self._before + text
        if self.placement == "prefix":
            return "", full_head + self._between
        if self.placement == "after_text":
            return full_head, self._between
        return full_head + self._between, ""

    def encode(self, texts: Sequence[str], labels: Sequence[str] | None = None) -> EncodedExamples:
        """Token ids of texts (and class indexes of labels) for scoring."""
        pieces = [self.split(text) for text in texts]
        heads = tuple(tuple(self._bos) + self._ids(head) for head, _ in pieces)
        tails = tuple(self._ids(tail) for _, tail in pieces)
        classes = tuple(self.labels.index(label) for label in labels) if labels is not None else (-1,) * len(texts)
        key = hashlib.sha256(json.dumps([heads, tails]).encode()).hexdigest()
        return EncodedExamples(heads=heads, tails=tails, labels=classes, key=key)
