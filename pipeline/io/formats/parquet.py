"""Parquet shards: one file a shard; a read task a row group, read in bounded slices.

At plan time a shard's footer (one ranged read) gives its row counts, so the driver knows when
its results are complete, its fingerprint (the footer's hash, with the listing's size and ETag),
and its schema, which decides where each part of a row comes from
(:mod:`.parquet_schema`): a wrong or missing column stops the run before any model loads. Rows
are read in slices of at most :data:`SLICE_ROWS` rows or about :data:`SLICE_BYTES`, whatever the
size of the file's row groups, streamed through a small buffer.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from ...columns import ANSWERS, CHOICES, ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, SAMPLING, carried
from ...errors import StorageUnavailable
from ...row_errors import ErrorKind, RowError
from ..location import Location, in_threads
from ..shard import FailedShard, ReadTask, Shard
from .base import Format, listing_version, shard_names
from .parquet_schema import ParquetLayout, resolve_layout

if TYPE_CHECKING:
    from ...settings import JobSettings

# A footer read asks for this many bytes from the end of the file: enough for the footer of
# almost any shard (a 10-column shard with 100 row groups has ~60 KiB), so one request does.
FOOTER_READ_BYTES = 64 * 1024
_MAGIC = b"PAR1"
SLICE_ROWS = 256  # at most this many rows per slice ...
SLICE_BYTES = 32 * 2**20  # ... and about this many bytes (uncompressed), so big images make small slices
READ_BUFFER = 4 * 2**20  # column chunks are streamed through a buffer this size, not loaded whole


def claims(path: str) -> bool:
    return path.endswith(".parquet")


# ---------------------------------------------------------------- planning


def read_footer(where: Location, size: int | None = None) -> pq.FileMetaData:
    """A Parquet file's footer in one ranged read when its ``size`` is known, two for larger footers."""
    return _parse_footer(read_tail(where, size))


def read_tail(where: Location, size: int | None = None) -> bytes:
    """The end of a Parquet file, its footer (metadata, length, magic) whole at the end of it."""
    fs, path = where.fs, where.path
    if size is None:
        size = fs.size(path)
    start = max(0, size - FOOTER_READ_BYTES)
    tail = fs.cat_file(path, start=start)  # to the end of the file, whatever its size is now
    needed = _footer_bytes(tail)
    if needed > len(tail) and start > 0:
        tail = fs.cat_file(path, start=max(0, start + len(tail) - needed))
    return tail


def _parse_footer(tail: bytes) -> pq.FileMetaData:
    # The reader only looks at the end of what it is given, so the tail stands in for the file.
    return pq.read_metadata(pa.BufferReader(tail))


def fingerprint(tail: bytes, info: dict) -> str:
    """What a Parquet shard was when planned, from what planning reads anyway: the size and the
    store's ETag or version from the listing, and a hash of the footer, which holds every column
    chunk's offset, sizes and statistics, so a file rewritten with other rows changes it."""
    footer = tail[-_footer_bytes(tail):]
    return f"{listing_version(info, with_mtime=False)};footer={hashlib.sha256(footer).hexdigest()[:32]}"


def _footer_bytes(tail: bytes) -> int:
    """How many bytes at the end of a Parquet file its footer takes (metadata, length, magic)."""
    if len(tail) < 8 or tail[-4:] != _MAGIC:
        return len(tail)  # not Parquet: the reader says so
    return int.from_bytes(tail[-8:-4], "little") + 8


def inspect_shard(where: Location, name: str, settings: JobSettings, size: int | None = None,
                  info: dict | None = None) -> Shard | FailedShard:
    """One shard's footer: its row counts, its schema checked for the task, and its fingerprint.
    The listing's ``info`` (or ``size``, bytes) saves asking the store for the file's size.

    A footer that cannot be read makes a failed shard (the others go on); a readable shard
    with the wrong columns stops the run with :class:`InputError`."""
    info = dict(info or {})
    if info.get("size") is None:
        info["size"] = size
    try:
        if info["size"] is None:
            info["size"] = where.retry.call(lambda: where.fs.size(where.path), f"looking at {where.uri}")
        tail = where.retry.call(lambda: read_tail(where, info["size"]), f"reading the footer of {where.uri}")
        metadata = _parse_footer(tail)
        schema = metadata.schema.to_arrow_schema()
    except StorageUnavailable:
        raise
    except Exception as e:
        return FailedShard(where.uri, f"unreadable Parquet file: {type(e).__name__}: {e}", name)
    layout = resolve_layout(schema, settings.columns, settings.task, where.uri, settings.scoring)
    groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    kept = None if settings.scoring is None else pa.schema(
        [pa.field(name, schema.field(source).type) for name, source in layout.carried])
    return Shard(uri=where.uri, name=name, num_rows=metadata.num_rows, format="parquet", path=where.path,
                 plan=groups, id_type=layout.id_type, fingerprint=fingerprint(tail, info), benchmark=kept)


def inspect(input: Location, files: dict[str, dict], settings: JobSettings, threads: int, records=None):
    paths = list(files)
    jobs = list(zip(paths, shard_names(paths, input)))
    inspected = in_threads(lambda job: inspect_shard(input.at(job[0]), job[1], settings, info=files[job[0]]), jobs,
                           threads)
    return [s for s in inspected if isinstance(s, Shard)], [s for s in inspected if isinstance(s, FailedShard)]


def read_tasks(shard: Shard) -> list[ReadTask]:
    """One task per non-empty row group."""
    tasks, first = [], 0
    for group, rows in enumerate(shard.plan):
        if rows:
            tasks.append(ReadTask(shard.uri, shard.name, "parquet", shard.path, first, rows, part=group))
        first += rows
    return tasks


