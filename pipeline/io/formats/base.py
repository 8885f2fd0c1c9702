"""The interface every input format implements (see pipeline.io.formats)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Optional

from ..location import Location
from ..shard import FailedShard, ReadTask, Shard

if TYPE_CHECKING:
    from ...settings import JobSettings
    from ..outputs import Recorded

# What an output records of its source, by output file stem (None: no output of that name); a
# format may use it to skip inspecting a shard its output already describes (a tar's count pass).
Records = Callable[[str], Optional["Recorded"]]


@dataclass(frozen=True)
class Format:
    name: str
    files: str  # how messages name its files, e.g. ".parquet files"
    claims: Callable[[str], bool]  # whether a file name is this format's
    # (the input, its files of this format: path -> listing info, settings, threads, records or None)
    # -> (shards, failed shards)
    inspect: Callable[[Location, dict, "JobSettings", int, Records | None], tuple[list[Shard], list[FailedShard]]]
    read_tasks: Callable[[Shard], list[ReadTask]]
    # (the input, a task, settings) -> slices: column name -> values, for some of READ_COLUMNS' input
    # columns, plus "error": a RowError or None per row
    read: Callable[[Location, ReadTask, "JobSettings"], Iterator[dict[str, list]]]
    carries_questions: bool = False  # whether its rows can hold VQA questions and answers


def shard_names(paths: list[str], input: Location) -> list[str]:
    """Output stems: each shard file's path relative to the input, extension dropped, '/' as '__'.
    Two paths that come out alike are refused at planning (pipeline.io.formats.inspect_input)."""
    return [posixpath.splitext(input.relative(p))[0].replace("/", "__") for p in paths]


def listing_version(info: dict, with_mtime: bool = True) -> str:
    """What changes when a file's bytes do, as the listing reports it at no extra request: the size,
    and the store's ETag and version id where it gives them, else (``with_mtime``) the modification time."""
    parts = [f"size={info.get('size')}"]
    etag = info.get("ETag") or info.get("etag")
    version = info.get("VersionId") or info.get("version_id") or info.get("generation")
    if etag:
        parts.append(f"etag={str(etag).strip(chr(34))}")
    if version:
        parts.append(f"version={version}")
    if with_mtime and not (etag or version):
        mtime = info.get("mtime") or info.get("LastModified") or info.get("updated")
        parts.append(f"mtime={mtime.isoformat() if isinstance(mtime, datetime) else mtime}")
    return ";".join(parts)
