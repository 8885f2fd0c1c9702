"""HiRED's token choice (paper Sec. 3): split the budget, then select inside partitions; for one image
(the reading of the paper) and for a whole batch on the device (what ``prepare_inputs`` runs)."""

from __future__ import annotations

import torch

from ..budget import round_half_up, split_budget
from ..config import HiREDConfig
from ..device_budget import largest_remainder_batch
from ..geometry import subimage_content_scores, subimage_region_weights
from ..models import Partitions
from ..selection import top_tokens
from ..transfer import to_device
from .base import BatchSelection, BatchSignals, ImageSignals, Selection


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


def partition_budgets_batch(signals: BatchSignals, config: HiREDConfig) -> torch.Tensor:
    """Step 1 for every picture of a batch at once: ``(P,)`` budgets on the device, equal to
    :func:`partition_budgets` picture by picture (the split in ``hired.device_budget``). What the
    host knows goes over in one queued copy; the device work is a few small kernels a picture."""
    device = signals.features.device
    parts_of = signals.parts
    totals = [config.tokens_to_keep(p.grid_tokens) for p in parts_of]
    if all(p.layout is None for p in parts_of):  # single views take their whole budget
        return to_device(torch.tensor(totals, dtype=torch.long), device)
    side = parts_of[0].layout.side
    width = max(p.num_partitions - 1 for p in parts_of)
    rows, cols = max(p.layout.grid[0] for p in parts_of), max(p.layout.grid[1] for p in parts_of)
    capacities = torch.zeros(len(parts_of), width, dtype=torch.float64)
    region_rows = torch.zeros(len(parts_of), rows, side, dtype=torch.float64)
    region_cols = torch.zeros(len(parts_of), cols, side, dtype=torch.float64)
    rest = []
    for i, (parts, total) in enumerate(zip(parts_of, totals)):
        full_capacity, sub_capacities = parts.capacities[0], parts.capacities[1:]
        if total > full_capacity + sum(sub_capacities):
            raise ValueError(f"budget {total} exceeds the image's {full_capacity + sum(sub_capacities)} tokens")
        rest.append(total - min(round_half_up(config.alpha * total), full_capacity, total))
        capacities[i, : len(sub_capacities)] = torch.tensor(sub_capacities, dtype=torch.float64)
        row_weights, col_weights = subimage_region_weights(parts.layout)
        region_rows[i, : len(row_weights)], region_cols[i, : len(col_weights)] = row_weights, col_weights
    region_rows, region_cols = to_device(region_rows, device), to_device(region_cols, device)
    weights = torch.zeros(len(parts_of), width, dtype=torch.float64, device=device)
    for i, (parts, span) in enumerate(zip(parts_of, signals.spans)):
        grid_rows, grid_cols = parts.layout.grid
        region = (region_rows[i, :grid_rows], region_cols[i, :grid_cols])
        weights[i, : grid_rows * grid_cols] = subimage_content_scores(
            signals.initial_attention[span.start], parts.layout, region
        ).double()  # the float32 scores the one-picture split reads, as Python floats
    rest = to_device(torch.tensor(rest, dtype=torch.float64), device)
    sub = largest_remainder_batch(rest, weights, to_device(capacities, device)).long()  # (I, S)
    totals = to_device(torch.tensor(totals, dtype=torch.long), device)
    full = totals - sub.sum(dim=1)  # what the sub-images cannot hold returns to the full view
    table = torch.cat([full[:, None], sub], dim=1).flatten()
    index = torch.cat([i * (width + 1) + torch.arange(p.num_partitions) for i, p in enumerate(parts_of)])
    return table[to_device(index, device)]


def select_batch(signals: BatchSignals, config: HiREDConfig) -> BatchSelection:
    """Steps 1 and 2 for a whole batch on the device: each partition keeps its share of the tokens
    with the highest final-layer CLS attention (stable sort: ties to the lower index, as
    :func:`hired.selection.top_tokens`)."""
    budgets = partition_budgets_batch(signals, config)  # (P,)
    valid = to_device(torch.cat([p.valid for p in signals.parts]), budgets.device)  # (P, T)
    scores = signals.final_attention.float().masked_fill(~valid, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(scores.shape[1], device=scores.device)[None, :] < budgets[:, None]
    keep = torch.zeros_like(valid).scatter_(1, order, ranks)
    return BatchSelection(keep)
