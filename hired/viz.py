"""Draw which visual tokens a strategy keeps, like the HiRED paper's figure.

One panel per partition, exactly as the vision tower saw it: the full view (the
picture squashed to one tile) and each high-resolution sub-image crop as the
image processor produced it, de-normalised. Kept tokens are outlined, tokens
the stock model drops as padding are shaded, and each panel's title gives its
share of the budget. Sub-image panels sit in their grid arrangement to the
right of the full view.

    python -m hired.viz photo.jpg --budget 0.2 --model llava-hf/llava-v1.6-vicuna-7b-hf -o kept.png

Drawn with PIL (a dependency already), so the figure's pixel layout is exact
and known in advance: :func:`panel_boxes` says where each panel lands.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

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
DEFAULT_MODEL = "llava-hf/llava-v1.6-vicuna-7b-hf"


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


# The command line.


def budget_argument(text: str) -> float | int:
    """``--budget``, read by :func:`hired.parse_budget` as the jobs read it."""
    from .budget import parse_budget

    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from .config import NEWLINE_MODES
    from .strategies import NAMES as STRATEGIES

    parser = argparse.ArgumentParser(
        prog="python -m hired.viz",
        description="Draw which visual tokens a strategy keeps of one image: the full view and every "
        "high-resolution sub-image as the model sees them, kept tokens outlined in red, padding tokens "
        "(dropped by the stock model too) shaded grey, each panel titled with its share of the budget.",
    )
    parser.add_argument("image", metavar="IMAGE", help="the picture to draw (any format PIL reads)")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a LLaVA-Next or LLaVA-1.5 checkpoint: a local path or a hub id (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--budget",
        type=budget_argument,
        default=0.2,
        help="tokens to keep: a fraction with a decimal point or a percentage (0.2 or 20%%; 1.0 = all) "
        "or a whole token count (640) (default: 0.2)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="HiRED only: the share of the budget for the full view (default: 0.5)",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="hired", help="how tokens are chosen (default: hired)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --strategy random (default: 0)")
    parser.add_argument(
        "--newlines",
        choices=NEWLINE_MODES,
        default="none",
        help="image_newline tokens sent to the LLM; they are not drawn, only counted in the figure's "
        "title (default: none)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where to run the vision tower, e.g. cpu or cuda (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="the PNG to write (default: IMAGE's name with _<strategy>_kept.png, in the current folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from .config import HiREDConfig

    try:
        config = HiREDConfig(
            budget=args.budget, alpha=args.alpha, strategy=args.strategy, seed=args.seed, newlines=args.newlines
        )
    except ValueError as error:
        parser.error(str(error))

    # The picture first: a typo should not cost a model load.
    try:
        with Image.open(args.image) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as error:  # missing, a folder, not an image, truncated
        parser.exit(2, f"{parser.prog}: error: cannot read image {args.image!r}: {error}\n")
    output = args.output or Path(f"{Path(args.image).stem}_{args.strategy.replace('+', 'plus')}_kept.png")

    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .prepare import prepare_inputs

    transformers.utils.logging.disable_progress_bar()
    model_path = Path(args.model).expanduser()
    if not model_path.exists() and (args.model.startswith(("/", ".", "~")) or args.model.count("/") > 1):
        # Looks like a path, not a hub id ("owner/name"): say so rather than let the hub client complain.
        parser.exit(2, f"{parser.prog}: error: cannot load model {args.model!r}: no such folder\n")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" else torch.float16
    try:
        processor = AutoProcessor.from_pretrained(args.model)
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).to(device).eval()
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: cannot load model {args.model!r}: {error}\n")

    image_token = getattr(processor, "image_token", "<image>")
    inputs = processor(images=[image], text=[image_token], return_tensors="pt")
    try:
        prepared = prepare_inputs(model, inputs, config)
    except (TypeError, ValueError) as error:  # an unsupported model, a layer out of range
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    kept, full, llm = prepared.visual_tokens_kept[0], prepared.visual_tokens_full[0], prepared.visual_tokens_llm[0]
    title = (
        f"{Path(args.image).name}: {config.strategy}, budget {args.budget}: keeps {kept} of {full} "
        f"grid tokens ({kept / full:.1%}); the LLM sees {llm} visual tokens"
    )
    figure = render_prepared(prepared, inputs, processor, 0, title)
    try:
        figure.save(output, format="PNG")
    except OSError as error:
        parser.exit(2, f"{parser.prog}: error: cannot write {str(output)!r}: {error}\n")
    print(f"wrote {output} ({figure.width}x{figure.height}): {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
