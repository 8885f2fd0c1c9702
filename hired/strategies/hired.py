"""HiRED's token choice for one image (paper Sec. 3): split the budget, then select inside partitions."""

from __future__ import annotations

import torch

from ..budget import split_budget
from ..config import HiREDConfig
from ..geometry import subimage_content_scores
from ..models import Partitions
from ..selection import top_tokens
from .base import ImageSignals, Selection


def partition_budgets(parts: Partitions, initial_attention: torch.Tensor | None, config: HiREDConfig) -> list[int]:
    """Step 1 (paper Eq. 1): the image's budget B split over its partitions.

    ``initial_attention``: ``(P, T)`` CLS attention of the initial layer; only the
    full view's row is used, to score each sub-image's region of the picture.
    """
    total = config.tokens_to_keep(parts.grid_tokens)
    capacities = parts.capacities
    if parts.layout is None:  # a single view takes the whole budget
        return [total]
    scores = subimage_content_scores(initial_attention[0], parts.layout)
    full_share, sub_shares = split_budget(total, config.alpha, capacities[0], scores.tolist(), capacities[1:])
    return [full_share, *sub_shares]


def select(parts: Partitions, signals: ImageSignals, config: HiREDConfig) -> Selection:
    """Step 2: inside each partition keep its share of tokens with the highest final-layer CLS
    attention (``(P, T)``, heads reduced by ``config.head_reduction``)."""
    budgets = partition_budgets(parts, signals.initial_attention, config)
    final = signals.final_attention
    return Selection([top_tokens(final[p], budgets[p], parts.valid[p]) for p in range(parts.num_partitions)])
