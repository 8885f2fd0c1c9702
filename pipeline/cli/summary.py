"""``hired summary OUTPUT``: the summary of a job's output, computed as the job does at its end."""

from __future__ import annotations

import argparse
import json
import os

from .base import describe, refuse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    describe(parser, "Print the summary of a caption or VQA job's output (counts, errors by kind, duplicate "
                          "ids, means), computed from the result files one at a time, as the job does at its end: "
                          "only those describing the input as its last run found it. On an output a job is "
                          "writing to, it first says where that job stands. "
                          "Exit status: 0, or 2 when the location cannot be read.")
    parser.add_argument("output_uri", metavar="OUTPUT_URI",
                        help="the job's --output location: local path, file:// or s3:// URI")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of lines")


def run(args: argparse.Namespace, environ=os.environ) -> int:
    from ..io.location import Location
    from ..io.manifest import read_manifest
    from ..io.retry import RetryPolicy
    from ..settings import environment_settings
    from ..summary import format_summary, read_run_record, summarize_output

    try:
        retry = RetryPolicy(window_s=environment_settings(environ).get("io_retry_s", RetryPolicy().window_s))
        output = Location.resolve(args.output_uri, retry)
        if not output.exists():
            return refuse(f"{args.output_uri} does not exist")
        manifest = read_manifest(output)
        summary = summarize_output(output, manifest=manifest, processed_rows=0, processed_generated_tokens=0,
                                   wall_s=0.0, extra={"output": args.output_uri})
        record = read_run_record(output, manifest.run_id) if manifest is not None else None
        if record is not None and record.get("state") == "running":
            summary = {"running": {k: record.get(k) for k in ("run_id", "started_at", "updated_at", "progress")},
                       **summary}
    except Exception as e:  # a malformed URI, missing credentials, a damaged file: one line, no traceback
        return refuse(f"cannot summarise {args.output_uri}: {type(e).__name__}: {e}")
    summary.pop("this_run")  # only the job knows its wall time; its _summary.json has it
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0
