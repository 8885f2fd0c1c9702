"""``hired caption`` and ``hired vqa`` (also ``jobs/caption.py``, ``jobs/vqa.py`` under ``ray job
submit``): parse, build the settings once, check them before anything heavy starts, run, and exit
with a documented status."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import hired

from ..errors import EXIT_BAD_INPUT, EXIT_FAILED_SHARDS, EXIT_OK, EXIT_STOPPED, InputError, RunAborted, StorageUnavailable
from ..model_check import check_choices, check_model
from .base import add_knob_flags, argument_type, describe, environment_help, refuse, settings_from_args

DEMO_ROOT = Path("demo_output")  # under the working directory
STRATEGY_CHOICES = (*hired.strategies.NAMES, hired.strategies.STOCK)

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}  every shard written (unusable rows are error rows in the output, with their reason)
  {EXIT_BAD_INPUT}  the settings or the input cannot work (bad flag, model, schema, unwritable output);
     found before anything heavy starts: change the command
  {EXIT_FAILED_SHARDS}  done, but some shards failed (unreadable or incomplete); rerun to retry them
  {EXIT_STOPPED}  stopped part-way (storage unreachable, the cluster lost); complete shards are
     written: rerun the same command to finish"""

DESCRIPTIONS = {
    "caption": "Write a caption for every row of the input",
    "vqa": "Answer the visual question of every row of the input and score it against the reference answers "
           "(with --benchmark NAME, as lmms-eval scores that benchmark: its prompt, length, columns and metric)",
}


def budget_list(text: str) -> list[float | int]:
    """``--budget``: one budget or a comma-separated sweep, each read by :func:`hired.parse_budget`."""
    return [hired.parse_budget(part) for part in text.split(",") if part.strip()] or [hired.parse_budget(text)]


def strategy_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in STRATEGY_CHOICES:
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_CHOICES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    describe(parser, (
        f"{DESCRIPTIONS[task]}, with LLaVA-Next and HiRED visual-token dropping, to --output (one Parquet "
        "file per input shard, plus _summary.json). Reruns of the same command resume: complete shards are "
        "skipped. With no --input, runs the built-in demo (generated pictures, a tiny local model, a local "
        "Ray, output under ./demo_output)."), f"{EXIT_STATUSES}\n\n{environment_help(task)}")
    add_knob_flags(parser, task)
    drop = parser.add_argument_group(
        "HiRED token dropping (on by default at the paper's setting); several comma-separated strategies or "
        "budgets run a sweep: each setting into <output>/<strategy>-<budget>/, compared in <output>/sweep.md"
    )
    drop.add_argument("--budget", type=argument_type(budget_list), default=[0.2],
                      help="visual tokens kept per image: a fraction with a decimal point or a percentage "
                      "(0.2 or 20%%; 1.0 keeps all) or a whole token count (640); a list such as 0.1,0.2,0.4 "
                      "sweeps (default: 0.2)")
    drop.add_argument("--alpha", type=float, default=0.5,
                      help="share of the budget for the full-image view (default: 0.5)")
    drop.add_argument("--strategy", type=argument_type(strategy_list), default=["hired"],
                      help=f"how tokens are chosen: {', '.join(STRATEGY_CHOICES)} (none: every token, the stock "
                      "model); a list such as hired,uniform sweeps (default: hired)")
    drop.add_argument("--no-hired", action="store_true",
                      help="keep every visual token (the stock model), for comparison: the same as --strategy none")
    parser.add_argument("--dry-run", action="store_true", help=(
        "plan and stop: check the settings, list the input's shards (to do, complete, unreadable) and say whether "
        "the model fits the GPUs (those of --accelerator-type or --gpu-memory-gb, else every card `hired plan` "
        "knows), at each budget, from the model's config; loads no model and starts no Ray"))


def _demo(args: argparse.Namespace, task: str, log: logging.Logger) -> None:
    from ..demo import prepare_demo

    args.input, demo_model = prepare_demo(DEMO_ROOT)
    args.model = args.model or demo_model
    args.output = args.output or str((DEMO_ROOT / task).resolve())
    log.info("demo: %s -> %s with %s", args.input, args.output, args.model)


