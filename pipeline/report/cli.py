"""``python -m pipeline.report OUTPUT_URI -o report.html``: a wrong setting or an output that cannot be
reported on exits 2 in one line."""

from __future__ import annotations

import argparse

from .data import ReportError
from .html import DEFAULT_ERROR_ROWS, DEFAULT_REPORT, DEFAULT_SAMPLE_ROWS, write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=(
            "Write a self-contained HTML report (one file, charts embedded) of a caption or VQA job's "
            "output: counts, errors and their reasons, visual tokens kept, latency, throughput, GPU memory "
            "and, for VQA, accuracy. Counts come from the result rows; the last run's wall time and failed "
            "shards from _summary.json when present."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_uri", metavar="OUTPUT_URI",
                        help="the job's --output location: local path, file:// or s3:// URI")
    parser.add_argument("-o", "--report", default=DEFAULT_REPORT, metavar="PATH",
                        help="where to write the HTML report (a path or fsspec URI)")
    parser.add_argument("--error-rows", type=int, default=DEFAULT_ERROR_ROWS, metavar="N",
                        help="list the first N error rows (id, position, reason)")
    parser.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS, metavar="N",
                        help="show the first N ok rows' captions or answers (0: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.error_rows < 0 or args.sample_rows < 0:
        parser.error("--error-rows and --sample-rows must be 0 or more")
    try:
        path = write_report(args.output_uri, args.report, error_rows=args.error_rows, sample_rows=args.sample_rows)
    except ReportError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"report of {args.output_uri} written to {path}")
    return 0
