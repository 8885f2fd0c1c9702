"""Draw which visual tokens a strategy keeps, like the HiRED paper's figure.

One panel per partition, exactly as the vision tower saw it: the full view (the
picture squashed to one tile) and each high-resolution sub-image crop as the
image processor produced it, de-normalised. Kept tokens are outlined, tokens
the stock model drops as padding are shaded, and each panel's title gives its
share of the budget. Sub-image panels sit in their grid arrangement to the
right of the full view.

    hired viz photo.jpg --budget 0.2 --model llava-hf/llava-v1.6-vicuna-7b-hf -o kept.png

Drawn with PIL (a dependency already), so the figure's pixel layout is exact
and known in advance: :func:`panel_boxes` says where each panel lands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .models import Partitions

KEPT_COLOR = (255, 32, 32)  # outline of a kept token
OUTLINE_WIDTH = 2
PADDING_COLOR = np.array([128, 128, 128], dtype=np.float64)
PADDING_ALPHA = 0.65  # how much of a padding token's pixels the shade replaces
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
MARGIN = 12  # around the figure and between sub-image panels
GAP = 28  # between the full view and the sub-image grid
TITLE = 22  # height of a panel's title line
HEADER = 30  # height of the figure's title line
FONT_SIZE = 14


def denormalize(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(3, H, W)`` normalised pixels back to an ``(H, W, 3)`` uint8 picture."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    picture = pixel_values.detach().float().cpu() * std_t + mean_t  # the processor's [0, 1] picture
    return (picture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def panel_boxes(num_partitions: int, grid: tuple[int, int] | None, tile: int) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of each partition's picture in the figure (right/bottom exclusive).

    The full view first, then sub-images row-major, placed in their ``(rows, cols)`` grid.
    """
    boxes = [(MARGIN, HEADER + TITLE, MARGIN + tile, HEADER + TITLE + tile)]
    if num_partitions > 1:
        rows, cols = grid
        if rows * cols != num_partitions - 1:
            raise ValueError(f"a {rows}x{cols} grid does not hold {num_partitions - 1} sub-images")
        left0 = MARGIN + tile + GAP
        for r in range(rows):
            for c in range(cols):
                left = left0 + c * (tile + MARGIN)
                top = HEADER + TITLE + r * (tile + TITLE + MARGIN)
                boxes.append((left, top, left + tile, top + tile))
    return boxes


def figure_size(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    """(width, height) of the figure holding ``boxes``."""
    return max(b[2] for b in boxes) + MARGIN, max(b[3] for b in boxes) + MARGIN


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap font, of one size
        return ImageFont.load_default()


def draw_partition(picture: np.ndarray, valid: torch.Tensor, kept: torch.Tensor) -> Image.Image:
    """One panel: ``picture`` ``(H, W, 3)`` with padding tokens shaded and kept tokens outlined.

    ``valid``: bool ``(T,)`` over a square token grid; ``kept``: token indices.
    """
    side = math.isqrt(valid.numel())
    patch = picture.shape[0] // side
    padding = (~valid).view(side, side).numpy()
    shade = np.kron(padding, np.ones((patch, patch), dtype=bool))[..., None]
    shaded = np.where(shade, picture * (1 - PADDING_ALPHA) + PADDING_COLOR * PADDING_ALPHA, picture)
    panel = Image.fromarray(shaded.round().astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for token in kept.tolist():
        y, x = divmod(token, side)
        box = (x * patch, y * patch, (x + 1) * patch - 1, (y + 1) * patch - 1)
        draw.rectangle(box, outline=KEPT_COLOR, width=OUTLINE_WIDTH)
    return panel


def panel_titles(parts: Partitions, kept: Sequence[torch.Tensor]) -> list[str]:
    """Each panel's title: its share of the budget, out of the tokens the stock model uses there."""
    capacities = parts.capacities
    if parts.layout is None:
        return [f"image: keeps {len(kept[0])} of {capacities[0]}"]
    cols = parts.layout.grid[1]
    titles = [f"full view: keeps {len(kept[0])} of {capacities[0]}"]
    for p in range(1, parts.num_partitions):
        r, c = divmod(p - 1, cols)
        titles.append(f"sub-image {r + 1},{c + 1}: keeps {len(kept[p])} of {capacities[p]}")
    return titles


def render(
    pixel_values: torch.Tensor,
    parts: Partitions,
    kept: Sequence[torch.Tensor],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    title: str = "",
) -> Image.Image:
    """The figure for one image.

    ``pixel_values``: the image's ``(P, 3, H, W)`` processor output (full view
    first); ``parts``: its partitions (geometry and padding); ``kept``: kept token
    indices per partition (e.g. ``prepared.kept_indices[i]``); ``image_mean`` and
    ``image_std``: the image processor's normalisation, to undo it.
    """
    if len(pixel_values) != parts.num_partitions or len(kept) != parts.num_partitions:
        raise ValueError(
            f"got {len(pixel_values)} partitions of pixels and {len(kept)} of kept tokens "
            f"for an image with {parts.num_partitions} partitions"
        )
    tile = pixel_values.shape[-1]
    grid = parts.layout.grid if parts.layout is not None else None
    boxes = panel_boxes(parts.num_partitions, grid, tile)
    figure = Image.new("RGB", figure_size(boxes), BACKGROUND)
    draw, font = ImageDraw.Draw(figure), _font()
    if title:
        draw.text((MARGIN, (HEADER - FONT_SIZE) // 2), title, fill=TEXT_COLOR, font=font)
    for p, (box, caption) in enumerate(zip(boxes, panel_titles(parts, kept))):
        picture = denormalize(pixel_values[p], image_mean, image_std)
        figure.paste(draw_partition(picture, parts.valid[p], kept[p]), box[:2])
        draw.text((box[0], box[1] - TITLE + (TITLE - FONT_SIZE) // 2), caption, fill=TEXT_COLOR, font=font)
    return figure


def render_prepared(prepared, inputs, processor, item: int = 0, title: str = "") -> Image.Image:
    """The figure for item ``item`` of a batch: ``inputs`` from the processor, ``prepared`` from
    :func:`hired.prepare_inputs` on them."""
    from .prepare import _pixel_values_per_image

    parts = prepared.partitions[item]
    pixels = _pixel_values_per_image(inputs, [p.num_partitions for p in prepared.partitions])[item]
    ip = processor.image_processor
    return render(pixels, parts, prepared.kept_indices[item], ip.image_mean, ip.image_std, title)
