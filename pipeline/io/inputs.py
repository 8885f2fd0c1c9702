"""Input shards on any fsspec filesystem: find them, read their footers, read their rows.

A Parquet shard is one file; its footer gives the row count (so the driver knows when a
shard's results are complete) and the schema, which decides where each part of a row comes
from (:class:`ParquetLayout`): a wrong or missing column stops the run before any model
loads. Rows are read in bounded slices, whatever the size of the file's row groups.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import ColumnMap
from ..errors import InputError, StorageUnavailable
from .retry import RETRY_SECONDS, is_transient, with_retries
from . import folders, webdataset
from .shard import FailedShard, Shard
from .storage import Storage, in_threads

log = logging.getLogger("hired.pipeline")


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith((".", "_"))


def file_kind(path: str) -> str | None:
    """What a file's name says it holds."""
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(webdataset.TAR_SUFFIX):
        return "webdataset"
    return "folder" if folders.is_image_file(path) else None


KINDS = ("parquet", "webdataset", "folder")
KIND_FILES = {"parquet": ".parquet files", "webdataset": ".tar files", "folder": "image files"}


def list_files(input_uri: str) -> dict[str, dict]:
    """Every visible file under ``input_uri`` (a file, or a directory searched recursively): path ->
    listing info (its ``size`` among others), sorted, from one listing asked of the store itself
    (s3fs caches listings, and a folder that changed since must be seen as it is)."""
    where = Storage.at(input_uri)
    fs, path = where.fs, where.path
    fs.invalidate_cache(path)
    if not with_retries(lambda: fs.exists(path), f"looking for {input_uri}"):
        raise InputError(f"input {input_uri} does not exist")
    if with_retries(lambda: fs.isfile(path), f"looking at {input_uri}"):
        return {path: with_retries(lambda: fs.info(path), f"looking at {input_uri}")}
    found = with_retries(lambda: fs.find(path, detail=True), f"listing {input_uri}")
    return {p: found[p] for p in sorted(found) if not _hidden(p)}


def list_input(input_uri: str) -> tuple[str, dict[str, dict]]:
    """What ``input_uri`` holds: its kind and its files of that kind (path -> listing info), sorted.

    A file named on its own is an input whatever its name says (Parquet unless it says otherwise).
    Parquet shards win over image files beside them, which are the pictures their relative image
    paths point at. img2dataset writes a ``<n>.parquet`` of download statuses
    beside each ``<n>.tar``: next to tars, such same-named Parquet files are those sidecars, not
    shards. Any other mix of kinds is refused: which files are the data would be a guess."""
    path = Storage.at(input_uri).path
    found = list_files(input_uri)
    by_kind: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
    for p, info in found.items():
        kind = file_kind(p) or ("parquet" if p == path else None)
        if kind:
            by_kind[kind][p] = info
    tars = {p.removesuffix(webdataset.TAR_SUFFIX) for p in by_kind["webdataset"]}
    by_kind["parquet"] = {p: i for p, i in by_kind["parquet"].items() if p.removesuffix(".parquet") not in tars}
    kinds = [kind for kind in KINDS if by_kind[kind]]
    if kinds == ["parquet", "folder"]:
        kinds = ["parquet"]
    if not kinds:
        raise InputError(f"input {input_uri} holds no .parquet shards (nor .tar shards or image files)")
    if len(kinds) > 1:
        counts = ", ".join(f"{len(by_kind[k])} {KIND_FILES[k]}" for k in kinds)
        raise InputError(f"input {input_uri} mixes kinds of input ({counts}); point --input at one kind")
    return kinds[0], by_kind[kinds[0]]


def list_shards(input_uri: str) -> list[str]:
    """The shard files (Parquet or WebDataset tars) under ``input_uri``, sorted, as URIs."""
    kind, files = list_input(input_uri)
    if kind == "folder":
        raise InputError(f"input {input_uri} holds image files, not shard files")
    fs = Storage.at(input_uri).fs
    return [fs.unstrip_protocol(p) for p in files]


# ---------------------------------------------------------------- where each part of a row comes from


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_bytes(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t)


def _struct_field(t: pa.DataType, name: str) -> pa.DataType | None:
    if not pa.types.is_struct(t) or t.get_field_index(name) < 0:
        return None
    return t.field(name).type


def image_kind(t: pa.DataType) -> str | None:
    """'bytes' (encoded image), 'struct' (Hugging Face ``Image()``: {bytes, path}), 'uri', or None."""
    if _is_bytes(t):
        return "bytes"
    if _is_text(t):
        return "uri"
    data, path = _struct_field(t, "bytes"), _struct_field(t, "path")
    if data is None and path is None:
        return None
    fits = (data is None or _is_bytes(data)) and (path is None or _is_text(path))
    return "struct" if fits else None


def answers_kind(t: pa.DataType) -> str | None:
    """'list' (of strings), 'string' (one reference), 'structs' (a list of {answer, ...}: VQAv2 on the hub)."""
    if pa.types.is_null(t):
        return "list"
    if _is_text(t):
        return "string"
    if _is_list(t):
        item = t.value_type
        if _is_text(item) or pa.types.is_null(item):
            return "list"
        answer = _struct_field(item, "answer")
        if answer is not None and _is_text(answer):
            return "structs"
    return None