# ---------------------------------------------------------------- reading rows


def slice_rows(metadata: pq.FileMetaData, group: int, columns: list[str]) -> int:
    """Rows per slice for one row group, from its columns' uncompressed size in the footer."""
    meta = metadata.row_group(group)
    if meta.num_rows == 0:
        return 1
    wanted = set(columns)
    size = sum(meta.column(i).total_uncompressed_size for i in range(meta.num_columns)
               if meta.column(i).path_in_schema.split(".")[0] in wanted)
    return max(1, min(SLICE_ROWS, int(SLICE_BYTES * meta.num_rows / max(size, 1))))


def read_row_group(where: Location, group: int, settings: JobSettings) -> Iterator[tuple[ParquetLayout, pa.RecordBatch]]:
    """One row group in slices, each with the layout that says what its columns are. A transient
    storage error reopens the file and goes on from the first row not yet handed out."""
    rows_done = 0

    def open_from(_slices_done: int):
        return _open_slices(where, group, settings, skip=rows_done)

    for layout, batch in where.retry.resumable(open_from, f"reading row group {group} of {where.uri}"):
        rows_done += batch.num_rows
        yield layout, batch


def _open_slices(where: Location, group: int, settings: JobSettings, skip: int):
    """(layout, slice) past the first ``skip`` rows of a row group, the file closed at the end."""
    with where.open("rb") as f:
        parquet = pq.ParquetFile(f, buffer_size=READ_BUFFER, pre_buffer=False)
        layout = resolve_layout(parquet.schema_arrow, settings.columns, settings.task, where.uri, settings.scoring)
        wanted = layout.columns()
        rows = slice_rows(parquet.metadata, group, wanted)
        for batch in parquet.iter_batches(batch_size=rows, row_groups=[group], columns=wanted, use_threads=False):
            if batch.num_rows > skip:
                yield layout, batch.slice(skip)
            skip = max(0, skip - batch.num_rows)


def resolve_uri(value: str | None, shard_uri: str) -> str | None:
    """An image URI as given, or a relative path taken from the shard's own folder (not the
    job's working directory, which on a cluster is nowhere near the data)."""
    if not value:
        return None
    if "://" in value or value.startswith("/"):
        return value
    scheme, sep, path = shard_uri.partition("://")
    if not sep:
        scheme, path = "", shard_uri
    return scheme + sep + posixpath.normpath(posixpath.join(posixpath.dirname(path), value))


def _values(batch: pa.RecordBatch, column: str | None) -> list:
    return batch.column(column).to_pylist() if column is not None else [None] * batch.num_rows


def answer_texts(value, kind: str | None) -> list[str] | None:
    """One row's references as a list of strings, from any accepted shape (parquet_schema.answers_kind)."""
    if value is None:
        return None
    if kind == "string":
        return [value]
    if kind == "structs":
        return [str(a["answer"]) for a in value if a is not None and a.get("answer") is not None]
    return [str(a) for a in value if a is not None]


def sampling_text(value, kind: str | None) -> str | None:
    """A row's sampling overrides as JSON text (what crosses the stages; the generation stage checks it)."""
    if value is None:
        return None
    if kind == "struct":
        return json.dumps({k: v for k, v in value.items() if v is not None})
    return str(value)


def rows_of(layout: ParquetLayout, batch: pa.RecordBatch, task: ReadTask, first: int) -> dict[str, list]:
    """One slice as the read stage's columns, rows numbered from ``first``."""
    n = batch.num_rows
    if layout.id is None:
        ids = [f"{task.shard_name}/{i}" for i in range(first, first + n)]
    else:
        ids = [None if v is None else str(v) for v in _values(batch, layout.id)]
    raw = _values(batch, layout.image)
    if layout.image_kind == "struct":
        images = [None if v is None else v.get("bytes") for v in raw]
        uris = [None if v is None else resolve_uri(v.get("path"), task.shard_uri) for v in raw]
    elif layout.image_kind == "uri":
        images, uris = [None] * n, [resolve_uri(v, task.shard_uri) for v in raw]
    else:
        images, uris = raw, [resolve_uri(v, task.shard_uri) for v in _values(batch, layout.image_uri)]
    errors = [None if i is not None else RowError(ErrorKind.MISSING_FIELD, "id is null") for i in ids]
    if layout.image is not None and layout.image_uri is None:
        # One image column and it is null here (img2dataset: a failed download): name it.
        null_image = RowError(ErrorKind.MISSING_IMAGE, f"column '{layout.image}' is null")
        errors = [e or (null_image if images[i] is None and uris[i] is None else None) for i, e in enumerate(errors)]
    return {
        ID: ids,
        IMAGE: images,
        IMAGE_URI: uris,
        PROMPT: _values(batch, layout.prompt),
        QUESTION: _values(batch, layout.question),
        ANSWERS: [answer_texts(v, layout.answers_kind) for v in _values(batch, layout.answers)],
        SAMPLING: [sampling_text(v, layout.sampling_kind) for v in _values(batch, layout.sampling)],
        CHOICES: _values(batch, layout.choices),
        **{carried(name): _values(batch, source) for name, source in layout.carried},
        "error": errors,
    }


def read(input: Location, task: ReadTask, settings: JobSettings) -> Iterator[dict[str, list]]:
    first = task.first_row
    for layout, batch in read_row_group(input.at(task.path), task.part, settings):
        yield rows_of(layout, batch, task, first)
        first += batch.num_rows


FORMAT = Format(name="parquet", files=".parquet files", claims=claims, inspect=inspect, read_tasks=read_tasks,
                read=read, carries_questions=True)
