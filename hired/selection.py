"""Which tokens a partition keeps, given its share of the budget."""

from __future__ import annotations

import torch


def top_tokens(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest-scoring valid tokens, in spatial (ascending) order.

    ``scores``: ``(T,)``; ``valid``: optional bool ``(T,)``, tokens unpadding
    would throw away are never picked. Ties go to the lower index, so the choice
    is deterministic.
    """
    if valid is not None:
        num_valid = int(valid.sum())
        if k > num_valid:
            raise ValueError(f"cannot keep {k} tokens of a partition with {num_valid} valid tokens")
        scores = scores.float().masked_fill(~valid, float("-inf"))
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:k].sort().values