def id_type(t: pa.DataType) -> str | None:
    if _is_text(t) or pa.types.is_null(t):
        return "string"
    if pa.types.is_integer(t) and not (pa.types.is_uint64(t)):
        return "int64"
    return None


@dataclass(frozen=True)
class ParquetLayout:
    """Where each part of a row comes from in one Parquet shard (None: not in this shard)."""

    id: str | None  # None: the id is the row's place, '<shard name>/<row index>'
    id_type: str  # "string" or "int64"
    image: str | None
    image_kind: str | None  # see image_kind()
    image_uri: str | None  # a URI column used where `image` is null (the default layout's image_uri)
    prompt: str | None
    question: str | None
    answers: str | None
    answers_kind: str | None  # see answers_kind()

    def columns(self) -> list[str]:
        """The shard's columns to read, each once."""
        named = [self.id, self.image, self.image_uri, self.prompt, self.question, self.answers]
        return list(dict.fromkeys(c for c in named if c is not None))


IMAGE_TYPES = "encoded bytes (binary), a Hugging Face Image() struct {bytes, path}, or a URI string"
ANSWER_TYPES = "a list of strings, one string, or a list of structs with an 'answer' string (VQAv2 on the hub)"


def resolve_layout(schema: pa.Schema, columns: ColumnMap, task: str, uri: str) -> ParquetLayout:
    """Match a shard's schema to the task and the column mapping; refuse it with every problem
    named (column, type, and the flag that picks another column) before any model loads."""
    names = set(schema.names)
    problems: list[str] = []

    def pick(part: str, default: str | None, required: bool, why: str = "") -> str | None:
        """The column for ``part``: the one named on the command line (which must exist), else the default if present."""
        named = getattr(columns, part)
        if named is not None:
            if named not in names:
                problems.append(f"no column '{named}' (given with {columns.flag(part)})")
                return None
            return named
        if default in names:
            return default
        if required:
            problems.append(f"no '{default}' column{why}; name yours with {columns.flag(part)}")
        return None

    def typed(part: str, column: str | None, check, expected: str):
        if column is None:
            return None
        kind = check(schema.field(column).type)
        if kind is None:
            problems.append(f"column '{column}' has type {schema.field(column).type}; the {part} column "
                            f"({columns.flag(part)}) must hold {expected}")
        return kind

    ident = pick("id", "id", required=False)
    identity = typed("id", ident, id_type, "strings or integers")

    image_uri = None
    if columns.image is not None:
        image = pick("image", None, required=True)
    elif "image" in names:
        image = "image"
        image_uri = "image_uri" if "image_uri" in names else None
    elif "image_uri" in names:
        image = "image_uri"
    else:
        image = None
        problems.append(f"neither 'image' nor 'image_uri' column; name your image column with "
                        f"{columns.flag('image')} (e.g. --image-column jpg)")
    shape = typed("image", image, image_kind, IMAGE_TYPES)
    if image_uri is not None and typed("image", image_uri, lambda t: "uri" if _is_text(t) else None,
                                       "a URI string") is None:
        image_uri = None
    if shape == "uri":
        image_uri = None  # one URI column is enough

    text = lambda t: "text" if _is_text(t) or pa.types.is_null(t) else None  # noqa: E731
    prompt = question = answers = None
    answers_shape = None
    if task == "vqa":
        question = pick("question", "question", required=True, why=" (the VQA job needs questions)")
        typed("question", question, text, "strings")
        answers = pick("answers", "answers", required=False)
        answers_shape = typed("answers", answers, answers_kind, ANSWER_TYPES)
    else:
        prompt = pick("prompt", "prompt", required=False)
        typed("prompt", prompt, text, "strings")
    if problems:
        raise InputError(f"shard {uri} does not match the input schema: " + "; ".join(problems))
    return ParquetLayout(id=ident, id_type=identity or "string", image=image, image_kind=shape, image_uri=image_uri,
                         prompt=prompt, question=question, answers=answers, answers_kind=answers_shape)


# ---------------------------------------------------------------- planning: one shard's footer


def shard_names(uris: list[str], input_uri: str) -> list[str]:
    """Output stems: each shard's path relative to the input, '/' replaced by '__'."""
    root = Storage.at(input_uri).path
    names = []
    for uri in uris:
        path = Storage.at(uri).path
        relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        names.append(relative.removesuffix(".parquet").removesuffix(webdataset.TAR_SUFFIX).replace("/", "__"))
    return names


def inspect_shard(
    uri: str, name: str, task: str, columns: ColumnMap = ColumnMap(), size: int | None = None
) -> Shard | FailedShard:
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
    layout = resolve_layout(schema, columns, task, uri)
    groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    return Shard(uri=uri, name=name, num_rows=metadata.num_rows, row_groups=groups, id_type=layout.id_type)


def one_id_type(shards: list[Shard]) -> list[Shard]:
    """Integer ids stay integers only if every shard's are: outputs of one input share a schema."""
    if all(s.id_type == "int64" for s in shards):
        return shards
    return [replace(s, id_type="string") for s in shards]


