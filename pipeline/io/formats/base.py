"""The interface every input format implements (see pipeline.io.formats)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..location import Location
from ..shard import FailedShard, ReadTask, Shard

if TYPE_CHECKING:
    from ...settings import JobSettings


@dataclass(frozen=True)
class Format:
    name: str
    files: str  # how messages name its files, e.g. ".parquet files"
    claims: Callable[[str], bool]  # whether a file name is this format's
    # (the input, its files of this format: path -> listing info, settings, threads) -> (shards, failed shards)
    inspect: Callable[[Location, dict, "JobSettings", int], tuple[list[Shard], list[FailedShard]]]
    read_tasks: Callable[[Shard], list[ReadTask]]
    # (the input, a task, settings) -> slices: column name -> values, for some of READ_COLUMNS' input
    # columns, plus "error": a RowError or None per row
    read: Callable[[Location, ReadTask, "JobSettings"], Iterator[dict[str, list]]]
    carries_questions: bool = False  # whether its rows can hold VQA questions and answers


def shard_names(paths: list[str], input: Location) -> list[str]:
    """Output stems: each shard file's path relative to the input, extension dropped, '/' as '__'."""
    return [posixpath.splitext(input.relative(p))[0].replace("/", "__") for p in paths]
