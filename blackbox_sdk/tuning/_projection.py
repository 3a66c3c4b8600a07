"""The map from the search space to soft prompts, `p = A z + p0`: the random projections A and the offset p0.

A is a fixed random normal map d -> L*H of std `alpha * std_e / (sqrt(d) * sigma0)`, as BBTv2
scales it (std_e: std of the word-embedding matrix), so A z starts with per-entry std about
`alpha * std_e`. A deep prompt has one A per layer, each scaled by the std of the hidden state
entering that layer in place of std_e, and drawn from its own seeded stream (layer 0's is the
plain prompt's).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from .._exceptions import TuningError
from ._config import BBTConfig
from ._scorer import PromptScorer
from ._soft_prompt import SoftPrompt


def build_projection(
    d: int, prompt_len: int, hidden: int, *, std_e: float, alpha: float, sigma: float, seed: int, layer: int = 0
) -> torch.Tensor:
    """A: [L*H, d] float32 normal with std alpha * std_e / (sqrt(d) * sigma), from a CPU generator seeded by (seed, layer)."""
    stream = seed if layer == 0 else int(np.random.SeedSequence([seed, layer]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(stream)
    std = alpha * std_e / (math.sqrt(d) * sigma)
    return torch.randn(prompt_len * hidden, d, generator=generator) * std  # [L*H, d]


def initial_prompt(config: BBTConfig, scorer: PromptScorer, table: torch.Tensor) -> torch.Tensor:
    """p0 [L, H] on the scorer's device: zeros, word embeddings (chosen or random words), or a saved prompt's embeds."""
    length, hidden, p0 = config.prompt_len, int(table.shape[1]), config.p0
    if p0 == "zeros":
        return torch.zeros(length, hidden, device=scorer.device)
    if p0 == "vocab":
        ids = _p0_token_ids(config, scorer.tokenizer, int(table.shape[0]))
        return table[torch.tensor(ids, device=table.device)].float().to(scorer.device)
    saved = SoftPrompt.load(p0)
    if tuple(saved.embeds.shape) != (length, hidden):
        raise TuningError(f"p0 {p0} has shape {list(saved.embeds.shape)}, this run needs [{length}, {hidden}]")
    return saved.embeds.to(scorer.device)


def _p0_token_ids(config: BBTConfig, tokenizer: Any, vocab: int) -> list[int]:
    """L token ids: p0_words' tokens cycled to L, or L random non-special tokens (seeded)."""
    length = config.prompt_len
    if config.p0_words is not None:
        ids = tokenizer.encode(config.p0_words, add_special_tokens=False)
        if not ids:
            raise TuningError("p0_words has no tokens")
        return [ids[i % len(ids)] for i in range(length)]
    special = set(tokenizer.all_special_ids)
    rng = random.Random(config.seed)
    return rng.sample([i for i in range(vocab) if i not in special], length)
