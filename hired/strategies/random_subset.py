"""A random subset of each partition, the same for an image alone or in any batch."""

from __future__ import annotations

import hashlib

import torch

from ..config import HiREDConfig
from ..models import Partitions
from ..selection import random_tokens
from .base import ImageSignals, Selection, proportional_budgets


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


def select(parts: Partitions, signals: ImageSignals, config: HiREDConfig) -> Selection:
    """Each partition's proportional share drawn uniformly from its valid tokens, seeded by ``config.seed``."""
    budgets = proportional_budgets(parts, config.tokens_to_keep(parts.grid_tokens))
    kept = []
    for p in range(parts.num_partitions):
        generator = torch.Generator().manual_seed(partition_seed(config.seed, p, signals.pixel_values[p]))
        kept.append(random_tokens(parts.valid[p], budgets[p], generator))
    return Selection(kept)
