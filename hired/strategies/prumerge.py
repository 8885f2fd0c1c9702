"""PruMerge+ (Shang et al. 2024, "LLaVA-PruMerge", arXiv 2403.15388) at a fixed budget.

PruMerge keeps the visual tokens whose CLS attention is an outlier (by the
interquartile range) and merges every other token into the kept token whose key
is most similar, weighting by CLS attention, so that the information of dropped
tokens is not simply thrown away. PruMerge+ adds spatially uniform samples to
the outliers so that regions without salient tokens are still covered.

Both decide the number of kept tokens from the image (the outlier count); here
the count is the partition's share of a fixed budget instead, so PruMerge+ can
be compared with HiRED at exactly the same cost:

* more outliers than the share: the share's worth with the highest attention;
* otherwise every outlier, the rest of the share spread evenly over the other
  valid tokens (:func:`hired.selection.spread_tokens`).

Padding tokens (those the stock model throws away when unpadding) take part in
nothing: not in the quartiles, not as kept tokens, not as merged tokens. The
original ran on padded crops; here they are not content the LLM would have seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import HiREDConfig
from ..models import Partitions
from ..selection import spread_tokens, top_tokens
from .base import ImageSignals, Selection, proportional_budgets

IQR_FACTOR = 1.5  # Tukey's fences, as PruMerge uses


def iqr_outliers(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Bool ``(T,)``: the valid tokens scoring above ``Q3 + 1.5 * IQR`` of the valid tokens' scores.

    Quartiles by linear interpolation (numpy's default), in float64.
    """
    values = scores[valid].double()
    if values.numel() == 0:
        return torch.zeros_like(valid)
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    return valid & (scores.double() > q3 + IQR_FACTOR * (q3 - q1))


def prumerge_plus_tokens(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` tokens PruMerge+ keeps of one partition, in spatial order.

    ``scores``: ``(T,)`` final-layer CLS attention; ``valid``: bool ``(T,)``.
    """
    outliers = iqr_outliers(scores, valid)
    if int(outliers.sum()) >= k:
        return top_tokens(scores, k, outliers)
    fill = spread_tokens(valid, k - int(outliers.sum()), exclude=outliers)
    return torch.cat([outliers.nonzero().flatten(), fill]).sort().values


def merge_dropped(
    features: torch.Tensor,
    keys: torch.Tensor,
    weights: torch.Tensor,
    kept: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """PruMerge's merge for one partition: the kept tokens' new features, ``(k, D)``.

    ``features``: ``(T, D)``; ``keys``: ``(T, D_k)`` of the layer whose CLS
    attention chose the tokens; ``weights``: ``(T,)`` that CLS attention;
    ``kept``: ``(k,)`` indices; ``valid``: bool ``(T,)``. Each valid dropped token
    joins the kept token with the highest cosine similarity of keys (ties to the
    lower index); each kept token becomes the weighted average of itself and the
    tokens that joined it, weights the CLS attention. Computed in float32 on the
    features' device, returned in their dtype. A kept token nobody joined keeps
    its feature exactly.
    """
    device = features.device
    kept = kept.to(device)
    dropped_mask = valid.to(device).clone()
    dropped_mask[kept] = False
    dropped = dropped_mask.nonzero().flatten()
    if len(kept) == 0 or len(dropped) == 0:
        return features[kept]
    weights = weights.to(device=device, dtype=torch.float32)
    # Keys, not features, decide similarity, as in PruMerge: they are what attention compares.
    similarity = F.normalize(keys[dropped].float(), dim=-1) @ F.normalize(keys[kept].float(), dim=-1).T
    owner = similarity.argmax(dim=1)  # (n_dropped,) position in ``kept``
    total = weights[kept, None] * features[kept].float()
    total.index_add_(0, owner, weights[dropped, None] * features[dropped].float())
    mass = weights[kept].clone()
    mass.index_add_(0, owner, weights[dropped])
    joined = torch.bincount(owner, minlength=len(kept)) > 0
    merged = total / mass.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    # w * x / w need not round back to x: a token nobody joined is copied, not recomputed. Attention
    # can also underflow to exactly 0, leaving nothing to weight by: such a token stays as it was too.
    merged = torch.where((joined & (mass > 0))[:, None], merged, features[kept].float())
    return merged.to(features.dtype)


def select(parts: Partitions, signals: ImageSignals, config: HiREDConfig) -> Selection:
    """Each partition's proportional share by PruMerge+, then the dropped tokens merged into the kept ones."""
    budgets = proportional_budgets(parts, config.tokens_to_keep(parts.grid_tokens))
    attention, valid = signals.final_attention, parts.valid
    partitions = range(parts.num_partitions)
    kept = [prumerge_plus_tokens(attention[p], valid[p], budgets[p]) for p in partitions]
    merged = [merge_dropped(signals.features[p], signals.final_keys[p], attention[p], kept[p], valid[p]) for p in partitions]
    return Selection(kept, merged)
