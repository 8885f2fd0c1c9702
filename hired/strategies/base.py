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


@dataclass
class BatchSignals:
    """The vision tower's evidence for a batch of pictures, partitions concatenated (``P`` in all),
    on the device; picture ``i`` owns rows ``spans[i]``."""

    parts: list[Partitions]
    spans: list[slice]
    pixel_values: list[torch.Tensor]  # per picture, (P_i, 3, H, W)
    features: torch.Tensor  # (P, T, D)
    initial_attention: torch.Tensor | None = None  # (P, T)
    final_attention: torch.Tensor | None = None  # (P, T)
    final_keys: torch.Tensor | None = None  # (P, T, D_k)

    def picture(self, i: int) -> ImageSignals:
        """Picture ``i``'s signals for a one-image ``select``: attention on the CPU, where it runs."""
        span = self.spans[i]
        rows = lambda x: None if x is None else x[span].cpu()  # noqa: E731
        keys = None if self.final_keys is None else self.final_keys[span]
        return ImageSignals(self.pixel_values[i], self.features[span], rows(self.initial_attention),
                            rows(self.final_attention), keys)


@dataclass
class BatchSelection:
    """What a batch of pictures keeps: ``keep`` bool ``(P, T)`` on the device; ``features``, if the
    strategy merges, the batch's ``(P, T, D)`` features with the kept tokens' replacements written in."""

    keep: torch.Tensor
    features: torch.Tensor | None = None


def select_each(strategy, signals: BatchSignals, config) -> BatchSelection:
    """A one-image strategy run picture by picture (with the host copies that takes)."""
    keep = torch.cat([p.valid for p in signals.parts]).clone()  # (P, T), on the host
    features = None
    for i, parts in enumerate(signals.parts):
        if config.tokens_to_keep(parts.grid_tokens) == parts.grid_tokens:
            continue  # every token: the stock layout
        picture = signals.picture(i)
        selection = strategy.select(parts, picture, config)
        rows = keep[signals.spans[i]]
        rows.zero_()
        for p, kept in enumerate(selection.kept):
            rows[p, kept.cpu()] = True
        if selection.features is not None:
            features = signals.features.clone() if features is None else features
            features[signals.spans[i]] = selection.apply(picture.features)
    return BatchSelection(keep.to(signals.features.device), features)


def keep_all(parts: Partitions) -> Selection:
    """Every token the stock model would use."""
    return Selection([row.nonzero().flatten() for row in parts.valid])


def proportional_budgets(parts: Partitions, total: int) -> list[int]:
    """B split over the partitions in proportion to their valid token counts (largest remainder)."""
    capacities = parts.capacities
    return largest_remainder(total, capacities, capacities)
