"""The command line shared by jobs/caption.py and jobs/vqa.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import hired

from ..errors import InputError, RunAborted, StorageUnavailable
from ..io.images import DEFAULT_MAX_PIXELS
from ..stages.preprocess import DEFAULT_CAPTION_PROMPT
from ..summary import format_summary

DEMO_ROOT = Path("demo_output")  # under the working directory


def budget_value(text: str) -> float | int:
    """'0.2' is a fraction of each image's visual tokens, '640' a token count."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number, got {text!r}") from None
    if value > 1:
        if value != int(value):
            raise argparse.ArgumentTypeError(f"a budget above 1 is a token count and must be whole, got {text}")
        return int(value)
    return value


def budget_list(text: str) -> list[float | int]:
    return [budget_value(part) for part in text.split(",") if part.strip()]


def strategy_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in STRATEGY_CHOICES:
            raise argparse.ArgumentTypeError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_CHOICES)}")
    return names


STRATEGY_CHOICES = (*hired.STRATEGIES, "none")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless its help already explains it (or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


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
        formatter_class=_HelpFormatter,
    )
    io = parser.add_argument_group("data")
    io.add_argument("--input", help="Parquet shard(s): a file or directory URI (local path, file://, s3://). "
                    "Columns: id, image (bytes) or image_uri, prompt (optional)"
                    + (", question, answers (list of references)" if task == "vqa" else
                       "; or WebDataset .tar shards (img2dataset's output; id = sample key); "
                       "or a folder/prefix of image files (id = path below --input, 1,000 files a shard)"))
    io.add_argument("--output", help="output directory URI (local path, file://, s3://); "
                    f"default with the demo: {DEMO_ROOT}/{task}")
    io.add_argument("--overwrite", action="store_true",
                    help="redo every shard even if its output is complete (default: resume)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="a LLaVA-Next (or LLaVA-1.5) checkpoint: hub id or local path; "
                       "default with the demo: a tiny random model built locally")
    model.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                       help="weights' precision; auto = bfloat16 (or float16) on GPU, float32 on CPU")
    model.add_argument("--max-new-tokens", type=int, default=64 if task == "caption" else 16,
                       help="most tokens generated per item")
    if task == "caption":
        model.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT,
                           help="instruction for rows whose prompt is null or missing")
    drop = parser.add_argument_group(
        "HiRED token dropping (on by default at the paper's setting); several comma-separated strategies or "
        "budgets run a sweep: each setting into <output>/<strategy>-<budget>/, compared in <output>/sweep.md"
    )
    drop.add_argument("--budget", type=budget_list, default=[0.2],
                      help="visual tokens kept per image: a fraction in (0, 1] or a token count (e.g. 640); "
                      "a list such as 0.1,0.2,0.4 sweeps (default: 0.2)")
    drop.add_argument("--alpha", type=float, default=0.5, help="share of the budget for the full-image view")
    drop.add_argument("--strategy", type=strategy_list, default=["hired"],
                      help=f"how tokens are chosen: {', '.join(STRATEGY_CHOICES)} (none: every token, the stock "
                      "model); a list such as hired,uniform sweeps (default: hired)")
    drop.add_argument("--no-hired", action="store_true",
                      help="keep every visual token (the stock model), for comparison: the same as --strategy none")
    run = parser.add_argument_group("resources")
    run.add_argument("--num-gpus", type=int, default=None,
                     help="GPU actors (one per GPU); default: every GPU in the cluster; 0 runs on CPU")
    run.add_argument("--batch-size", type=int, default=None,
                     help="items generated together; default: as many as fit in GPU memory, computed per batch "
                     "from each item's token count (HiRED fixes it in advance); 4 on CPU")
    run.add_argument("--gpu-memory-gb", type=float, default=None,
                     help="use at most this much of each GPU, e.g. 22 to size batches like an A10G on a larger card")
    run.add_argument("--preprocess-workers", type=int, default=None,
                     help="CPU actors decoding and preprocessing; default: half the cluster's CPUs, at most 32")
    run.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
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


def settings_from_args(args, task: str, config: hired.HiREDConfig | None):
    from ..settings import JobSettings, new_run_id

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
    )


def main(task: str, argv: list[str] | None = None) -> int:
    parser = build_parser(task)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hired.pipeline")
    if (args.batch_size is not None and args.batch_size < 1) or args.max_new_tokens < 1:
        parser.error("--batch-size and --max-new-tokens must be at least 1")
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        parser.error("--gpu-memory-gb must be positive")

    demo = args.input is None
    if demo:
        from ..demo import prepare_demo

        args.input, demo_model = prepare_demo(DEMO_ROOT)
        args.model = args.model or demo_model
        args.output = args.output or str((DEMO_ROOT / task).resolve())
        log.info("demo: %s -> %s with %s", args.input, args.output, args.model)
    if not args.output or not args.model:
        parser.error("--output and --model are required with --input")

    from .run import init_ray, run_job
    from .sweep import run_sweep, sweep_table, write_sweep

    try:
        points = sweep_points_from_args(args)
        settings = settings_from_args(args, task, points[0].config())
        if args.ray_address:
            init_ray(args.ray_address)
        if len(points) > 1:
            summaries = run_sweep(settings, points, run_job)
            where = write_sweep(settings.output, summaries)
            print(f"\n{task} sweep of {len(points)} settings done: output in {settings.output}")
            print(sweep_table(summaries))
            print(f"table: {where}")
            return 3 if any(s["failed_shards"] for s in summaries) else 0
        summary = run_job(settings)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StorageUnavailable as e:
        print(f"error: {e}; nothing was written, rerun the same command once storage is back", file=sys.stderr)
        return 4
    except RunAborted as e:
        done = e.summary["shards"]["written_this_run"]
        print(f"error: the run stopped: {e}\n{done} shard(s) were completed and written; rerun the same command "
              "to finish the rest (complete shards are skipped)", file=sys.stderr)
        return 4
    print(f"\n{task} run {summary['run_id']} done: output in {summary['output']}")
    print(format_summary(summary))
    print(f"summary: {summary['summary_uri']}")
    return 3 if summary["failed_shards"] else 0  # exit codes: 2 bad input, 3 failed shards, 4 stopped part-way
