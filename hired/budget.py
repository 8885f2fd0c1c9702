"""How many visual tokens each partition of an image may keep.

HiRED fixes the number of visual tokens an image sends to the LLM (the budget) and
splits it across the image's partitions: a share ``alpha`` for the full-image view,
the rest over the high-resolution sub-images in proportion to how much visual
content each holds (paper Eq. 1). Everything here is plain integer arithmetic so
that the totals are exact: the shares always sum to the budget.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence


def parse_budget(text: str) -> float | int:
    """The one reading of a budget as people write it: the jobs, ``hired.viz`` and
    :class:`HiREDConfig` all go through here, so a text means the same budget everywhere.

    * A fraction of each image's grid tokens is written with a decimal point or as a
      percentage: ``0.2``, ``.5``, ``1.0``, ``20%``; it must lie in (0, 1].
    * A token count is a whole number without a decimal point: ``640``; at least 2.
    * ``1`` is refused: read as a count it keeps a single token, read as a fraction it keeps
      all of them, and a silent guess either way wastes a night's run: write ``1.0`` (or ``100%``).
    """
    written = text.strip()
    try:
        if written.endswith("%"):
            value = float(written[:-1]) / 100
            kind = "fraction"
        elif written.lstrip("+").isdigit():
            value = int(written)
            kind = "count"
        else:
            value = float(written)
            kind = "fraction"
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"budget {text!r} is not a number: write a fraction such as 0.2 or 20%, or a token count such as 640"
        ) from None
    if kind == "count":
        if value == 1:
            raise ValueError("budget '1' is ambiguous: write 1.0 (or 100%) to keep every token, or a count of at least 2")
        if value < 1:
            raise ValueError(f"budget {text!r} keeps no token: a token count must be at least 2")
        return value
    if value <= 0:
        raise ValueError(f"budget {text!r} keeps no token: a budget must be positive (e.g. 0.2, 20% or 640)")
    if value > 1.0:
        hint = " (a token count is written without a decimal point, e.g. 640)" if "%" not in written else ""
        raise ValueError(f"budget {text!r} is out of range: a fraction must lie in (0, 1]{hint}")
    if written.endswith("%"):
        return float(Fraction(written[:-1]) / 100)  # "29%" is exactly 0.29, not 0.29000000000000004
    return value


def budget_kind(budget: float | int) -> tuple[float | None, int | None]:
    """``(fraction, None)`` or ``(None, token count)``: the two meanings of a budget, kept apart."""
    if isinstance(budget, int) and not isinstance(budget, bool):
        return None, budget
    return float(budget), None


def describe_budget(budget: float | int) -> str:
    """``20%`` or ``640 tokens``, for names and messages."""
    fraction, count = budget_kind(budget)
    return f"{count} tokens" if count is not None else f"{100 * fraction:g}%"


def token_budget(budget: float | int, num_tokens: int) -> int:
    """The number of grid tokens to keep out of ``num_tokens``.

    A float in (0, 1] is a fraction of the tokens, floored; an int is a token
    count (the literature's fixed budgets, e.g. 640 of 2,880), capped at
    ``num_tokens``. The fraction is read as the decimal the user wrote, so
    ``0.29 * 100`` keeps 29 tokens rather than the binary ``28.999...``.
    """
    if isinstance(budget, bool):
        raise TypeError("budget must be a fraction in (0, 1] or a positive token count, not a bool")
    if isinstance(budget, int):
        return min(budget, num_tokens)
    return math.floor(Fraction(repr(float(budget))) * num_tokens)


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves upwards (Python's round() goes to even)."""
    return math.floor(x + 0.5)


def largest_remainder(total: int, weights: Sequence[float], capacities: Sequence[int]) -> list[int]:
    """Split ``total`` items in proportion to ``weights``, no share above its capacity.

    Shares that would exceed their capacity are capped and the overflow is split
    among the others, again in proportion to their weights; the integer parts are
    then topped up by largest fractional remainder (ties go to the lower index).
    Parts with zero weight get nothing unless every remaining part has zero
    weight, in which case the rest goes in proportion to capacity. Returns fewer
    than ``total`` in sum only when the capacities themselves add up to less.
    """
    if len(weights) != len(capacities):
        raise ValueError("weights and capacities must have the same length")
    if any(w < 0 for w in weights) or any(c < 0 for c in capacities):
        raise ValueError("weights and capacities must be non-negative")
    shares = [0] * len(weights)
    open_parts = [i for i, c in enumerate(capacities) if c > 0]
    remaining = min(total, sum(capacities))
    while remaining > 0 and open_parts:
        weight_of = {i: float(weights[i]) for i in open_parts}
        if sum(weight_of.values()) <= 0:
            weight_of = {i: float(capacities[i]) for i in open_parts}
        weight_sum = sum(weight_of.values())
        quotas = {i: remaining * weight_of[i] / weight_sum for i in open_parts}
        saturated = [i for i in open_parts if quotas[i] >= capacities[i]]
        if saturated:
            # Cap these and hand their overflow to the others on the next pass.
            for i in saturated:
                shares[i] = capacities[i]
                remaining -= capacities[i]
            open_parts = [i for i in open_parts if i not in saturated]
            continue
        floors = {i: math.floor(quotas[i]) for i in open_parts}
        for i in open_parts:
            shares[i] = floors[i]
        leftover = remaining - sum(floors.values())
        # quota < capacity, so floor(quota) + 1 <= capacity: the top-up never overflows.
        by_remainder = sorted(open_parts, key=lambda i: (-(quotas[i] - floors[i]), i))
        for i in by_remainder[:leftover]:
            shares[i] += 1
        remaining = 0
    return shares


def split_budget(
    total: int,
    alpha: float,
    full_capacity: int,
    sub_scores: Sequence[float],
    sub_capacities: Sequence[int],
) -> tuple[int, list[int]]:
    """Split an image's budget between its full view and its sub-images (paper Eq. 1).

    The full view gets ``round(alpha * total)`` tokens, capped at its size; the
    rest goes to the sub-images by :func:`largest_remainder` on their content
    scores, capped at their valid (unpadded) token counts. Whatever the
    sub-images cannot hold returns to the full view, and whatever the full view
    cannot hold goes to the sub-images, so the shares always sum to ``total``.
    """
    if total > full_capacity + sum(sub_capacities):
        raise ValueError(f"budget {total} exceeds the image's {full_capacity + sum(sub_capacities)} tokens")
    full_share = min(round_half_up(alpha * total), full_capacity, total)
    sub_shares = largest_remainder(total - full_share, sub_scores, sub_capacities)
    # Sub-images too small (or all padding) to take their share: give it back.
    full_share = total - sum(sub_shares)
    return full_share, sub_shares
