"""Re-score predictions against a benchmark without generating: ``hired score`` (also
``python -m pipeline.score``; the command line is :mod:`pipeline.cli.score`).

INPUT is a Parquet file or a folder of them (local, ``file://`` or ``s3://``) holding the
benchmark's columns and ``text``, the prediction. OUTPUT gets every input row, in input order,
with every input column, plus a float64 ``score`` (the row's value before aggregation): a file
for a file, and for a folder a folder with one file per input file under the same relative
name. Every storage operation goes through the input's and output's :class:`Location` and their
retry policy: reads resume after the last batch handed out, and a file whose write falters is
scored and written again from its start.

Exit statuses: 0 scored; 2 the input cannot be scored (missing or mistyped column, unreadable
file, a row whose ground truth is missing), in one line on standard error, nothing written;
4 the output could not be written, or storage stayed unreachable.
"""

from __future__ import annotations

import copy
import os
import posixpath
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .benchmarks import Aggregator, Benchmark, BenchmarkDataError, check_columns
from .benchmarks.base import SCORE
from .benchmarks.scoring import rows_of, score_rows
from .errors import InputError, StorageUnavailable
from .io.location import Location
from .io.retry import is_transient

BATCH_ROWS = 8192  # rows read, scored and written at a time: memory stays bounded whatever the file


class OutputError(RuntimeError):
    """The scored rows could not be written."""


@dataclass(frozen=True)
class Pair:
    """One input file and where its scored copy goes."""

    source: str  # path on the input's filesystem
    target: str | None  # path on the output's filesystem; None: no output asked for


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def parquet_files(input: Location) -> list[str]:
    """The input's Parquet files in order: the file itself, or a folder's ``.parquet`` files found
    recursively (names starting with "." or "_" are not data)."""
    fs, path, retry = input.fs, input.path, input.retry
    try:
        fs.invalidate_cache(path)
        if not retry.call(lambda: fs.exists(path), f"looking for {input.uri}"):
            raise InputError(f"input {input} does not exist")
        if retry.call(lambda: fs.isfile(path), f"looking at {input.uri}"):
            return [path]
        found = sorted(p for p in retry.call(lambda: fs.find(path), f"listing {input.uri}")
                       if p.endswith(".parquet") and not _hidden(posixpath.relpath(p, path)))
    except (StorageUnavailable, InputError):
        raise
    except (OSError, ValueError) as error:  # a store that refuses (no such bucket, no access)
        raise InputError(f"cannot read input {input}: {error}") from None
    if not found:
        raise InputError(f"input {input} holds no .parquet files")
    return found


def pairs(input: Location, files: list[str], output: Location | None, into_folder: bool = False) -> list[Pair]:
    """Where each input file's scored copy goes: a file to a file, or into a folder (one that
    exists, or ``into_folder``); a folder's files under their relative names."""
    if output is None:
        return [Pair(f, None) for f in files]
    root, target = input.path.rstrip("/"), output.path.rstrip("/")
    if type(output.fs) is type(input.fs) and (target == root or target.startswith(root + "/")):
        raise InputError(f"output {output} is the input or inside it; choose another place")
    if files == [input.path]:
        into_folder = into_folder or output.retry.call(lambda: output.fs.isdir(target), f"looking at {output.uri}")
        return [Pair(input.path, posixpath.join(target, posixpath.basename(input.path)) if into_folder else target)]
    return [Pair(f, posixpath.join(target, posixpath.relpath(f, input.path))) for f in files]


def _unreadable(where: Location, error: Exception) -> Exception:
    if isinstance(error, StorageUnavailable) or is_transient(error):
        return error
    return InputError(f"unreadable input file {where.uri}: {error}")


def read_schema(where: Location) -> pa.Schema:
    def read() -> pa.Schema:
        with where.open("rb") as f:
            return pq.read_schema(f)

    try:
        return where.retry.call(read, f"reading the footer of {where.uri}")
    except (OSError, pa.ArrowException) as error:
        raise _unreadable(where, error) from None


