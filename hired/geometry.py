"""Where LLaVA-Next's visual tokens come from in the picture.

LLaVA-Next ("anyres") encodes two views of an image:

* the full view: the whole image squashed to one tile (336x336 for CLIP-L/336),
  giving a ``side x side`` token grid (24x24);
* the high-resolution view: the image resized with its aspect ratio kept to fit
  the best grid resolution (e.g. 672x672), padded to it (centred), and cut into
  ``rows x cols`` tiles, each encoded like the full view.

The LLM only sees the sub-image tokens that survive *unpadding*: the window of
the ``(rows*side) x (cols*side)`` token grid that covers the picture rather than
the padding. This module computes that window with transformers' own
``unpad_image`` (so our token counts match the stock model exactly) and maps
each sub-image to the region of the picture it shows, using the same resize and
padding arithmetic as the image processor. Both are needed by HiRED: the first
so that no kept token is a padding token, the second to score each sub-image
by the full-view tokens that lie in its region.

Coordinates are normalised to the picture: (0, 0) is its top-left corner and
(1, 1) its bottom-right, for both views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image


@dataclass(frozen=True)
class AnyresLayout:
    """The token layout of one image under LLaVA-Next's anyres preprocessing."""

    image_size: tuple[int, int]  # (height, width) of the original picture
    grid: tuple[int, int]  # (rows, cols) of high-resolution sub-images
    side: int  # tokens per tile side (24 for CLIP-L/14 at 336)
    window: tuple[int, int, int, int]  # (top, height, left, width) of the unpadded token window
    # Each sub-image's region of the picture, normalised, row-major: (y0, y1, x0, x1).
    regions: tuple[tuple[float, float, float, float], ...]

    @property
    def num_subimages(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def full_tokens(self) -> int:
        return self.side * self.side

    def valid_mask(self) -> torch.Tensor:
        """Which tokens of each sub-image survive unpadding: bool ``(rows*cols, side*side)``."""
        rows, cols = self.grid
        top, height, left, width = self.window
        grid = torch.zeros(rows * self.side, cols * self.side, dtype=torch.bool)
        grid[top : top + height, left : left + width] = True
        # (rows*side, cols*side) -> (rows, side, cols, side) -> (rows, cols, side, side)
        tiles = grid.view(rows, self.side, cols, self.side).permute(0, 2, 1, 3)
        return tiles.reshape(rows * cols, self.side * self.side)

    @property
    def sub_tokens(self) -> int:
        """Sub-image tokens the LLM sees (the unpadded window)."""
        return self.window[1] * self.window[3]

    @property
    def newline_tokens(self) -> int:
        """Stock LLaVA-Next appends one ``image_newline`` per row of the unpadded window."""
        return self.window[1]

    @property
    def grid_tokens(self) -> int:
        """N: the grid tokens the stock model feeds the LLM, newlines not counted."""
        return self.full_tokens + self.sub_tokens


def anyres_layout(
    image_size: tuple[int, int], grid_pinpoints: list[list[int]], tile_size: int, patch_size: int
) -> AnyresLayout:
    """The layout of an image of ``image_size = (height, width)`` pixels."""
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    best_h, best_w = select_best_resolution((height, width), grid_pinpoints)
    rows, cols = best_h // tile_size, best_w // tile_size
    side = tile_size // patch_size

    # The unpadded token window, computed by the model's own unpad_image on an index grid.
    token_ids = torch.arange(rows * side * cols * side).view(1, rows * side, cols * side)
    kept = unpad_image(token_ids, (height, width))
    win_h, win_w = kept.shape[1], kept.shape[2]
    if win_h and win_w:
        first = int(kept[0, 0, 0])
        top, left = divmod(first, cols * side)
    else:  # an extreme aspect ratio can leave no sub-image token at all
        top, left = (rows * side - win_h) // 2, (cols * side - win_w) // 2

    # The picture's place on the padded high-resolution canvas, as the image processor
    # puts it: aspect-preserving resize (ceil, capped), then centred padding.
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    pad_top, pad_left = (best_h - new_h) // 2, (best_w - new_w) // 2

    def span(start_px: int, pad: int, extent: int) -> tuple[float, float]:
        lo = (start_px - pad) / extent
        hi = (start_px + tile_size - pad) / extent
        return min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)

    regions = tuple(
        (*span(r * tile_size, pad_top, new_h), *span(c * tile_size, pad_left, new_w))
        for r in range(rows)
        for c in range(cols)
    )
    return AnyresLayout(
        image_size=(height, width),
        grid=(rows, cols),
        side=side,
        window=(top, win_h, left, win_w),
        regions=regions,
    )


def interval_overlap(side: int, spans: torch.Tensor) -> torch.Tensor:
    """Fraction of each of ``side`` equal cells of [0, 1] that lies in each span.

    ``spans`` is ``(n, 2)`` of ``[lo, hi]``; returns ``(n, side)``.
    """
    edges = torch.arange(side + 1, dtype=torch.float64) / side
    lo = torch.maximum(edges[:-1][None, :], spans[:, :1])
    hi = torch.minimum(edges[1:][None, :], spans[:, 1:])
    return (hi - lo).clamp(min=0) * side


def subimage_region_weights(layout: AnyresLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of each full-view token row (column) lies in each sub-image's region: float64
    ``(rows, side)`` and ``(cols, side)``. Regions of one grid row share their vertical span, of one
    column their horizontal span, so the weight of a token in a region is row weight x column weight."""
    regions = torch.tensor(layout.regions, dtype=torch.float64).view(*layout.grid, 4)
    return interval_overlap(layout.side, regions[:, 0, 0:2]), interval_overlap(layout.side, regions[0, :, 2:4])


def subimage_content_scores(
    full_view_attention: torch.Tensor, layout: AnyresLayout, weights: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Visual-content score of each sub-image (paper Eq. 1's numerator).

    ``full_view_attention`` is the CLS attention over the full view's tokens,
    ``(side*side,)`` in raster order. A sub-image's score is the attention of
    the full-view tokens lying in its region of the picture; a token straddling
    a region's edge counts in proportion to its area inside. Returns
    ``(rows*cols,)`` in row-major sub-image order, on the attention's device.
    ``weights``: :func:`subimage_region_weights` already on that device (a batch sends them at once).
    """
    side = layout.side
    row_weights, col_weights = weights if weights is not None else subimage_region_weights(layout)
    attention = full_view_attention.double().view(side, side)
    scores = row_weights @ attention @ col_weights.T  # (rows, cols)
    return scores.reshape(-1).float()
