"""The command line shared by jobs/caption.py and jobs/vqa.py: parse, build the settings
once, check them before anything heavy starts, run, and exit with a documented status."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import hired

from ..errors import EXIT_BAD_INPUT, EXIT_FAILED_SHARDS, EXIT_OK, EXIT_STOPPED, InputError, RunAborted, StorageUnavailable
from ..io.images import DEFAULT_MAX_PIXELS
from ..settings import DEFAULT_CAPTION_PROMPT, JobSettings, check_model, new_run_id
from ..summary import format_summary

DEMO_ROOT = Path("demo_output")  # under the working directory
STRATEGY_CHOICES = (*hired.strategies.NAMES, hired.strategies.STOCK)

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}  every shard written (unusable rows are error rows in the output, with their reason)
  {EXIT_BAD_INPUT}  the settings or the input cannot work (bad flag, model, schema, unwritable output);
     found before anything heavy starts: change the command
  {EXIT_FAILED_SHARDS}  done, but some shards failed (unreadable or incomplete); rerun to retry them
  {EXIT_STOPPED}  stopped part-way (storage unreachable, the cluster lost); complete shards are
     written: rerun the same command to finish"""


def budget_list(text: str) -> list[float | int]:
    """``--budget``: one budget or a comma-separated sweep, each read by :func:`hired.parse_budget`."""
    try:
        return [hired.parse_budget(part) for part in text.split(",") if part.strip()] or [hired.parse_budget(text)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def strategy_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in STRATEGY_CHOICES:
            raise argparse.ArgumentTypeError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_CHOICES)}")
    return names


def _at_least(low: int | float, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default unless its help already explains it (or there is none to show);
    keeps the epilog's layout."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_column_flags(group, task: str) -> None:
    """--id-column and friends: which input column plays which part (pipeline.columns.ColumnMap)."""
    example = ("img2dataset Parquet: --id-column key --image-column jpg" if task == "caption"
               else "VQAv2 from the Hugging Face hub: --id-column question_id")
    group.add_argument("--id-column", metavar="NAME", help="the rows' ids, strings or integers (kept as they are in "
                       "the output); default: 'id', or, without one, the row's place '<shard name>/<row index>'. "
                       f"E.g. for {example}")
    group.add_argument("--image-column", metavar="NAME", help="the image: encoded bytes, a Hugging Face Image() "
                       "struct, or a URI (absolute, file://, s3://, or a path relative to the shard's folder); "
                       "default: 'image' and/or 'image_uri'")
    if task == "caption":
        group.add_argument("--prompt-column", metavar="NAME", help="per-row instructions (default: 'prompt' if present)")
    else:
        group.add_argument("--question-column", metavar="NAME", help="the questions (default: 'question')")
        group.add_argument("--answers-column", metavar="NAME", help="reference answers: a list of strings, one "
                           "string, or a list of {answer, ...} structs (default: 'answers' if present)")


def column_map_from_args(args):
    from ..columns import ColumnMap

    return ColumnMap(id=args.id_column, image=args.image_column, prompt=getattr(args, "prompt_column", None),
                     question=getattr(args, "question_column", None), answers=getattr(args, "answers_column", None))


def build_parser(task: str) -> argparse.ArgumentParser:
    what = "captions" if task == "caption" else "answers to visual questions, scored against reference answers"
    parser = argparse.ArgumentParser(
        prog=f"jobs/{task}.py",
        description=(
            f"Write {what} for every row of the Parquet shards at --input, with LLaVA-Next and HiRED "
            "visual-token dropping, to --output (one Parquet file per input shard, plus _summary.json). "
            "Reruns of the same command resume: complete shards are skipped. With no --input, runs the "
            "built-in demo (generated pictures, a tiny local model, a local Ray, output under ./demo_output)."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=_HelpFormatter,
    )
    io = parser.add_argument_group("data")
    io.add_argument("--input", help="Parquet shard(s): a file or directory URI (local path, file://, s3://). "
                    "Columns: id (optional), image (bytes, Image() struct or URI) or image_uri, "
                    + ("question, answers (optional references)" if task == "vqa" else "prompt (optional)")
                    + "; other names with the --*-column flags below"
                    + ("" if task == "vqa" else
                       ". Or WebDataset .tar shards (img2dataset's output; id = sample key), or a folder or "
                       "prefix of image files (id = the path below --input, 1,000 files a shard)"))
    add_column_flags(io, task)
    io.add_argument("--output", help="output directory URI (local path, file://, s3://); "
                    f"default with the demo: {DEMO_ROOT}/{task}")
    io.add_argument("--overwrite", action="store_true",
                    help="redo every shard even if its output is complete (default: resume)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="a LLaVA-Next (or LLaVA-1.5) checkpoint: hub id or local folder; "
                       "default with the demo: a tiny random model built locally")
    model.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                       help="weights' precision; auto = bfloat16 (or float16) on GPU, float32 on CPU")
    model.add_argument("--max-new-tokens", type=_at_least(1), default=64 if task == "caption" else 16,
                       help="most tokens generated per item")
    if task == "caption":
        model.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT,
                           help="instruction for rows whose prompt is null or missing")
    drop = parser.add_argument_group(
        "HiRED token dropping (on by default at the paper's setting); several comma-separated strategies or "
        "budgets run a sweep: each setting into <output>/<strategy>-<budget>/, compared in <output>/sweep.md"
    )
    drop.add_argument("--budget", type=budget_list, default=[0.2],
                      help="visual tokens kept per image: a fraction with a decimal point or a percentage "
                      "(0.2 or 20%%; 1.0 keeps all) or a whole token count (640); a list such as 0.1,0.2,0.4 "
                      "sweeps (default: 0.2)")
    drop.add_argument("--alpha", type=float, default=0.5, help="share of the budget for the full-image view")
    drop.add_argument("--strategy", type=strategy_list, default=["hired"],
                      help=f"how tokens are chosen: {', '.join(STRATEGY_CHOICES)} (none: every token, the stock "
                      "model); a list such as hired,uniform sweeps (default: hired)")
    drop.add_argument("--no-hired", action="store_true",
                      help="keep every visual token (the stock model), for comparison: the same as --strategy none")
    run = parser.add_argument_group("resources")
    run.add_argument("--num-gpus", type=_at_least(0), default=None,
                     help="GPU actors (one per GPU); default: every GPU in the cluster; 0 runs on CPU")
    run.add_argument("--batch-size", type=_at_least(1), default=None,
                     help="items generated together; default: as many as fit in GPU memory, computed per batch "
                     "from each item's token count (HiRED fixes it in advance); 4 on CPU")
    run.add_argument("--gpu-memory-gb", type=_at_least(0.5, float), default=None,
                     help="use at most this much of each GPU, e.g. 22 to size batches like an A10G on a larger card")
    run.add_argument("--preprocess-workers", type=_at_least(1), default=None,
                     help="CPU actors decoding and preprocessing; default: half the cluster's CPUs, at most 32")
    run.add_argument("--max-image-pixels", type=_at_least(1), default=DEFAULT_MAX_PIXELS,
                     help="larger images become error rows (decompression-bomb guard)")
    run.add_argument("--ray-address", default=None,
                     help="Ray cluster to join (ray job submit sets RAY_ADDRESS); default: a private local Ray")
    run.add_argument("--run-id", default=None, help="a name for this run (default: timestamp); stored in every row")
    return parser


