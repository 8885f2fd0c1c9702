"""What planning knows of an input shard, whatever its format: the unit of exactly-once output."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Shard:
    uri: str  # its identity, recorded in its output: a file's URI, or a folder chunk's '<input>#<name>'
    name: str  # output file stem, unique among the input's shards
    num_rows: int
    format: str  # its format's name in pipeline.io.formats.FORMATS
    path: str  # on the input's filesystem: the file (Parquet, tar), or the folder a folder chunk's members are under
    plan: tuple = ()  # what its format needs to read it (Parquet: rows per row group; folder: member paths)
    id_type: str = "string"  # the output's id type: "string" or "int64" (an integer id column)
    benchmark: pa.Schema | None = None  # with --benchmark: its columns as the input holds them (the output keeps them)
    # What its input was when planned, recorded in its output: an output of another fingerprint is redone.
    fingerprint: str = ""
    versions: tuple = ()  # per row, what its input file was (folder: size and ETag or mtime), recorded in its output
    # Rows whose results an earlier output holds and that are not generated again: (row index, that
    # output's file name, the row's index there), in row order (folder chunks, pipeline.job.carry).
    carried: tuple = ()

    @property
    def rows_to_generate(self) -> int:
        return self.num_rows - len(self.carried)


@dataclass(frozen=True)
class ReadTask:
    """One read task's part of a shard: its rows from ``first_row`` on, ``num_rows`` of them."""

    shard_uri: str
    shard_name: str
    format: str
    path: str  # as Shard.path
    first_row: int
    num_rows: int
    part: object = None  # the format's own (Parquet: the row group; folder: the member paths)


@dataclass(frozen=True)
class FailedShard:
    uri: str
    reason: str
    name: str = ""  # its output file stem, when planning got that far
