"""The simplest content-blind baseline: an evenly spread 2-D lattice of each partition."""

from __future__ import annotations

from ..config import HiREDConfig
from ..models import Partitions
from ..selection import spread_tokens
from .base import ImageSignals, Selection, proportional_budgets


def select(parts: Partitions, signals: ImageSignals, config: HiREDConfig) -> Selection:
    """Each partition's proportional share as a lattice over its valid tokens (no attention: deterministic)."""
    budgets = proportional_budgets(parts, config.tokens_to_keep(parts.grid_tokens))
    return Selection([spread_tokens(parts.valid[p], budgets[p]) for p in range(parts.num_partitions)])
