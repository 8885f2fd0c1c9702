"""What every strategy gets and returns for one image.

A strategy gets the same evidence for every image (:class:`ImageSignals`: only what its
registry entry says it needs is filled in) and returns a :class:`Selection`: per partition, the
kept token indices and, for a strategy that merges (PruMerge+), new features for those tokens.

HiRED splits B by ``alpha`` and visual content. The baselines split it in proportion to each
partition's valid token count (:func:`proportional_budgets`): the split a content-blind method
would make, which privileges no view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import largest_remainder
from ..models import Partitions


@dataclass
class ImageSignals:
    """What the vision tower told us about one image's partitions (``P`` partitions, ``T`` tokens each)."""

    pixel_values: torch.Tensor  # (P, 3, H, W) as the processor gave them; "random" seeds from them
    features: torch.Tensor  # (P, T, D) vision features, before the projector
    initial_attention: torch.Tensor | None = None  # (P, T) CLS attention, initial layer (HiRED)
    final_attention: torch.Tensor | None = None  # (P, T) CLS attention, final layer
    final_keys: torch.Tensor | None = None  # (P, T, D_k) final layer's patch keys (PruMerge+)


@dataclass
class Selection:
    """What one image keeps."""

    kept: list[torch.Tensor]  # per partition: kept token indices, ascending
    # Per partition, ``(len(kept[p]), D)`` features replacing the kept tokens' own; None: keep them as they are.
    features: list[torch.Tensor] | None = None

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """The image's ``(P, T, D)`` features with the replacements written in (a copy when there are any)."""
        if self.features is None:
            return features
        features = features.clone()
        for p, (kept, replacement) in enumerate(zip(self.kept, self.features)):
            features[p, kept.to(features.device)] = replacement.to(features.dtype)
        return features


def keep_all(parts: Partitions) -> Selection:
    """Every token the stock model would use."""
    return Selection([row.nonzero().flatten() for row in parts.valid])


def proportional_budgets(parts: Partitions, total: int) -> list[int]:
    """B split over the partitions in proportion to their valid token counts (largest remainder)."""
    capacities = parts.capacities
    return largest_remainder(total, capacities, capacities)
