"""LLaVA-Next's anyres geometry: token counts against the real processor, regions
against the pixels the image processor actually puts in each sub-image."""

import numpy as np
import pytest
import torch
from PIL import Image

from hired.geometry import anyres_layout, interval_overlap, subimage_content_scores
from hired.tiny import LLAVA_NEXT_PINPOINTS

from .conftest import noise_image

SIZES = [
    (672, 672), (336, 336), (480, 640), (640, 480), (300, 900), (900, 300), (1000, 200), (200, 1000),
    (1, 1), (10, 10), (1, 4000), (4000, 1), (37, 1911), (1333, 777), (2000, 3000), (336, 1008), (512, 513),
]


def layout(h, w):
    return anyres_layout((h, w), LLAVA_NEXT_PINPOINTS, tile_size=336, patch_size=14)


@pytest.mark.parametrize("size", SIZES)
def test_token_count_matches_the_stock_processor(tiny_next, size):
    model, processor = tiny_next
    inputs = processor(images=noise_image(*size), text="<image>", return_tensors="pt")
    stock_placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    lay = layout(*size)
    assert lay.grid_tokens + lay.newline_tokens == stock_placeholders
    assert inputs["pixel_values"].shape[1] == 1 + lay.num_subimages
    assert int(lay.valid_mask().sum()) == lay.sub_tokens


def test_extreme_aspect_ratios_keep_no_subimage_token():
    wide = layout(1, 4000)
    assert wide.sub_tokens == 0 and wide.grid_tokens == 576 and wide.newline_tokens == 0
    tall = layout(4000, 1)
    assert tall.sub_tokens == 0 and tall.newline_tokens == 24  # stock feeds 24 newline tokens, no content


def test_square_image_regions_are_quarters():
    lay = layout(672, 672)
    assert lay.grid == (2, 2)
    assert lay.regions == ((0, 0.5, 0, 0.5), (0, 0.5, 0.5, 1), (0.5, 1, 0, 0.5), (0.5, 1, 0.5, 1))


def _position_image(height, width):
    """R = x position, G = y position (0..255 across the picture), B = 255 marks picture pixels."""
    xs = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    ys = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([xs, ys, np.full((height, width), 255.0)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


@pytest.mark.parametrize("size", [(480, 640), (300, 900), (1000, 200), (1333, 777), (700, 1500)])
def test_regions_match_the_pixels_in_each_subimage(tiny_next, size):
    """Read each sub-image's picture region off the image processor's own crops."""
    _, processor = tiny_next
    ip = processor.image_processor
    out = ip(_position_image(*size), return_tensors="pt", do_normalize=False)
    crops = out["pixel_values"][0, 1:]  # (S, 3, 336, 336), rescaled to [0, 1]
    lay = layout(*size)
    tolerance = 3 / 255 + 1 / 336  # 8-bit gradient steps plus one resampled pixel
    for crop, (y0, y1, x0, x1) in zip(crops, lay.regions):
        inside = crop[2] > 0.5  # padding is black
        if not inside.any():
            assert y1 - y0 == 0 or x1 - x0 == 0
            continue
        xs, ys = crop[0][inside], crop[1][inside]
        assert abs(float(xs.min()) - x0) < tolerance and abs(float(xs.max()) - x1) < tolerance
        assert abs(float(ys.min()) - y0) < tolerance and abs(float(ys.max()) - y1) < tolerance


def test_interval_overlap():
    spans = torch.tensor([[0.0, 0.5], [0.25, 0.375], [0.9, 1.0]], dtype=torch.float64)
    weights = interval_overlap(4, spans)
    assert torch.allclose(weights, torch.tensor([[1, 1, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0.4]], dtype=torch.float64))


def test_content_scores_sum_the_attention_inside_each_region():
    lay = layout(672, 672)  # 2x2 grid, quarters
    attention = torch.zeros(24, 24)
    attention[0, 0] = 1.0  # top-left quarter
    attention[23, 23] = 2.0  # bottom-right quarter
    attention[5, 20] = 0.5  # top-right quarter
    assert subimage_content_scores(attention.flatten(), lay).tolist() == [1.0, 0.5, 0.0, 2.0]


def test_content_scores_split_a_straddling_token_by_area():
    # 700x1500 goes to a 1x3 grid (1008x336 canvas); the picture is resized to 720 px wide and
    # centred (144 px padding), so the first sub-image shows x in [0, 192/720] = [0, 4/15].
    lay = layout(700, 1500)
    assert lay.grid == (1, 3)
    assert lay.regions[0][2:] == pytest.approx((0.0, 4 / 15))
    assert lay.regions[1][2:] == pytest.approx((4 / 15, 11 / 15))
    # Full-view column 6 spans x in [6/24, 7/24]: 0.4 of it lies left of 4/15, 0.6 right of it.
    attention = torch.zeros(24, 24)
    attention[:, 6] = 1.0
    assert subimage_content_scores(attention.flatten(), lay).tolist() == pytest.approx([24 * 0.4, 24 * 0.6, 0.0])
