"""HiRED's budget split (``hired.budget.split_budget``) for a batch of pictures at once, on the device.

The same arithmetic in the same order, in float64, so the shares are bit for bit those of the
one-picture version: the capping loop of :func:`hired.budget.largest_remainder` runs a fixed
``S + 1`` times (each pass caps at least one sub-image or settles the picture), sums run column by
column as Python's ``sum`` does, and remainder ties go to the lower index. Nothing waits for the
host: what the host knows (budgets, capacities, the full view's share) goes in as plain numbers.
"""

from __future__ import annotations

import torch


def _ordered_sum(values: torch.Tensor) -> torch.Tensor:
    """Row sums of ``(I, S)`` added left to right, as Python's ``sum`` adds a list."""
    total = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    for j in range(values.shape[1]):
        total = total + values[:, j]
    return total


def largest_remainder_batch(totals: torch.Tensor, weights: torch.Tensor, capacities: torch.Tensor) -> torch.Tensor:
    """:func:`hired.budget.largest_remainder` for every row: ``(I,)`` totals, ``(I, S)`` float64 weights
    and capacities (zero capacity for padding columns) -> ``(I, S)`` integer shares as float64."""
    rows, width = weights.shape
    capacities = capacities.to(torch.float64)
    shares = torch.zeros_like(weights)
    open_ = capacities > 0
    remaining = torch.minimum(totals.to(torch.float64), capacities.sum(dim=1))
    active = (remaining > 0) & open_.any(dim=1)
    columns = torch.arange(width, device=weights.device)
    for _ in range(width + 1):
        weight = torch.where(open_, weights, 0.0)
        weight_sum = _ordered_sum(weight)
        by_capacity = weight_sum <= 0  # no content anywhere left: split by capacity
        weight = torch.where(by_capacity[:, None], torch.where(open_, capacities, 0.0), weight)
        weight_sum = torch.where(by_capacity, _ordered_sum(weight), weight_sum)
        quotas = remaining[:, None] * weight / torch.where(weight_sum > 0, weight_sum, 1.0)[:, None]
        saturated = open_ & (quotas >= capacities) & active[:, None]
        capping = saturated.any(dim=1)
        shares = torch.where(saturated, capacities, shares)
        remaining = remaining - torch.where(saturated, capacities, 0.0).sum(dim=1)
        open_ = open_ & ~saturated
        settling = active & ~capping
        floors = torch.floor(quotas)
        leftover = remaining - torch.where(open_, floors, 0.0).sum(dim=1)
        rest = quotas - floors
        # rank of each open column by remainder, larger first, ties to the lower index
        ahead = (rest[:, None, :] > rest[:, :, None]) | ((rest[:, None, :] == rest[:, :, None]) & (columns[None, None, :] < columns[None, :, None]))
        rank = (ahead & open_[:, None, :]).sum(dim=2)
        topped = floors + (rank < leftover[:, None]).to(floors.dtype)
        shares = torch.where(settling[:, None] & open_, topped, shares)
        active = active & capping & (remaining > 0) & open_.any(dim=1)
    return shares
