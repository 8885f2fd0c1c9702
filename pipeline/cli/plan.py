"""``hired plan --model M --gpu CARD``: whether a model fits a card, at which budget and batch, from
its config alone (no weights, no network), before a night's run. ``hired caption --dry-run`` prints
the same after planning its input."""

from __future__ import annotations

import argparse
import os
import sys

from .base import argument_type, describe, refuse

EXIT_FITS, EXIT_DOES_NOT_FIT = 0, 1
CARD_NAMES = ("t4", "a10g", "l4", "a100-40", "a100-80", "h100")  # pipeline.memory.cards.CARDS, without importing torch

EPILOG = f"""exit status:
  {EXIT_FITS}  it fits (at every budget asked for, on the card or, without --gpu, on at least one)
  {EXIT_DOES_NOT_FIT}  it does not fit: the verdict says what would
  2  the model's config cannot be read, or a setting is wrong"""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    import hired

    from ..settings import at_least
    from .jobs import budget_list

    describe(parser, (
        "Whether a model fits a GPU, and with what batch: its weights per GPU, the batch with every visual token "
        "and at the budget for a typical picture (672x672, 60 text tokens, 128 new tokens), and a verdict: 'fits' "
        "with the batch, or 'does not fit' with what would make it fit. Reads only the model's config: a local "
        "folder, the hub cache, or one of the released llava-hf checkpoints known here (e.g. "
        "llava-v1.6-vicuna-13b-hf). The batch is the one the generation actor would choose on that card: the "
        "CUDA context and the sizer's margin are held back as it holds them."), EPILOG)
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="a local checkpoint folder, a hub id in the local cache, or a released llava-hf id")
    parser.add_argument("--gpu", choices=CARD_NAMES, default=None,
                        help="the card (default: one verdict line per card)")
    parser.add_argument("--budget", type=argument_type(budget_list), default=[0.2], help=(
        "visual tokens kept per image, as the jobs take it: 0.2, 20%%, 640, or a list such as 0.4,0.2 "
        "(default: 0.2)"))
    parser.add_argument("--quantization", choices=hired.QUANTIZATIONS, default=None,
                        help="linear layers in 8 or 4 bits (default: float16)")
    parser.add_argument("--gpus-per-model", type=argument_type(at_least(1)), default=1, metavar="N",
                        help="GPUs one model spreads over (default: 1)")
    parser.add_argument("--max-new-tokens", type=argument_type(at_least(1)), default=128, metavar="N",
                        help="most tokens generated per item (default: 128)")


def print_plans(name: str, config, cards, budgets, quantization, gpus: int, max_new_tokens: int,
                dtype: str = "float16", out=None) -> bool:
    """The full plan for one card, a verdict line per card for several; whether any fits."""
    from ..memory.cards import describe_plan, plan_on_card, verdict

    out = out or sys.stdout
    fits = []
    for card in cards:
        plan = plan_on_card(config, card, budgets, quantization, gpus, dtype, max_new_tokens)
        fits.append(plan.fits)
        if len(cards) == 1:
            print(describe_plan(name, plan), file=out)
            print(verdict(config, plan), file=out)
        else:
            print(f"{card.name:<8} {verdict(config, plan)}", file=out)
    return any(fits)


def run(args: argparse.Namespace, environ=os.environ) -> int:
    import hired

    try:
        budgets = [hired.HiREDConfig(budget=b) for b in args.budget]
    except ValueError as error:
        return refuse(error)

    from ..memory.cards import CARDS
    from ..memory.checkpoints import planning_config

    try:
        config, source = planning_config(args.model)
    except (OSError, ValueError) as error:
        return refuse(f"--model {error}")
    cards = [CARDS[args.gpu]] if args.gpu else list(CARDS.values())
    print(f"config: {source}")
    try:
        fits = print_plans(args.model, config, cards, budgets, args.quantization, args.gpus_per_model,
                           args.max_new_tokens)
    except ValueError as error:  # a model the memory model does not count, too few layers for the GPUs
        return refuse(error)
    return EXIT_FITS if fits else EXIT_DOES_NOT_FIT
