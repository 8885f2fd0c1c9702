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

from ..errors import StorageUnavailable
from .retry import with_retries
from .shard import Shard
from .storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FILES_PER_SHARD = 1000
# Files one read task fetches (several tasks per shard read in parallel), and files fetched at once
# within a task: object stores answer one small GET at a time slowly, many concurrently well.
FILES_PER_TASK = 100
FILES_PER_SLICE = 25
FETCH_THREADS = 8
SHARD_PREFIX = "images-"


def is_image_file(path: str) -> bool:
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


def shard_uri(root_uri: str, index: int, digest: str) -> str:
    """The shard's identity: ``<input>#images-00003.<fingerprint>`` (not a file to open)."""
    return f"{root_uri.rstrip('/')}#{SHARD_PREFIX}{index:05d}.{digest}"


def root_of(uri: str) -> str:
    """The input folder of a folder shard's identity."""
    return uri.rsplit("#", 1)[0]


def folder_shards(root_uri: str, files: dict[str, dict]) -> list:
    """Shards of the image files ``files`` (path on the input's filesystem -> listing info) under
    ``root_uri``: sorted by relative path, FILES_PER_SHARD to a shard."""
    root = Storage.at(root_uri)
    relative = sorted((posixpath.relpath(path, root.path), info) for path, info in files.items())
    shards = []
    for index, start in enumerate(range(0, len(relative), FILES_PER_SHARD)):
        chunk = relative[start : start + FILES_PER_SHARD]
        members = tuple(path for path, _ in chunk)
        digest = fingerprint(list(members), [member_version(info) for _, info in chunk])
        shards.append(Shard(uri=shard_uri(root.uri, index, digest), name=f"{SHARD_PREFIX}{index:05d}",
                            num_rows=len(members), row_groups=(), kind="folder", members=members))
    return shards


def read_tasks(shard) -> list[dict]:
    """The read tasks of a folder shard: runs of FILES_PER_TASK members with their first row's index."""
    return [
        {"first_row": start, "members": list(shard.members[start : start + FILES_PER_TASK])}
        for start in range(0, len(shard.members), FILES_PER_TASK)
    ]


def _fetch(where: Storage) -> bytes | str:
    """A file's bytes, or the reason it cannot be read (storage being down raises, after retries)."""
    try:
        return with_retries(lambda: where.fs.cat_file(where.path), f"reading {where.uri}")
    except StorageUnavailable:
        raise
    except Exception as e:
        return f"unreadable file: {type(e).__name__}: {e}"


def read_folder_rows(shard_uri_: str, members: list[str]) -> Iterator[list[dict]]:
    """Rows for ``members`` (paths relative to the shard's input), in order, in slices of
    FILES_PER_SLICE files fetched concurrently. A file that cannot be read is an error row;
    one that is not an image is found by the decode stage (``undecodable image``)."""
    root = Storage.at(root_of(shard_uri_))
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for start in range(0, len(members), FILES_PER_SLICE):
            names = members[start : start + FILES_PER_SLICE]
            fetched = pool.map(_fetch, [root.join(name) for name in names])
            yield [
                {"id": name, "image": got, "error": None} if isinstance(got, bytes)
                else {"id": name, "image": None, "error": got}
                for name, got in zip(names, fetched)
            ]