def _next_steps(output_uri: str, model: str) -> str:
    """What to try after the demo, with its real paths."""
    from ..demo import example_image

    picture = example_image(DEMO_ROOT)
    return "\n".join([
        "next:",
        f"  hired summary {output_uri}",
        f"  hired report {output_uri} -o {DEMO_ROOT / 'report.html'}",
        f"  hired viz {picture} --model {model} -o {DEMO_ROOT / 'kept.png'}",
        "  hired caption --input YOUR_SHARDS --output OUT --model llava-hf/llava-v1.6-vicuna-7b-hf",
    ])


def dry_run(settings, points) -> int:
    """``--dry-run``: the input's plan and the model's, printed; nothing loaded, nothing started."""
    from ..job.plan import plan
    from ..memory.cards import CARDS, capped_card, card_for_accelerator
    from ..memory.checkpoints import planning_config
    from .plan import print_plans

    planned = plan(settings, tidy=False)
    pending, done, failed = planned.pending, planned.done, planned.failed
    rows = planned.rows_to_generate
    print(f"input {settings.input}: {len(pending)} shards to do ({rows} rows), {len(done)} already complete in "
          f"{settings.output}, {len(failed)} unreadable")
    for shard in failed:
        print(f"  unreadable: {shard.uri}: {shard.reason}")
    try:
        config, source = planning_config(settings.model)
    except (OSError, ValueError) as error:
        raise InputError(f"--model {error}") from None
    card = card_for_accelerator(settings.accelerator_type)
    if settings.gpu_memory_gb:
        card = capped_card(settings.gpu_memory_gb)
    dtype = "float16" if settings.dtype == "auto" else settings.dtype
    print(f"model config: {source}")
    try:
        print_plans(settings.model, config, [card] if card else list(CARDS.values()), [p.config() for p in points],
                    settings.quantization, settings.gpus_per_model, settings.max_new_tokens, dtype)
    except ValueError as error:
        raise InputError(str(error)) from None
    return EXIT_OK


def run(args: argparse.Namespace, environ=os.environ) -> int:
    task = args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hired.pipeline")
    demo = args.input is None
    if demo:
        _demo(args, task, log)
    if not args.output or not args.model:
        return refuse("--output and --model are required with --input")

    from ..job.sweep import run_sweep, sweep_points, sweep_table, write_sweep
    from ..summary import format_summary

    try:
        points = sweep_points([hired.strategies.STOCK] if args.no_hired else args.strategy, args.budget, args.alpha)
    except ValueError as e:  # HiRED's own check of a setting
        return refuse(e)
    try:
        settings = settings_from_args(args, task, environ, config=points[0].config())
        check_model(settings.model)
        check_choices(settings)
        if args.dry_run:
            return dry_run(settings, points)
        from ..job.run import run_job

        if len(points) > 1:
            summaries = run_sweep(settings, points, run_job)
            where = write_sweep(settings.output, summaries)
            print(f"\n{task} sweep of {len(points)} settings done: output in {settings.output}")
            print(sweep_table(summaries))
            print(f"table: {where}")
            return EXIT_FAILED_SHARDS if any(s["failed_shards"] for s in summaries) else EXIT_OK
        summary = run_job(settings)
    except InputError as e:
        return refuse(e)
    except StorageUnavailable as e:
        print(f"error: {e}; nothing was written, rerun the same command once storage is back", file=sys.stderr)
        return EXIT_STOPPED
    except RunAborted as e:
        done = e.summary["shards"]["written_this_run"]
        print(f"error: the run stopped: {e}\n{done} shard(s) were completed and written; rerun the same command "
              "to finish the rest (complete shards are skipped)", file=sys.stderr)
        return EXIT_STOPPED
    print(f"\n{task} run {summary['run_id']} done: output in {summary['output']}")
    print(format_summary(summary))
    print(f"summary: {summary['summary_uri']}")
    if demo:
        print(_next_steps(summary["output"], settings.model))
    return EXIT_FAILED_SHARDS if summary["failed_shards"] else EXIT_OK
