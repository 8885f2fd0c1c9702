"""A folder (or S3 prefix) of image files as the input: cut into chunks, read file by file.

A row's id is its file's path relative to the input. The files, sorted by that path, are cut
into chunks (the shards) at places that depend only on the files' own paths: a chunk ends after
each file whose path hashes to 0 modulo FILES_PER_SHARD, so chunks hold FILES_PER_SHARD files on
average, and adding or removing a file changes only the chunk it sorts into (a file that ends a
chunk splits one or joins two), wherever its name sorts. Planning costs only the listing.

A chunk is named by a hash of its files' paths and versions (size and ETag, or modification
time), which is also its fingerprint: an unchanged chunk keeps its name and its output, and a
chunk whose files were added, removed or rewritten is a new chunk. Every chunk output records
each row's file version, so a new chunk generates only its new and changed files; the results of
the others are carried over from the outputs that hold them (pipeline.job.carry).
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
from .base import Format, listing_version

if TYPE_CHECKING:
    from ...settings import JobSettings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FILES_PER_SHARD = 1000  # files per chunk on average
# Files one read task fetches (several tasks per chunk read in parallel), and files fetched at once
# within a task: object stores answer one small GET at a time slowly, many concurrently well.
FILES_PER_TASK = 100
FILES_PER_SLICE = 25
FETCH_THREADS = 8
SHARD_PREFIX = "images-"


def claims(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def ends_chunk(member: str, files_per_chunk: int) -> bool:
    """Whether a chunk ends after this file: a property of its path alone, so chunks elsewhere stay put."""
    digest = hashlib.blake2b(member.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % files_per_chunk == 0


def chunk_digest(members: list[str], versions: list[str]) -> str:
    digest = hashlib.sha256()
    for member, version in zip(members, versions):
        digest.update(f"{member}\0{version}\n".encode())
    return digest.hexdigest()


def inspect(input: Location, files: dict[str, dict], settings: JobSettings, threads: int, records=None):
    """Chunks of the image files ``files`` (path -> listing info), by path relative to the input's
    folder (its parent when the input is one file)."""
    root = input.at(posixpath.dirname(input.path)) if input.path in files else input
    relative = sorted((posixpath.relpath(path, root.path), listing_version(info)) for path, info in files.items())
    chunks, current = [], []
    for member, version in relative:
        current.append((member, version))
        if ends_chunk(member, FILES_PER_SHARD):
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    shards = []
    for chunk in chunks:
        members, versions = tuple(m for m, _ in chunk), tuple(v for _, v in chunk)
        digest = chunk_digest(list(members), list(versions))
        name = f"{SHARD_PREFIX}{digest[:16]}"
        shards.append(Shard(uri=f"{root.uri.rstrip('/')}#{name}", name=name, num_rows=len(members), format="folder",
                            path=root.path, plan=members, fingerprint=digest, versions=versions))
    return shards, []


def read_tasks(shard: Shard) -> list[ReadTask]:
    """Runs of at most FILES_PER_TASK members to generate (carried rows are not read), each with
    its first row's index."""
    carried = {row for row, _, _ in shard.carried}
    tasks, run = [], []

    def close() -> None:
        if run:
            tasks.append(ReadTask(shard.uri, shard.name, "folder", shard.path, run[0], len(run),
                                  part=tuple(shard.plan[run[0] : run[0] + len(run)])))
            run.clear()

    for row in range(len(shard.plan)):
        if row in carried or len(run) == FILES_PER_TASK:
            close()
        if row not in carried:
            run.append(row)
    close()
    return tasks


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
