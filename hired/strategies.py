"""Token-dropping strategies behind one interface and one budget contract.

Every strategy gets the same evidence for one image (:class:`ImageSignals`) and
returns a :class:`Selection`: per partition, the kept token indices and, for a
strategy that merges (PruMerge+), new features for those tokens. The contract
is the same for all of them, so they can be compared at equal cost: the image
keeps exactly B = ``config.tokens_to_keep(N)`` grid tokens, the shares per
partition sum to B, no kept token is padding, kept tokens are in spatial order.

HiRED (``hired.strategy``) splits B by ``alpha`` and visual content. The
baselines here split it in proportion to each partition's valid token count:
the split a content-blind method would make, which privileges no view. (An
alternative would be HiRED's ``alpha`` for the full view and a proportional
split of the rest, isolating the choice inside partitions; but then "uniform"
would inherit half of HiRED's design, and PruMerge(+) itself knows no views.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .budget import largest_remainder
from .config import HiREDConfig
from .models import Partitions
from .prumerge import merge_dropped, prumerge_plus_tokens
from .selection import random_tokens, spread_tokens
from .strategy import select_hired


@dataclass
class ImageSignals:
    """What the vision tower told us about one image's partitions (``P`` partitions, ``T`` tokens each).

    Only what the strategy asked for is filled in (see :func:`vision_needs`).
    """

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


def vision_needs(strategy: str, initial: int, final: int) -> tuple[list[int], list[int]]:
    """(layers whose CLS attention, layers whose keys) a strategy reads.

    The content-blind baselines need neither, so the tower runs without hooks for them.
    """
    return {
        "hired": (sorted({initial, final}), []),
        "uniform": ([], []),
        "random": ([], []),
        "prumerge+": ([final], [final]),
    }[strategy]


def proportional_budgets(parts: Partitions, total: int) -> list[int]:
    """B split over the partitions in proportion to their valid token counts (largest remainder)."""
    capacities = parts.capacities
    return largest_remainder(total, capacities, capacities)


def partition_seed(seed: int, partition: int, pixel_values: torch.Tensor) -> int:
    """A 63-bit generator seed from the config's seed, the partition index and its pixels.

    The pixels, not the item's place in the batch, identify the image, so an image
    gets the same tokens alone or in any batch. Without them every picture of the
    same size would share one random pattern, and an evaluation would measure one
    draw rather than random dropping. They are hashed at float16, the narrowest
    dtype the pipeline hands over, so a picture draws the same tokens whether its
    pixels arrive in float32 (CPU) or float16 (GPU).
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"hired.random:{seed}:{partition}:".encode())
    digest.update(pixel_values.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def select_tokens(parts: Partitions, signals: ImageSignals, config: HiREDConfig) -> Selection:
    """The tokens ``config.strategy`` keeps of one image."""
    if config.strategy == "hired":
        return Selection(select_hired(parts, signals.initial_attention, signals.final_attention, config))
    budgets = proportional_budgets(parts, config.tokens_to_keep(parts.grid_tokens))
    partitions = range(parts.num_partitions)
    if config.strategy == "uniform":
        return Selection([spread_tokens(parts.valid[p], budgets[p]) for p in partitions])
    if config.strategy == "random":
        generators = [
            torch.Generator().manual_seed(partition_seed(config.seed, p, signals.pixel_values[p])) for p in partitions
        ]
        return Selection([random_tokens(parts.valid[p], budgets[p], generators[p]) for p in partitions])
    if config.strategy == "prumerge+":
        attention = signals.final_attention
        kept = [prumerge_plus_tokens(attention[p], parts.valid[p], budgets[p]) for p in partitions]
        merged = [
            merge_dropped(signals.features[p], signals.final_keys[p], attention[p], kept[p], parts.valid[p])
            for p in partitions
        ]
        return Selection(kept, merged)
    raise ValueError(f"unknown strategy {config.strategy!r}")