def inspect_shards(
    input_uri: str, task: str, columns: ColumnMap = ColumnMap(), threads: int = 1
) -> tuple[list[Shard], list[FailedShard]]:
    """Every shard under ``input_uri`` from one listing, inspected by up to ``threads`` at once
    (Parquet footers, tar sample counts; a folder's listing says it all): (readable shards,
    failed shards), each in input order."""
    kind, files = list_input(input_uri)
    if kind != "parquet" and task == "vqa":
        raise InputError(f"the VQA job needs questions: input {input_uri} holds {KIND_FILES[kind]}, "
                         "give it Parquet shards with a 'question' column")
    where = Storage.at(input_uri)
    if kind == "folder":
        root = Storage(where.fs, posixpath.dirname(where.path)) if where.path in files else where  # one image: its folder
        return folders.folder_shards(root.uri, files), []
    uris = [where.fs.unstrip_protocol(p) for p in files]
    jobs = list(zip(uris, shard_names(uris, input_uri), [info.get("size") for info in files.values()]))
    if kind == "webdataset":
        inspected = in_threads(lambda job: webdataset.inspect_tar(job[0], job[1], task), jobs, threads)
    else:
        inspected = in_threads(lambda job: inspect_shard(job[0], job[1], task, columns, size=job[2]), jobs, threads)
    shards = [s for s in inspected if isinstance(s, Shard)]
    return one_id_type(shards), [s for s in inspected if isinstance(s, FailedShard)]


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


# ---------------------------------------------------------------- reading rows in bounded slices

SLICE_ROWS = 256  # at most this many rows per slice ...
SLICE_BYTES = 32 * 2**20  # ... and about this many bytes (uncompressed), so big images make small slices
READ_BUFFER = 4 * 2**20  # Parquet column chunks are streamed through a buffer this size, not loaded whole


def slice_rows(metadata: pq.FileMetaData, group: int, columns: list[str]) -> int:
    """Rows per slice for one row group, from its columns' uncompressed size in the footer."""
    meta = metadata.row_group(group)
    if meta.num_rows == 0:
        return 1
    wanted = set(columns)
    size = sum(meta.column(i).total_uncompressed_size for i in range(meta.num_columns)
               if meta.column(i).path_in_schema.split(".")[0] in wanted)
    return max(1, min(SLICE_ROWS, int(SLICE_BYTES * meta.num_rows / max(size, 1))))


def read_row_group_slices(
    uri: str, group: int, columns: ColumnMap, task: str
) -> Iterator[tuple[ParquetLayout, pa.RecordBatch]]:
    """One row group of a shard, in slices of at most :data:`SLICE_ROWS` rows / about
    :data:`SLICE_BYTES`, with the layout that says what each column is.

    Memory stays bounded by the slice, not the row group: the file is streamed through a small
    buffer. A transient storage error is retried from the first row not yet handed out."""
    where = Storage.at(uri)
    what = f"reading row group {group} of {uri}"
    done, deadline = 0, None
    while True:
        stream = with_retries(lambda: _open_slices(where, group, columns, task, done), what)
        try:
            for layout, batch in stream:
                done += batch.num_rows
                yield layout, batch
            return
        except Exception as error:
            if isinstance(error, StorageUnavailable) or not is_transient(error):
                raise
            # Storage failed mid-way: reopen and go on from the first row not yet handed out.
            deadline = deadline or time.monotonic() + RETRY_SECONDS
            if time.monotonic() > deadline:
                raise StorageUnavailable(f"{what}: storage unavailable: {type(error).__name__}: {error}") from None
            log.warning("%s: %s: %s after %d rows; reopening", what, type(error).__name__, error, done)
            time.sleep(1.0)


def _open_slices(where: Storage, group: int, columns: ColumnMap, task: str, skip: int):
    """Open the shard and return an iterator of (layout, slice) past the first ``skip`` rows;
    the first slice is read here, so opening errors surface to the caller's retries."""
    f = where.open("rb")
    try:
        parquet = pq.ParquetFile(f, buffer_size=READ_BUFFER, pre_buffer=False)
        layout = resolve_layout(parquet.schema_arrow, columns, task, where.uri)
        wanted = layout.columns()
        rows = slice_rows(parquet.metadata, group, wanted)
        batches = parquet.iter_batches(batch_size=rows, row_groups=[group], columns=wanted, use_threads=False)
        first = _skip(batches, skip)
    except BaseException:
        f.close()
        raise
    return _slices(f, layout, first, batches)


def _skip(batches, skip: int) -> pa.RecordBatch | None:
    """Advance past ``skip`` rows; the first batch at or after it (trimmed), or None at the end."""
    for batch in batches:
        if batch.num_rows > skip:
            return batch.slice(skip)
        skip -= batch.num_rows
    return None


def _slices(f, layout: ParquetLayout, first: pa.RecordBatch | None, batches):
    try:
        if first is not None:
            yield layout, first
            for batch in batches:
                yield layout, batch
    finally:
        f.close()
