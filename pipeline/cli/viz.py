"""``hired viz IMAGE``: draw which visual tokens a strategy keeps of one picture (hired.viz)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import hired
from hired.config import NEWLINE_MODES

from .base import argument_type, describe, refuse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    describe(parser, 
        "Draw which visual tokens a strategy keeps of one image: the full view and every high-resolution "
        "sub-image as the model sees them, kept tokens outlined in red, padding tokens (dropped by the stock "
        "model too) shaded grey, each panel titled with its share of the budget.")
    parser.add_argument("image", metavar="IMAGE", help="the picture to draw (any format PIL reads)")
    parser.add_argument("--model", default=None, help=(
        "a LLaVA-Next or LLaVA-1.5 checkpoint: a local folder or a hub id, e.g. "
        "llava-hf/llava-v1.6-vicuna-7b-hf (default: the demo's tiny random-weight model, built locally)"))
    parser.add_argument("--budget", type=argument_type(hired.parse_budget), default=0.2, help=(
        "tokens to keep: a fraction with a decimal point or a percentage (0.2 or 20%%; 1.0 = all) or a whole "
        "token count (640) (default: 0.2)"))
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="HiRED only: the share of the budget for the full view (default: 0.5)")
    parser.add_argument("--strategy", choices=hired.strategies.NAMES, default="hired",
                        help="how tokens are chosen (default: hired)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of --strategy random (default: 0)")
    parser.add_argument("--newlines", choices=NEWLINE_MODES, default="none", help=(
        "image_newline tokens sent to the LLM; they are not drawn, only counted in the figure's title "
        "(default: none)"))
    parser.add_argument("--quantization", choices=hired.QUANTIZATIONS, default=None, help=(
        "load the model's linear layers in 8 or 4 bits (bitsandbytes), for a model too large for the card "
        "(default: full precision)"))
    parser.add_argument("--device", default=None,
                        help="where to run the vision tower, e.g. cpu or cuda (default: cuda if available, else cpu)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="the PNG to write (default: IMAGE's name with _<strategy>_kept.png, in the current folder)")


def run(args: argparse.Namespace, environ=os.environ) -> int:
    from PIL import Image

    try:
        config = hired.HiREDConfig(budget=args.budget, alpha=args.alpha, strategy=args.strategy, seed=args.seed,
                                   newlines=args.newlines)
    except ValueError as error:
        return refuse(error)
    # The picture first: a typo should not cost a model load.
    try:
        with Image.open(args.image) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as error:  # missing, a folder, not an image, truncated
        return refuse(f"cannot read image {args.image!r}: {error}")
    output = args.output or Path(f"{Path(args.image).stem}_{args.strategy.replace('+', 'plus')}_kept.png")
    model_name = args.model
    if model_name is None:
        from ..demo import demo_model
        from .jobs import DEMO_ROOT

        model_name = demo_model(DEMO_ROOT)
        print(f"no --model given: using the demo's tiny random-weight model at {model_name} "
              "(its choices are random; pass --model for a real checkpoint)")
    else:
        from ..errors import InputError
        from ..model_check import check_model

        try:
            check_model(model_name)  # a missing folder or an unknown hub id: one line, no download attempts
        except InputError as error:
            return refuse(error)

    import torch
    import transformers

    from hired.viz import render_prepared

    transformers.utils.logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if device == "cpu" and args.quantization != "8bit" else torch.float16
    try:
        model, processor = hired.load_model(model_name, device, dtype, args.quantization)
    except (OSError, ValueError, ImportError) as error:
        return refuse(f"cannot load model {model_name!r}: {error}")
    image_token = getattr(processor, "image_token", "<image>")
    inputs = processor(images=[image], text=[image_token], return_tensors="pt")
    try:
        prepared = hired.prepare_inputs(model, inputs, config)
    except (TypeError, ValueError) as error:  # an unsupported model, a layer out of range
        return refuse(error)
    kept, full, llm = prepared.visual_tokens_kept[0], prepared.visual_tokens_full[0], prepared.visual_tokens_llm[0]
    title = (f"{Path(args.image).name}: {config.strategy}, budget {hired.describe_budget(args.budget)}: keeps {kept} "
             f"of {full} grid tokens ({kept / full:.1%}); the LLM sees {llm} visual tokens")
    figure = render_prepared(prepared, inputs, processor, 0, title)
    try:
        figure.save(output, format="PNG")
    except OSError as error:
        return refuse(f"cannot write {str(output)!r}: {error}")
    print(f"wrote {output} ({figure.width}x{figure.height}): {title}")
    return 0
