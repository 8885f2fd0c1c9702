"""The ``hired`` command (``pip install`` puts it on PATH): one parser, a subcommand a job or tool.

    hired caption --input s3://bucket/shards/ --output s3://bucket/captions/ --model M
    hired vqa ...; hired score --benchmark pope PREDICTIONS -o SCORED; hired summary OUTPUT;
    hired report OUTPUT -o report.html; hired viz photo.jpg
    hired plan --model llava-hf/llava-v1.6-vicuna-13b-hf --gpu a10g --quantization 8bit

Each subcommand is a module here with ``add_arguments(parser, command)`` and ``run(args) -> int``.
Modules import what they run inside ``run``, so ``--help`` and refused settings answer in a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .base import HelpFormatter, describe

COMMANDS = {
    "caption": ("jobs", "caption every row of an input (the nightly job)"),
    "vqa": ("jobs", "answer and score the visual question of every row"),
    "score": ("score", "score predictions against a benchmark as lmms-eval does, without generating"),
    "summary": ("summary", "print the summary of a job's output"),
    "report": ("report", "write an HTML report of a job's output"),
    "viz": ("viz", "draw which visual tokens are kept of a picture"),
    "plan": ("plan", "whether a model fits a GPU, at which budget and batch, from its config"),
}


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hired", formatter_class=HelpFormatter)
    describe(parser, "Caption images and answer visual questions at dataset scale with LLaVA-Next and HiRED "
                     "visual-token dropping. 'hired COMMAND --help' explains each command.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in commands.items():
        sub = subcommands.add_parser(name, help=summary, formatter_class=HelpFormatter)
        sub.prog = f"hired {name}"
        importlib.import_module(f"{__name__}.{module}").add_arguments(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return importlib.import_module(f"{__name__}.{COMMANDS[args.command][0]}").run(args)


def script(command: str) -> int:
    """``jobs/<command>.py``, as ``ray job submit`` runs it: ``hired <command>`` with the script's arguments."""
    return main([command, *sys.argv[1:]])
