"""Input shards and their outputs, on any fsspec filesystem (local, file://, s3://).

Outputs are tied to input shards: shard ``<input>/a/b.parquet`` produces
``<output>/a__b.parquet`` holding exactly one row per input row, written once
the shard is complete. A file is written under a temporary name and moved into
place (a rename on local disks; on S3 an object appears whole or not at all),
and its footer records the source shard, its row count and the settings, so a
rerun can tell a complete output from a partial or foreign one.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .retry import StorageUnavailable, with_retries
from .schema import ANSWERS, ID, IMAGE, IMAGE_URI, PROMPT, QUESTION

META_SOURCE = b"hired.source_shard"
META_ROWS = b"hired.source_rows"
META_SETTINGS = b"hired.settings"


class InputError(ValueError):
    """The input as a whole cannot be processed (no shards, wrong schema); raised before any model loads."""


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


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path for ``uri``; credentials and endpoints come from the standard
    AWS settings (environment or profiles), never from arguments that could end up in logs."""
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def list_shards(input_uri: str) -> list[str]:
    """The Parquet files under ``input_uri`` (a file, or a directory searched recursively), sorted."""
    fs, path = filesystem(input_uri)
    if not with_retries(lambda: fs.exists(path), f"looking for {input_uri}"):
        raise InputError(f"input {input_uri} does not exist")
    if with_retries(lambda: fs.isfile(path), f"looking at {input_uri}"):
        return [_full_uri(fs, path)]
    found = with_retries(lambda: fs.find(path), f"listing {input_uri}")
    files = sorted(p for p in found if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_")))
    if not files:
        raise InputError(f"input {input_uri} holds no .parquet shards")
    return [_full_uri(fs, p) for p in files]


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
    _, root = filesystem(input_uri)
    names = []
    for uri in uris:
        _, path = filesystem(uri)
        relative = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        names.append(relative.removesuffix(".parquet").replace("/", "__"))
    return names


def inspect_shards(input_uri: str, task: str) -> tuple[list[Shard], list[FailedShard]]:
    """Read every shard's footer: row counts for completeness, schemas for early errors.

    A shard whose footer cannot be read is reported as failed (the others go on);
    a readable shard with the wrong columns stops the run with :class:`InputError`.
    """
    uris = list_shards(input_uri)
    shards, failed = [], []
    for uri, name in zip(uris, shard_names(uris, input_uri)):
        fs, path = filesystem(uri)
        try:
            metadata = with_retries(lambda: _footer(fs, path), f"reading the footer of {uri}")
            schema = metadata.schema.to_arrow_schema()
        except StorageUnavailable:
            raise
        except Exception as e:
            failed.append(FailedShard(uri, f"unreadable Parquet file: {type(e).__name__}: {e}"))
            continue
        check_schema(schema, task, uri)
        groups = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        shards.append(Shard(uri=uri, name=name, num_rows=metadata.num_rows, row_groups=groups))
    return shards, failed


def _footer(fs, path: str):
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata


def read_row_group(uri: str, row_group: int) -> pa.Table:
    """One row group of a shard, the input columns only (retried while storage is down)."""
    fs, path = filesystem(uri)

    def read() -> pa.Table:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in parquet.schema_arrow.names if c in (ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ANSWERS)]
            return parquet.read_row_group(row_group, columns=columns)

    return with_retries(read, f"reading row group {row_group} of {uri}")


def output_path(output_uri: str, shard: Shard) -> str:
    return posixpath.join(output_uri.rstrip("/"), f"{shard.name}.parquet")


