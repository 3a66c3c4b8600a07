"""What scores a soft prompt (the `PromptScorer` Protocol) and how a tuning target becomes one.

A target is an HFBackend, a blackbox_sdk client with `base_url="hf:..."`, or an embeddings
endpoint; anything else is refused before a call is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .._exceptions import EmbeddingsNotSupportedError
from ._local_scorer import DEFAULT_BATCH, LocalScorer
from ._template import EncodedExamples


@runtime_checkable
class PromptScorer(Protocol):
    """Something that scores soft prompts: label log-probs of every (prompt, example) pair."""

    model_id: str
    tokenizer: Any
    device: torch.device

    def embedding_table(self) -> torch.Tensor:
        """The model's input-embedding matrix [V, H]."""
        ...

    def label_logprobs(
        self, prompts: torch.Tensor, examples: EncodedExamples, label_ids: Sequence[int]
    ) -> torch.Tensor:
        """Next-token log-probs [P, N, C] at the verbalizer tokens, for prompts [P, L, H] on N examples."""
        ...

    def tokens_sent(self, prompt_len: int, examples: EncodedExamples) -> int:
        """Prompt tokens one candidate costs on these examples, as a server would bill them."""
        ...


def resolve_target(target: Any, *, batch_size: int = DEFAULT_BATCH) -> PromptScorer:
    """A scorer for an HFBackend, an `hf:` client, or an embeddings endpoint; EmbeddingsNotSupportedError otherwise."""
    from ..local import HFBackend

    if isinstance(target, PromptScorer):
        if not getattr(target, "supports_prompt_embeds", True):
            raise EmbeddingsNotSupportedError(
                f"{type(target).__name__} was not told that its server takes prompt embeddings: pass "
                "supports_prompt_embeds=True only for a server that does (vLLM with --enable-prompt-embeds)"
            )
        return target
    backend = target if isinstance(target, HFBackend) else getattr(target, "backend", None)
    if backend is None or not getattr(backend, "supports_embeddings", False):
        raise EmbeddingsNotSupportedError(
            f"{type(target).__name__} can't take input embeddings: black-box tuning needs an HFBackend, a "
            "blackbox_sdk client with base_url='hf:...', or an EmbedsEndpoint for a server that accepts prompt_embeds"
        )
    return LocalScorer(backend, batch_size=batch_size)
