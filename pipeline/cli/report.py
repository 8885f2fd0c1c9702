"""``hired report OUTPUT -o report.html``: a self-contained HTML report of a job's output."""

from __future__ import annotations

import argparse
import os

from .base import argument_type, describe, refuse


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    from ..report import DEFAULT_ERROR_ROWS, DEFAULT_REPORT, DEFAULT_SAMPLE_ROWS

    describe(parser, 
        "Write a self-contained HTML report (one file, charts embedded) of a caption or VQA job's output: "
        "counts, errors and their reasons, visual tokens kept, latency, throughput, GPU memory and, for VQA, "
        "accuracy. Counts come from the result rows; the last run's wall time and failed shards from "
        "_summary.json when present. Exit status: 0, or 2 when the output cannot be read.")
    parser.add_argument("output_uri", metavar="OUTPUT_URI",
                        help="the job's --output location: local path, file:// or s3:// URI")
    parser.add_argument("-o", "--report", default=DEFAULT_REPORT, metavar="PATH",
                        help=f"where to write the HTML report, a path or fsspec URI (default: {DEFAULT_REPORT})")
    parser.add_argument("--error-rows", type=argument_type(_count), default=DEFAULT_ERROR_ROWS, metavar="N",
                        help=f"list the first N error rows (default: {DEFAULT_ERROR_ROWS})")
    parser.add_argument("--sample-rows", type=argument_type(_count), default=DEFAULT_SAMPLE_ROWS, metavar="N",
                        help=f"show the first N ok rows' captions or answers, 0 for none (default: {DEFAULT_SAMPLE_ROWS})")


def run(args: argparse.Namespace, environ=os.environ) -> int:
    from ..report import ReportError, write_report

    try:
        path = write_report(args.output_uri, args.report, error_rows=args.error_rows, sample_rows=args.sample_rows)
    except ReportError as e:
        return refuse(e)
    print(f"report of {args.output_uri} written to {path}")
    return 0
