"""``hired score --benchmark NAME INPUT -o OUTPUT``: score predictions as lmms-eval scores the
benchmark, without generating (also ``python -m pipeline.score``). The work is
:func:`pipeline.score.rescore`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..benchmarks import BENCHMARKS
from ..benchmarks.base import PREDICTION
from ..errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, InputError, StorageUnavailable
from ..settings import column_pair
from .base import describe, environment_help, refuse

EXIT_STATUSES = f"""exit status:
  {EXIT_OK}  scored
  {EXIT_BAD_INPUT}  the input cannot be scored (a missing or mistyped column, an unreadable file, a row whose
     ground truth is missing or malformed, no rows): one line on standard error, nothing written
  {EXIT_STOPPED}  the output could not be written, or storage stayed unreachable"""


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    describe(parser, (
        "Score predictions against a benchmark as lmms-eval scores it, without generating. INPUT holds the "
        "benchmark's columns (docs/benchmarks.md) and the predictions; OUTPUT gets every input row and column, "
        "in input order, plus a float64 'score' (the row's value before aggregation). The last line of standard "
        "output is one JSON object of the aggregates."), f"{EXIT_STATUSES}\n\n{environment_help('score')}")
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), help="the benchmark the rows come from")
    parser.add_argument("input", metavar="INPUT", help="a Parquet file or a folder of them (local, file:// or s3://)")
    parser.add_argument("-o", "--output", metavar="OUTPUT", help="where the scored rows go: a file for a file, a folder "
                        "for a folder (default: nowhere, only the aggregates)")
    parser.add_argument("--json", action="store_true",
                        help="print only the aggregates' JSON object (it is the last line either way)")
    parser.add_argument("--text-column", default=PREDICTION, metavar="COLUMN",
                        help="the column holding the predictions (default: text)")
    parser.add_argument("--answers-column", metavar="COLUMN",
                        help="the column holding the ground truth, if not the benchmark's name for it")
    parser.add_argument("--question-column", metavar="COLUMN", help="the column holding the question, if not 'question'")
    parser.add_argument("--column", action="append", default=[], metavar="NAME=COLUMN",
                        help="read the benchmark's column NAME from the input's COLUMN (repeatable), "
                        "e.g. --column type=split")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def run(args: argparse.Namespace, environ=os.environ) -> int:
    from ..benchmarks import named_columns
    from ..io.location import Location
    from ..io.retry import RetryPolicy
    from ..score import OutputError, rescore
    from ..settings import environment_settings

    benchmark = BENCHMARKS[args.benchmark]
    try:
        retry = RetryPolicy(window_s=environment_settings(environ).get("io_retry_s", RetryPolicy().window_s))
        try:
            others = [column_pair(item) for item in args.column]
        except ValueError as error:
            raise InputError(f"--column {error}") from None
        columns = named_columns(benchmark, question=args.question_column, answers=args.answers_column,
                                prediction=args.text_column, others=others)
        try:
            input = Location.resolve(args.input, retry)
            output = None if args.output is None else Location.resolve(args.output, retry)
        except (ValueError, ImportError, OSError) as error:  # an unknown protocol, a malformed URI
            raise InputError(f"cannot open {args.input if args.output is None else args.output}: {error}") from None
        result, rows = rescore(benchmark, input, output, columns,
                               into_folder=bool(args.output) and args.output.endswith("/"))
    except InputError as error:
        return refuse(_one_line(error))
    except (OutputError, StorageUnavailable) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_STOPPED
    if not args.json:
        print(f"{benchmark.name} ({benchmark.task}): {rows} rows scored, {benchmark.metric}")
        for key, value in result.items():
            print(f"  {key}: {'n/a' if value is None else f'{value:.4f}'}")
        if args.output:
            print(f"  scored rows: {args.output}")
    print(json.dumps(result, allow_nan=False))
    return EXIT_OK
