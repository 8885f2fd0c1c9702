"""A folder (or S3 prefix) of image files as the input: cut into shards, read file by file.

The files are sorted by their path relative to the input and cut into shards of FILES_PER_SHARD
files: ``images-00000`` holds the first thousand, and so on. A row's id is its file's relative
path. The row count of a shard is its file count, so planning costs only the listing.

Resuming: a shard's identity (its ``uri``, which the output footer records as its source) is the
input, the shard's place and a fingerprint of its members: their paths, sizes and versions (the
S3 ETag, or the local modification time). A rerun over an unchanged folder finds every finished
shard complete; a shard whose files were added, removed, renamed or rewritten gets another
identity, so its old output is not taken as complete and the shard is redone (its output
replaced). Adding one file early in the sort order shifts every later shard, which are then redone
too: the price of fixed-size shards.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ...columns import ID, IMAGE
from ...errors import StorageUnavailable
from ...row_errors import ErrorKind, RowError
from ..location import Location
from ..shard import ReadTask, Shard
from .base import Format

if TYPE_CHECKING:
    from ...settings import JobSettings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FILES_PER_SHARD = 1000
# Files one read task fetches (several tasks per shard read in parallel), and files fetched at once
# within a task: object stores answer one small GET at a time slowly, many concurrently well.
FILES_PER_TASK = 100
FILES_PER_SLICE = 25
FETCH_THREADS = 8
SHARD_PREFIX = "images-"


def claims(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def member_version(info: dict) -> str:
    """What changes when a file's bytes do, as the store reports it: S3's ETag, else the
    modification time; the size on every store."""
    version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(version).strip(chr(34))}"


def fingerprint(members: list[str], versions: list[str]) -> str:
    digest = hashlib.sha256()
    for member, version in zip(members, versions):
        digest.update(f"{member}\0{version}\n".encode())
    return digest.hexdigest()[:16]


def inspect(input: Location, files: dict[str, dict], settings: JobSettings, threads: int):
    """Shards of the image files ``files`` (path -> listing info): sorted by the path relative to the
    input's folder (its parent when the input is one file), FILES_PER_SHARD to a shard."""
    root = input.at(posixpath.dirname(input.path)) if input.path in files else input
    relative = sorted((posixpath.relpath(path, root.path), info) for path, info in files.items())
    shards = []
    for index, start in enumerate(range(0, len(relative), FILES_PER_SHARD)):
        chunk = relative[start : start + FILES_PER_SHARD]
        members = tuple(path for path, _ in chunk)
        digest = fingerprint(list(members), [member_version(info) for _, info in chunk])
        name = f"{SHARD_PREFIX}{index:05d}"
        shards.append(Shard(uri=f"{root.uri.rstrip('/')}#{name}.{digest}", name=name, num_rows=len(members),
                            format="folder", path=root.path, plan=members))
    return shards, []


def read_tasks(shard: Shard) -> list[ReadTask]:
    """Runs of FILES_PER_TASK members, each with its first row's index."""
    return [ReadTask(shard.uri, shard.name, "folder", shard.path, start, len(shard.plan[start : start + FILES_PER_TASK]),
                     part=tuple(shard.plan[start : start + FILES_PER_TASK]))
            for start in range(0, len(shard.plan), FILES_PER_TASK)]


def _fetch(where: Location) -> bytes | RowError:
    """A file's bytes, or why it cannot be read (storage being down raises, after retries)."""
    try:
        return where.read_bytes()
    except StorageUnavailable:
        raise
    except Exception as e:
        return RowError(ErrorKind.UNREADABLE_FILE, f"{type(e).__name__}: {e}")


def read(input: Location, task: ReadTask, settings: JobSettings) -> Iterator[dict[str, list]]:
    """The task's files, in order, in slices of FILES_PER_SLICE fetched concurrently. A file that
    cannot be read is an error row; one that is not an image is found by the decode stage."""
    root = input.at(task.path)
    members = list(task.part)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for start in range(0, len(members), FILES_PER_SLICE):
            names = members[start : start + FILES_PER_SLICE]
            fetched = list(pool.map(_fetch, [root.join(name) for name in names]))
            yield {
                ID: names,
                IMAGE: [got if isinstance(got, bytes) else None for got in fetched],
                "error": [got if isinstance(got, RowError) else None for got in fetched],
            }


FORMAT = Format(name="folder", files="image files", claims=claims, inspect=inspect, read_tasks=read_tasks, read=read)