def read_batches(where: Location) -> Iterator[pa.RecordBatch]:
    """The file's rows, :data:`BATCH_ROWS` at a time; after a transient failure the file is reopened
    and read on from the first batch not yet handed out."""

    def open_from(done: int) -> Iterator[pa.RecordBatch]:
        with where.open("rb") as f:
            for i, batch in enumerate(pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)):
                if i >= done:
                    yield batch

    try:
        yield from where.retry.resumable(open_from, f"reading {where.uri}")
    except (OSError, pa.ArrowException) as error:
        raise _unreadable(where, error) from None


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
    """One scored file, written beside its target and moved into place by :meth:`commit`. A
    transient storage error is raised as it is (the file is then written again); any other is
    an :class:`OutputError`."""

    def __init__(self, target: Location, schema: pa.Schema):
        self.target = target
        hidden = f".{target.name}.partial-{os.getpid()}"  # skipped by any reader of the folder
        self.partial = target.at(posixpath.join(posixpath.dirname(target.path), hidden))
        self.handle = self.writer = None
        try:
            target.fs.makedirs(posixpath.dirname(target.path), exist_ok=True)
            self.handle = self.partial.open("wb")
            self.writer = pq.ParquetWriter(self.handle, _scored_schema(schema))
        except OSError as error:
            self.discard()
            raise self._failed(error) from None

    def _failed(self, error: OSError) -> Exception:
        return error if is_transient(error) else OutputError(f"cannot write {self.target.uri}: {error}")

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.writer.write_batch(batch)
        except OSError as error:
            raise self._failed(error) from None

    def close(self) -> None:
        try:
            for part in (self.writer, self.handle):
                if part is not None:
                    part.close()
        except OSError as error:  # the last part's upload happens here
            raise self._failed(error) from None
        finally:
            self.writer = self.handle = None

    def commit(self) -> None:
        fs = self.target.fs
        try:
            self.target.retry.call(lambda: fs.mv(self.partial.path, self.target.path), f"writing {self.target.uri}")
        except OSError as error:
            raise OutputError(f"cannot write {self.target.uri}: {error}") from None

    def discard(self) -> None:
        try:
            self.close()
        except Exception:  # a broken writer: the partial file is removed below either way
            pass
        try:
            self.target.fs.rm(self.partial.path)
        except (OSError, ValueError):  # never created, or already gone
            pass


def _score_file(benchmark: Benchmark, source: Location, target: Location | None, schema: pa.Schema,
                sources: dict[str, str], aggregator: Aggregator) -> tuple[int, _Output | None]:
    """Score one file into ``aggregator`` and, if asked, into its partial output (closed, not yet in
    place); (rows, output)."""
    output = None if target is None else _Output(target, schema)
    try:
        offset = 0
        for batch in read_batches(source):
            scored = rows_of(batch, sources)
            try:
                scores = score_rows(benchmark, scored)
            except BenchmarkDataError as error:
                raise InputError(f"{source.uri} row {offset + error.row}: {error.reason}") from None
            aggregator.add(scored, scores)
            offset += batch.num_rows
            if output is not None:
                output.write(_with_score(batch, scores))
        if output is not None:
            output.close()
        return offset, output
    except BaseException:
        if output is not None:
            output.discard()
        raise


def rescore(benchmark: Benchmark, input: Location, output: Location | None = None,
            columns: dict[str, str] | None = None, *, into_folder: bool = False) -> tuple[dict[str, float | None], int]:
    """Score every row under ``input``, write the scored copies under ``output`` (if given; for a
    file input, into the folder ``output`` when it is one or ``into_folder``), and return the
    aggregates and the row count.

    Every file's columns are checked before any row is scored. Scored copies are written beside
    their targets and moved into place only once every row has been scored and the aggregates
    computed, so input that cannot be scored leaves nothing behind."""
    checked = []
    for pair in pairs(input, parquet_files(input), output, into_folder):
        source = input.at(pair.source)
        schema = read_schema(source)
        try:
            checked.append((pair, source, schema, check_columns(benchmark, schema, columns)))
        except InputError as error:
            raise InputError(f"{source.uri}: {error}") from None
    aggregator, rows, written = Aggregator(benchmark), 0, []
    try:
        for pair, source, schema, sources in checked:
            target = None if pair.target is None else output.at(pair.target)
            before = aggregator

            def attempt():
                nonlocal aggregator
                aggregator = copy.deepcopy(before)  # a file written again is folded in again, from the state before it
                return _score_file(benchmark, source, target, schema, sources, aggregator)

            where = f"scoring {source.uri}" + ("" if target is None else f" into {target.uri}")
            count, scored = attempt() if target is None else target.retry.call(attempt, where)
            rows += count
            if scored is not None:
                written.append(scored)
        if rows == 0:
            raise InputError(f"input {input} holds no rows")
        try:
            result = aggregator.result()  # may still find bad data (MME's pairs)
        except BenchmarkDataError as error:
            raise InputError(f"input {input}: {error}") from None
        while written:
            written[0].commit()
            written.pop(0)
        return result, rows
    finally:
        for scored in written:
            scored.discard()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.score``: the same as ``hired score``."""
    from .cli import score as command
    from .cli.base import new_parser

    parser = new_parser("python -m pipeline.score", "")
    command.add_arguments(parser, "score")
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
