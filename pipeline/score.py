"""Re-score predictions against a benchmark without generating: ``python -m pipeline.score``.

INPUT is a Parquet file or a folder of them (local, ``file://`` or ``s3://``) holding the
benchmark's columns and ``text``, the prediction. OUTPUT gets every input row, in input order,
with every input column, plus a float64 ``score`` (the row's value before aggregation): a file
for a file, and for a folder a folder with one file per input file under the same relative
name. The last line of standard output is one JSON object of the aggregates.

Exit statuses: 0 scored; 2 the input cannot be scored (missing or mistyped column, unreadable
file, a row whose ground truth is missing), in one line on standard error, nothing written;
4 the output could not be written.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .benchmarks import BENCHMARKS, Aggregator, Benchmark, BenchmarkDataError, check_columns
from .benchmarks.base import ANSWERS_FLAG, PREDICTION, QUESTION_FLAG, SCORE
from .benchmarks.scoring import rows_of, score_rows
from .errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, InputError

BATCH_ROWS = 8192  # rows read, scored and written at a time: memory stays bounded whatever the file


class OutputError(RuntimeError):
    """The scored rows could not be written."""


@dataclass(frozen=True)
class Pair:
    """One input file and where its scored copy goes."""

    source: str  # path on the input's filesystem
    target: str | None  # path on the output's filesystem; None: no output asked for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.score",
        description="Score predictions against a benchmark as lmms-eval does, without generating.",
        epilog="Exit statuses: 0 scored; 2 the input cannot be scored (nothing written); "
               "4 the output could not be written.",
    )
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
    return parser


def column_names(benchmark: Benchmark, args: argparse.Namespace) -> dict[str, str]:
    """The benchmark column -> input column choices the flags make."""
    named = {PREDICTION: args.text_column}
    for column in benchmark.columns:
        if args.answers_column and column.flag == ANSWERS_FLAG:
            named[column.name] = args.answers_column
        if args.question_column and column.flag == QUESTION_FLAG:
            named[column.name] = args.question_column
    for item in args.column:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise InputError(f"--column {item}: give NAME=COLUMN, e.g. --column type=split")
        named[name] = source
    return named


def _parquet_files(input_uri: str) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """The input's filesystem, its path, and its Parquet files in order (a folder searched
    recursively; names starting with "." or "_" are not data)."""
    try:
        fs, path = fsspec.core.url_to_fs(input_uri)
        exists = fs.exists(path)
        if exists and fs.isfile(path):
            return fs, path, [path]
        found = exists and sorted(p for p in fs.find(path) if p.endswith(".parquet")
                                  and not any(part.startswith((".", "_")) for part in posixpath.relpath(p, path).split("/")))
    except (OSError, ValueError, ImportError) as error:  # an unknown protocol, a store that refuses
        raise InputError(f"cannot read input {input_uri}: {error}") from None
    if not exists:
        raise InputError(f"input {input_uri} does not exist")
    if not found:
        raise InputError(f"input {input_uri} holds no .parquet files")
    return fs, path, found


def _pairs(fs, path: str, files: list[str], output_uri: str | None):
    if output_uri is None:
        return None, [Pair(f, None) for f in files]
    out_fs, out_path = fsspec.core.url_to_fs(output_uri)
    out_path = out_path.rstrip("/")
    same_store = type(out_fs) is type(fs)
    if same_store and (out_path == path.rstrip("/") or out_path.startswith(path.rstrip("/") + "/")):
        raise InputError(f"output {output_uri} is the input or inside it; choose another place")
    if files == [path]:  # a file goes to a file, or into a folder named as one
        into_folder = output_uri.endswith("/") or out_fs.isdir(out_path)
        return out_fs, [Pair(path, posixpath.join(out_path, posixpath.basename(path)) if into_folder else out_path)]
    return out_fs, [Pair(f, posixpath.join(out_path, posixpath.relpath(f, path))) for f in files]


def _schema(fs, path: str) -> pa.Schema:
    try:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"unreadable input file {fs.unstrip_protocol(path)}: {error}") from None


def _batches(fs, path: str) -> Iterator[pa.RecordBatch]:
    try:
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"unreadable input file {fs.unstrip_protocol(path)}: {error}") from None


def _scored_schema(schema: pa.Schema) -> pa.Schema:
    field = pa.field(SCORE, pa.float64())
    if SCORE in schema.names:  # an input's own score column is replaced where it stands
        return schema.set(schema.get_field_index(SCORE), field)
    return schema.append(field)


def _with_score(batch: pa.RecordBatch, scores) -> pa.RecordBatch:
    column = pa.array(scores, type=pa.float64())
    if SCORE in batch.schema.names:
        return batch.set_column(batch.schema.get_field_index(SCORE), SCORE, column)
    return batch.append_column(pa.field(SCORE, pa.float64()), column)


class _Output:
    """One scored file, written beside its target and moved into place by :meth:`commit`."""

    def __init__(self, fs, target: str, schema: pa.Schema):
        self.fs, self.target = fs, target
        hidden = f".{posixpath.basename(target)}.partial-{os.getpid()}"  # skipped by any reader of the folder
        self.partial = posixpath.join(posixpath.dirname(target), hidden)
        self.handle = self.writer = None
        try:
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.handle = fs.open(self.partial, "wb")
            self.writer = pq.ParquetWriter(self.handle, _scored_schema(schema))
        except OSError as error:
            self.close()
            raise OutputError(f"cannot write {fs.unstrip_protocol(target)}: {error}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.writer.write_batch(batch)
        except OSError as error:
            raise OutputError(f"cannot write {self.fs.unstrip_protocol(self.target)}: {error}") from None

    def close(self) -> None:
        for part in (self.writer, self.handle):
            if part is not None:
                part.close()
        self.writer = self.handle = None

    def commit(self) -> None:
        try:
            self.fs.mv(self.partial, self.target)
        except OSError as error:
            raise OutputError(f"cannot write {self.fs.unstrip_protocol(self.target)}: {error}") from None

    def discard(self) -> None:
        self.close()
        try:
            self.fs.rm(self.partial)
        except OSError:  # never created, or already gone
            pass


def rescore(benchmark: Benchmark, input_uri: str, output_uri: str | None = None,
            columns: dict[str, str] | None = None) -> tuple[dict[str, float | None], int]:
    """Score every row under ``input_uri``, write the scored copies under ``output_uri`` (if
    given), and return the aggregates and the row count.

    Every file's columns are checked before any row is scored. Scored copies are written beside
    their targets and moved into place only once every row has been scored and the aggregates
    computed, so input that cannot be scored leaves nothing behind."""
    fs, path, files = _parquet_files(input_uri)
    out_fs, pairs = _pairs(fs, path, files, output_uri)
    checked = []
    for pair in pairs:
        schema = _schema(fs, pair.source)
        try:
            checked.append((pair, schema, check_columns(benchmark, schema, columns)))
        except InputError as error:
            raise InputError(f"{fs.unstrip_protocol(pair.source)}: {error}") from None
    aggregator, rows, outputs = Aggregator(benchmark), 0, []
    try:
        for pair, schema, sources in checked:
            output = None if pair.target is None else _Output(out_fs, pair.target, schema)
            if output is not None:
                outputs.append(output)
            offset = 0
            for batch in _batches(fs, pair.source):
                scored = rows_of(batch, sources)
                try:
                    scores = score_rows(benchmark, scored)
                except BenchmarkDataError as error:
                    where = f"{fs.unstrip_protocol(pair.source)} row {offset + error.row}"
                    raise InputError(f"{where}: {error.reason}") from None
                aggregator.add(scored, scores)
                offset += batch.num_rows
                if output is not None:
                    output.write(_with_score(batch, scores))
            if output is not None:
                output.close()
            rows += offset
        if rows == 0:
            raise InputError(f"input {input_uri} holds no rows")
        try:
            result = aggregator.result()  # may still find bad data (MME's pairs)
        except BenchmarkDataError as error:
            raise InputError(f"input {input_uri}: {error}") from None
        while outputs:
            outputs[0].commit()
            outputs.pop(0)
        return result, rows
    finally:
        for output in outputs:
            output.discard()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    benchmark = BENCHMARKS[args.benchmark]
    try:
        result, rows = rescore(benchmark, args.input, args.output, column_names(benchmark, args))
    except InputError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as error:
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


if __name__ == "__main__":
    sys.exit(main())