def sweep_points_from_args(args):
    from .sweep import sweep_points

    strategies = ["none"] if args.no_hired else args.strategy
    try:
        return sweep_points(strategies, args.budget, args.alpha)
    except ValueError as e:
        raise InputError(str(e)) from None


def settings_from_args(args, task: str, config: hired.HiREDConfig | None) -> JobSettings:
    """The settings, once; a sweep varies only ``config`` (and the output folder) per point."""
    return JobSettings(
        task=task,
        input=args.input,
        output=args.output,
        model=args.model,
        config=config,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        gpu_memory_gb=args.gpu_memory_gb,
        num_gpus=args.num_gpus,
        preprocess_workers=args.preprocess_workers,
        dtype=args.dtype,
        max_image_pixels=args.max_image_pixels,
        default_prompt=getattr(args, "prompt", DEFAULT_CAPTION_PROMPT),
        overwrite=args.overwrite,
        run_id=args.run_id or new_run_id(),
        ray_address=args.ray_address,
        columns=column_map_from_args(args),
    )


def main(task: str, argv: list[str] | None = None) -> int:
    parser = build_parser(task)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hired.pipeline")

    if args.input is None:
        from ..demo import prepare_demo

        args.input, demo_model = prepare_demo(DEMO_ROOT)
        args.model = args.model or demo_model
        args.output = args.output or str((DEMO_ROOT / task).resolve())
        log.info("demo: %s -> %s with %s", args.input, args.output, args.model)
    if not args.output or not args.model:
        parser.error("--output and --model are required with --input")

    from .run import run_job
    from .sweep import run_sweep, sweep_table, write_sweep

    try:
        points = sweep_points_from_args(args)
        settings = settings_from_args(args, task, points[0].config())
        check_model(settings.model)
        if len(points) > 1:
            summaries = run_sweep(settings, points, run_job)
            where = write_sweep(settings.output, summaries)
            print(f"\n{task} sweep of {len(points)} settings done: output in {settings.output}")
            print(sweep_table(summaries))
            print(f"table: {where}")
            return EXIT_FAILED_SHARDS if any(s["failed_shards"] for s in summaries) else EXIT_OK
        summary = run_job(settings)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
    return EXIT_FAILED_SHARDS if summary["failed_shards"] else EXIT_OK


def command(task: str) -> int:
    """``jobs/<task>.py`` as run from a shell or ``ray job submit``: :func:`main` with Ray's one
    benign error-level start-up line filtered out of the process's standard error."""
    from .ray_setup import BENIGN_NATIVE_LINES, filter_native_stderr

    filter_native_stderr(BENIGN_NATIVE_LINES)
    return main(task)
