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
    row_groups: tuple[int, ...]  # rows per row group (Parquet; () for the other kinds)
    kind: str = "parquet"  # "parquet" | "webdataset" (pipeline/io/webdataset.py) | "folder" (pipeline/io/folders.py)
    members: tuple[str, ...] = ()  # folder shards: their image files, relative to the input


@dataclass(frozen=True)
class FailedShard:
    uri: str
    reason: str


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith((".", "_"))


def list_shards(input_uri: str) -> list[str]:
    """The shard files under ``input_uri`` (a file, or a directory searched recursively), sorted:
    its .parquet files, or its .tar files (WebDataset)."""
    kind, files = list_input(input_uri)
    if kind == "folder":
        raise InputError(f"input {input_uri} holds image files, not shard files")
    fs = Storage.at(input_uri).fs
    return [fs.unstrip_protocol(p) for p in sorted(files)]


# --- Input kinds: what --input holds decides how it is cut into shards and read. ---
KINDS = ("parquet", "webdataset", "folder")
KIND_FILES = {"parquet": ".parquet files", "webdataset": ".tar files", "folder": "image files"}


def file_kind(path: str) -> str | None:
    from . import folders, webdataset

    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(webdataset.TAR_SUFFIX):
        return "webdataset"
    return "folder" if folders.is_image_file(path) else None


def list_input(input_uri: str) -> tuple[str, dict[str, dict]]:
    """What ``input_uri`` holds: its kind and its files of that kind (path -> listing info).

    img2dataset writes a ``<n>.parquet`` of download statuses beside each ``<n>.tar``: next to
    tars, such same-named Parquet files are those sidecars, not shards. Any other mix of kinds
    is refused: which files are the data would be a guess."""
    where = Storage.at(input_uri)
    fs, path = where.fs, where.path
    fs.invalidate_cache(path)  # s3fs caches listings: a folder that changed since must be seen as it is
    if not with_retries(lambda: fs.exists(path), f"looking for {input_uri}"):
        raise InputError(f"input {input_uri} does not exist")
    if with_retries(lambda: fs.isfile(path), f"looking at {input_uri}"):
        found = {path: with_retries(lambda: fs.info(path), f"looking at {input_uri}")}
    else:
        found = with_retries(lambda: fs.find(path, detail=True), f"listing {input_uri}")
    by_kind: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
    for p, info in found.items():
        # A file named on its own is an input whatever its name says (Parquet unless it says otherwise).
        kind = file_kind(p) or ("parquet" if p == path else None)
        if kind and (p == path or not _hidden(p)):
            by_kind[kind][p] = info
    tars = {p.removesuffix(".tar") for p in by_kind["webdataset"]}
    by_kind["parquet"] = {p: i for p, i in by_kind["parquet"].items() if p.removesuffix(".parquet") not in tars}
    kinds = [kind for kind in KINDS if by_kind[kind]]
    if not kinds:
        raise InputError(f"input {input_uri} holds no .parquet shards, .tar shards or image files")
    if len(kinds) > 1:
        counts = ", ".join(f"{len(by_kind[k])} {KIND_FILES[k]}" for k in kinds)
        raise InputError(f"input {input_uri} mixes kinds of input ({counts}); point --input at one kind")
    return kinds[0], by_kind[kinds[0]]


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
        names.append(relative.removesuffix(".parquet").removesuffix(".tar").replace("/", "__"))
    return names


def inspect_shard(uri: str, name: str, task: str) -> Shard | FailedShard:
    """One shard's footer: its row counts, and its schema checked for the task.

    A footer that cannot be read makes a failed shard (the others go on); a readable shard
    with the wrong columns stops the run with :class:`InputError`."""
    try:
        metadata = with_retries(lambda: _footer(Storage.at(uri)), f"reading the footer of {uri}")
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
    from . import folders, webdataset

    kind, files = list_input(input_uri)
    if kind != "parquet" and task == "vqa":
        raise InputError(f"the VQA job needs questions: input {input_uri} holds {KIND_FILES[kind]}, "
                         "give it Parquet shards with a 'question' column")
    if kind == "folder":  # the listing says it all: shards are runs of files
        where = Storage.at(input_uri)
        root = Storage(where.fs, posixpath.dirname(where.path)) if where.path in files else where  # one image: its folder
        return folders.folder_shards(root.uri, files), []
    fs = Storage.at(input_uri).fs
    uris = [fs.unstrip_protocol(p) for p in sorted(files)]
    inspect = inspect_shard if kind == "parquet" else webdataset.inspect_tar
    inspected = [inspect(uri, name, task) for uri, name in zip(uris, shard_names(uris, input_uri))]
    return [s for s in inspected if isinstance(s, Shard)], [s for s in inspected if isinstance(s, FailedShard)]


def _footer(where: Storage) -> pq.FileMetaData:
    with where.open("rb") as f:
        return pq.ParquetFile(f).metadata


def read_row_group(uri: str, row_group: int) -> pa.Table:
    """One row group of a shard, the input columns only (retried while storage is down)."""
    where = Storage.at(uri)

    def read() -> pa.Table:
        with where.open("rb") as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in parquet.schema_arrow.names if c in INPUT_COLUMNS]
            return parquet.read_row_group(row_group, columns=columns)

    return with_retries(read, f"reading row group {row_group} of {uri}")
