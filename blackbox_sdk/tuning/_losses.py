"""The losses CMA-ES minimises: a whole population's loss and accuracy from its label log-probs.

Every loss is finite, so CMA-ES ranks every candidate. A renormalised label log-prob counts for no
less than `LOGPROB_FLOOR`, so a true label given no mass costs a bounded loss rather than +inf. A
row with no usable log-prob (every label at -inf, or a NaN: the candidate's forward overflowed, or
the target gave no mass to any label) says nothing about the labels, so it is scored as the worst
answer there is, the true label at the floor and another at certainty: its candidate ranks last
but the search goes on. When no row of the whole evaluation is usable the target returns no
usable log-probs for the labels at all, and that is a TuningError: a search would only spend its
budget on equal losses.
"""

from __future__ import annotations

import math

import torch

from .._exceptions import TuningError

LOGPROB_FLOOR = math.log(1e-12)  # about -27.6: the lowest a label's log-prob counts as (the endpoint's stand-in floors at 1e-12 too)


def population_losses(
    logprobs: torch.Tensor, labels: torch.Tensor, loss: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [P], accuracy [P]) from label log-probs [P, N, C] and class indexes [N], renormalised over the labels; always finite."""
    raw = logprobs.float()
    usable = raw.isfinite().any(-1) & ~(raw.isnan() | raw.isposinf()).any(-1)  # [P, N]: some label has mass, nothing is NaN
    if not usable.any():
        raise TuningError(
            "every verbalizer log-prob the target returned is -inf or NaN: it gives no usable log-probs for the "
            "label tokens, so no prompt can be ranked (check that it returns log-probs for the verbalizer tokens)"
        )
    target = labels.to(raw.device).expand(raw.shape[:2])  # [P, N]
    worst = torch.nn.functional.one_hot(target, raw.shape[-1]).float() * LOGPROB_FLOOR  # [P, N, C]: the true label at the floor
    scores = torch.log_softmax(raw.masked_fill(~usable[..., None], 0.0), dim=-1)  # [P, N, C]
    scores = torch.where(usable[..., None], scores, worst).clamp(min=LOGPROB_FLOOR)
    accuracy = (scores.argmax(-1) == target).float().mean(-1)  # [P]
    true = scores.gather(-1, target[..., None]).squeeze(-1)  # [P, N]
    if loss == "ce":
        return -true.mean(-1), accuracy
    if loss == "hinge":  # Crammer-Singer: the true label must beat the best other one by the margin
        others = scores.masked_fill(torch.nn.functional.one_hot(target, scores.shape[-1]).bool(), float("-inf"))
        return torch.relu(margin - (true - others.max(-1).values)).mean(-1), accuracy
    return -accuracy, accuracy
