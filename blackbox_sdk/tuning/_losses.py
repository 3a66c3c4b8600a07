"""The losses CMA-ES minimises: a whole population's loss and accuracy from its label log-probs."""

from __future__ import annotations

import torch


def population_losses(
    logprobs: torch.Tensor, labels: torch.Tensor, loss: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [P], accuracy [P]) from label log-probs [P, N, C] and class indexes [N], renormalised over the labels."""
    scores = torch.log_softmax(logprobs.float(), dim=-1)  # [P, N, C]
    target = labels.to(scores.device).expand(scores.shape[:2])  # [P, N]
    accuracy = (scores.argmax(-1) == target).float().mean(-1)  # [P]
    true = scores.gather(-1, target[..., None]).squeeze(-1)  # [P, N]
    if loss == "ce":
        return -true.mean(-1), accuracy
    if loss == "hinge":  # Crammer-Singer: the true label must beat the best other one by the margin
        others = scores.masked_fill(torch.nn.functional.one_hot(target, scores.shape[-1]).bool(), float("-inf"))
        return torch.relu(margin - (true - others.max(-1).values)).mean(-1), accuracy
    return -accuracy, accuracy