def completed_output(output_uri: str, shard: Shard, settings: dict) -> bool:
    """Whether the shard's output exists and is whole. An output made with other settings
    (another model or budget) is an error: mixing them would silently corrupt the dataset."""
    fs, path = filesystem(output_path(output_uri, shard))
    fs.invalidate_cache(posixpath.dirname(path))  # s3fs caches listings: ask the store itself
    if not with_retries(lambda: fs.exists(path), f"checking {path}"):
        return False
    try:
        metadata = with_retries(lambda: _footer(fs, path), f"reading the footer of {path}")
    except StorageUnavailable:
        raise
    except Exception:
        return False  # a damaged output is redone
    meta = metadata.metadata or {}
    if meta.get(META_SOURCE, b"").decode() != shard.uri or metadata.num_rows != shard.num_rows:
        return False
    recorded = json.loads(meta.get(META_SETTINGS, b"{}"))
    if recorded != settings:
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise InputError(
            f"{path} was produced with other settings ({', '.join(changed)} differ); "
            "write to a new output location or pass --overwrite"
        )
    return True


def write_output(output_uri: str, shard: Shard, table: pa.Table, settings: dict) -> str:
    """Write a complete shard's results; the file appears whole or not at all."""
    if table.num_rows != shard.num_rows:
        raise AssertionError(f"{shard.uri}: {table.num_rows} results for {shard.num_rows} rows")
    final = output_path(output_uri, shard)
    fs, final_path = filesystem(final)
    meta = dict(table.schema.metadata or {})
    meta.update(
        {META_SOURCE: shard.uri.encode(), META_ROWS: str(shard.num_rows).encode(), META_SETTINGS: json.dumps(settings).encode()}
    )
    table = table.replace_schema_metadata(meta)
    parent = posixpath.dirname(final_path)

    def write() -> None:
        fs.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f".{shard.name}.{uuid.uuid4().hex}.tmp")
        with fs.open(temporary, "wb") as f:
            pq.write_table(table, f)
        fs.mv(temporary, final_path)

    with_retries(write, f"writing {final}")
    return _full_uri(fs, final_path)


def remove_stale_temporaries(output_uri: str) -> int:
    """Delete temporary files a killed run left half-written (``.<shard>.<uuid>.tmp``).

    They never pass for outputs (outputs are ``*.parquet``); this only tidies up. One job
    writes to an output location at a time (``ray job submit --submission-id`` guards that)."""
    fs, path = filesystem(output_uri)
    fs.invalidate_cache(path)
    if not with_retries(lambda: fs.exists(path), f"checking {output_uri}"):
        return 0
    listed = with_retries(lambda: fs.ls(path, detail=False), f"listing {output_uri}")
    stale = [p for p in listed if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
    for p in stale:
        with_retries(lambda p=p: fs.rm(p), f"removing {p}")
    return len(stale)


def read_outputs(output_uri: str) -> pa.Table | None:
    """All result rows under ``output_uri`` (for the run summary), or None if there are none."""
    fs, path = filesystem(output_uri)
    fs.invalidate_cache(path)
    if not with_retries(lambda: fs.exists(path), f"checking {output_uri}"):
        return None
    listed = with_retries(lambda: fs.ls(path, detail=False), f"listing {output_uri}")
    files = sorted(p for p in listed if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_")))

    def read(p: str) -> pa.Table:
        with fs.open(p, "rb") as f:
            return pq.read_table(f)

    tables = [with_retries(lambda p=p: read(p), f"reading {p}") for p in files]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def check_output_writable(output_uri: str) -> None:
    """Fail fast on a missing bucket or a read-only location, before any model loads."""
    fs, path = filesystem(output_uri)
    probe = posixpath.join(path, f"._write_check_{uuid.uuid4().hex}")
    if "s3" in fs.protocol:  # a mistyped bucket is an error, not a bucket to create
        bucket = path.split("/", 1)[0]
        try:
            exists = with_retries(lambda: fs.exists(bucket), f"checking bucket {bucket}")
        except StorageUnavailable as e:
            raise InputError(f"cannot reach the output {output_uri}: {e}") from None
        if not exists:
            raise InputError(f"the output bucket {bucket} does not exist (or is not visible with these credentials)")
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as e:
        raise InputError(f"cannot write to the output {output_uri}: {type(e).__name__}: {e}") from None
