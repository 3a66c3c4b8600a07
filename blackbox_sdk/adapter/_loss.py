"""The training losses of the BBox-Adapter, on score tensors (torch is imported when one is computed).

Ranking NCE (Sun et al. 2024, Eq. 2): for each question, a positive answer x+ and negatives x_1..x_N,

    loss = mean over groups of [ logsumexp_k(g(x_k) / T) - g(x+) / T ]  +  l2 * mean(g(x)^2)

with k over the positive and its negatives. The official code's batch form ("batch") is also here:
mean(E+ / T) - mean(E- / T) + l2 * mean(E^2) over every positive and negative of a batch, E = -g.
"""

from __future__ import annotations

import math
from typing import Any

from ._energy import import_torch

LOSSES = ("nce", "batch")


def nce_loss(scores: Any, mask: Any, *, temperature: float = 1.0, l2: float = 0.0) -> Any:
    """Ranking NCE: scores (G, 1+N) with the positive in column 0, mask (G, 1+N) marking real entries."""
    torch = import_torch()
    logits = (scores / temperature).masked_fill(~mask, -math.inf)  # (G, 1+N)
    ranking = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()  # scalar
    return ranking + l2 * scores[mask].square().mean()


def batch_energy_loss(scores: Any, positive: Any, *, temperature: float = 1.0, l2: float = 0.0) -> Any:
    """The official code's form: mean(E+/T) - mean(E-/T) + l2 mean(E^2), E = -scores, positive a bool mask."""
    torch = import_torch()
    energy = -scores  # (B,)
    pos, neg = energy[positive] / temperature, energy[~positive] / temperature
    zero = torch.zeros((), device=scores.device)
    pos_term = pos.mean() if pos.numel() else zero
    neg_term = neg.mean() if neg.numel() else zero
    return pos_term - neg_term + l2 * energy.square().mean()


def group_loss(kind: str, scores: Any, mask: Any, *, temperature: float, l2: float) -> Any:
    """The loss named `kind` (one of LOSSES) on padded group scores (G, 1+N), the positive in column 0."""
    if kind == "nce":
        return nce_loss(scores, mask, temperature=temperature, l2=l2)
    positive = mask.clone()
    positive[:, 1:] = False
    return batch_energy_loss(scores[mask], positive[mask], temperature=temperature, l2=l2)
