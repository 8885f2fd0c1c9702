"""Input shards on any fsspec filesystem: find them, read their footers, read their rows.

A shard is one Parquet file; its footer gives the row count (so the driver knows when a
shard's results are complete) and the schema (so a wrong column stops the run before any
model loads). Rows are read one row group at a time.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import ANSWERS, ID, IMAGE, IMAGE_URI, INPUT_COLUMNS, PROMPT, QUESTION
from ..errors import InputError, StorageUnavailable
from .retry import with_retries
from .storage import Storage


@dataclass(frozen=True)
class Shard:
    uri: str  # full URI of the input shard
    name: str  # output file stem, unique among the input's shards
    num_rows: int
    row_groups: tuple[int, ...]  # rows per row group


@dataclass(frozen=True)
class FailedShard:
    uri: str
    reason: str


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith((".", "_"))


def list_shards(input_uri: str) -> list[str]:
    """The Parquet files under ``input_uri`` (a file, or a directory searched recursively), sorted."""
    return [uri for uri, _ in list_shard_sizes(input_uri)]


def list_shard_sizes(input_uri: str) -> list[tuple[str, int | None]]:
    """:func:`list_shards` with each file's size from the same listing (None for a single file),
    so that reading a footer costs one request."""
    where = Storage.at(input_uri)
    fs, path = where.fs, where.path
    if not with_retries(lambda: fs.exists(path), f"looking for {input_uri}"):
        raise InputError(f"input {input_uri} does not exist")
    if with_retries(lambda: fs.isfile(path), f"looking at {input_uri}"):
        return [(where.uri, None)]
    found = with_retries(lambda: fs.find(path, detail=True), f"listing {input_uri}")
    files = sorted(p for p in found if p.endswith(".parquet") and not _hidden(p))
    if not files:
        raise InputError(f"input {input_uri} holds no .parquet shards")
    return [(fs.unstrip_protocol(p), found[p].get("size")) for p in files]


def check_schema(schema: pa.Schema, task: str, uri: str) -> None:
    """Refuse a shard whose columns cannot feed the task (before any model loads)."""
    names = set(schema.names)
    problems = []
    if ID not in names:
        problems.append(f"no '{ID}' column")
    if IMAGE not in names and IMAGE_URI not in names:
        problems.append(f"neither '{IMAGE}' nor '{IMAGE_URI}' column")
    if task == "vqa" and QUESTION not in names:
        problems.append(f"no '{QUESTION}' column (the VQA job needs questions)")
    expected = {
        ID: (pa.types.is_string, pa.types.is_large_string),
        IMAGE: (pa.types.is_binary, pa.types.is_large_binary),
        IMAGE_URI: (pa.types.is_string, pa.types.is_large_string),
        PROMPT: (pa.types.is_string, pa.types.is_large_string, pa.types.is_null),
        QUESTION: (pa.types.is_string, pa.types.is_large_string, pa.types.is_null),
        ANSWERS: (pa.types.is_list, pa.types.is_large_list, pa.types.is_null),
    }
    for column, checks in expected.items():
        if column in names and not any(check(schema.field(column).type) for check in checks):
            problems.append(f"column '{column}' has type {schema.field(column).type}")
    if problems:
        raise InputError(f"shard {uri} does not match the input schema: " + "; ".join(problems))


def shard_names(uris: list[str], input_uri: str) -> list[str]:
    """Output stems: each shard's path relative to the input, '/' replaced by '__'."""
    root = Storage.at(input_uri).path
    names = []
    for uri in uris:
        path = Storage.at(uri).path
        relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        names.append(relative.removesuffix(".parquet").replace("/", "__"))
    return names


def inspect_shard(uri: str, name: str, task: str, size: int | None = None) -> Shard | FailedShard:
    """One shard's footer: its row counts, and its schema checked for the task. ``size`` (bytes,
    from a listing) saves asking the store for it.

    A footer that cannot be read makes a failed shard (the others go on); a readable shard
    with the wrong columns stops the run with :class:`InputError`."""
    try:
        metadata = with_retries(lambda: read_footer(Storage.at(uri), size), f"reading the footer of {uri}")
        schema = metadata.schema.to_arrow_schema()
    except StorageUnavailable:
        raise
    except Exception as e:
        return FailedShard(uri, f"unreadable Parquet file: {type(e).__name__}: {e}")
    check_schema(schema, task, uri)
    groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    return Shard(uri=uri, name=name, num_rows=metadata.num_rows, row_groups=groups)


def inspect_shards(input_uri: str, task: str) -> tuple[list[Shard], list[FailedShard]]:
    """Every shard under ``input_uri``, inspected: (readable shards, failed shards)."""
    listed = list_shard_sizes(input_uri)
    names = shard_names([uri for uri, _ in listed], input_uri)
    inspected = [inspect_shard(uri, name, task, size) for (uri, size), name in zip(listed, names)]
    return [s for s in inspected if isinstance(s, Shard)], [s for s in inspected if isinstance(s, FailedShard)]


# A footer read asks for this many bytes from the end of the file: enough for the footer of
# almost any shard (a 10-column shard with 100 row groups has ~60 KiB), so one request does.
FOOTER_READ_BYTES = 64 * 1024
_MAGIC = b"PAR1"


def read_footer(where: Storage, size: int | None = None) -> pq.FileMetaData:
    """A Parquet file's footer in one ranged read when its ``size`` is known, two for larger footers."""
    fs, path = where.fs, where.path
    if size is None:
        size = fs.size(path)
    start = max(0, size - FOOTER_READ_BYTES)
    tail = fs.cat_file(path, start=start)  # to the end of the file, whatever its size is now
    needed = _footer_bytes(tail)
    if needed > len(tail) and start > 0:
        tail = fs.cat_file(path, start=max(0, start + len(tail) - needed))
    # The reader only looks at the end of what it is given, so the tail stands in for the file.
    return pq.read_metadata(pa.BufferReader(tail))


def _footer_bytes(tail: bytes) -> int:
    """How many bytes at the end of a Parquet file its footer takes (metadata, length, magic)."""
    if len(tail) < 8 or tail[-4:] != _MAGIC:
        return len(tail)  # not Parquet: the reader says so
    return int.from_bytes(tail[-8:-4], "little") + 8


def read_row_group(uri: str, row_group: int) -> pa.Table:
    """One row group of a shard, the input columns only (retried while storage is down)."""
    where = Storage.at(uri)

    def read() -> pa.Table:
        with where.open("rb") as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in parquet.schema_arrow.names if c in INPUT_COLUMNS]
            return parquet.read_row_group(row_group, columns=columns)

    return with_retries(read, f"reading row group {row_group} of {uri}")
