"""Which tokens a partition keeps, given its share of the budget."""

from __future__ import annotations

import math

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


def even_positions(count: int, length: int) -> torch.Tensor:
    """``count`` distinct positions in ``range(length)``, one at the centre of each of
    ``count`` equal cells: ``floor((2i + 1) * length / (2 * count))``.

    Exact integer arithmetic, so the pattern is regular (24 cells, 12 picks: 1, 3, ..., 23).
    Consecutive centres are ``length / count >= 1`` apart, so the floors are distinct.
    """
    if not 0 <= count <= length:
        raise ValueError(f"cannot place {count} positions in {length}")
    return (2 * torch.arange(count) + 1) * length // (2 * count) if count else torch.zeros(0, dtype=torch.long)


def _bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, height, left, width) of the True cells of a 2-D bool mask (non-empty)."""
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    return top, int(rows[-1]) - top + 1, left, int(cols[-1]) - left + 1


def spread_tokens(valid: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of ``k`` tokens spread evenly in 2-D over the valid tokens, in spatial order.

    ``valid``: bool ``(T,)`` over a square ``side x side`` token grid in raster
    order. Evenly spaced in raster order would not do: with a stride that divides
    the row length it picks whole columns and no others (every 4th of a 24-wide
    grid is columns 0, 4, ..., 20 in every row). Instead the picks form a 2-D
    lattice over the valid tokens' bounding rectangle (for LLaVA the valid
    tokens of a partition always form a rectangle): ``r`` evenly spaced rows,
    ``r`` chosen so that rows and columns are about equally spaced, and ``k``
    shared out over them as evenly as possible (Bresenham), each row's picks
    evenly spaced across it. A fully valid 24x24 partition with ``k = 144``
    gets rows and columns 1, 3, ..., 23.

    ``exclude``: optional bool ``(T,)`` of tokens not to pick (PruMerge+ has
    already taken them). A lattice point that falls on one (or, for a
    non-rectangular mask, outside the valid tokens) moves to the nearest free
    valid token, ties to the lower index, so the result is still exactly ``k``
    distinct valid tokens and deterministic.
    """
    num_tokens = valid.numel()
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"spread_tokens needs a square token grid, got {num_tokens} tokens")
    free = valid.clone() if exclude is None else valid & ~exclude
    if k > int(free.sum()):
        raise ValueError(f"cannot keep {k} tokens of a partition with {int(free.sum())} free valid tokens")
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    top, height, left, width = _bounding_box(valid.view(side, side))
    # Rows about as far apart as the picks within a row: r / height ~ (k / r) / width.
    num_rows = math.floor(math.sqrt(k * height / width) + 0.5)
    num_rows = min(max(num_rows, -(-k // width), 1), height, k)  # at least ceil(k / width): no row over-full
    rows = top + even_positions(num_rows, height)
    shares = [(i + 1) * k // num_rows - i * k // num_rows for i in range(num_rows)]
    picks = torch.cat([row * side + left + even_positions(n, width) for row, n in zip(rows.tolist(), shares)])

    taken = torch.zeros(num_tokens, dtype=torch.bool)
    taken[picks[free[picks]]] = True
    misplaced = picks[~free[picks]]
    if len(misplaced):
        ys, xs = torch.arange(num_tokens) // side, torch.arange(num_tokens) % side
        for token in misplaced.tolist():
            distance = ((ys - token // side) ** 2 + (xs - token % side) ** 2).float()
            distance[~free | taken] = float("inf")
            taken[int(torch.argmin(distance))] = True  # argmin returns the first (lowest-index) minimum
    return taken.nonzero().flatten()


def random_tokens(valid: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``k`` valid tokens drawn uniformly at random without replacement, in spatial order."""
    candidates = valid.nonzero().flatten()
    if k > len(candidates):
        raise ValueError(f"cannot keep {k} tokens of a partition with {len(candidates)} valid tokens")
    draw = torch.randperm(len(candidates), generator=generator)[:k]
    return candidates[draw].sort().values
