"""What planning knows of an input shard, whatever its kind: the unit of exactly-once output."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    uri: str  # full URI of the input shard
    name: str  # output file stem, unique among the input's shards
    num_rows: int
    row_groups: tuple[int, ...] = ()  # Parquet: rows per row group; () for the other kinds
    kind: str = "parquet"  # "parquet" | "webdataset" | "folder"
    members: tuple[str, ...] = ()  # folder shards: the image paths of this shard, relative to the input
    id_type: str = "string"  # the output's id type: "string" or "int64" (an integer id column)


@dataclass(frozen=True)
class FailedShard:
    uri: str
    reason: str
