"""Per-shard outputs: written whole, recognised as complete on a rerun, read back.

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

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, StorageUnavailable
from .inputs import Shard, read_footer
from .retry import with_retries
from .storage import Storage

META_SOURCE = b"hired.source_shard"
META_ROWS = b"hired.source_rows"
META_SETTINGS = b"hired.settings"


def output_path(output_uri: str, shard: Shard) -> str:
    return posixpath.join(output_uri.rstrip("/"), f"{shard.name}.parquet")


def completed_output(output_uri: str, shard: Shard, settings: dict, size: int | None = None) -> bool:
    """Whether the shard's output exists and is whole. An output made with other settings
    (another model or budget) is an error: mixing them would silently corrupt the dataset.
    ``size`` (bytes, from :func:`listed_outputs`) says the output exists and saves two requests."""
    where = Storage.at(output_path(output_uri, shard))
    if size is None and not where.exists():
        return False
    try:
        metadata = with_retries(lambda: read_footer(where, size), f"reading the footer of {where.path}")
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
            f"{where.path} was produced with other settings ({', '.join(changed)} differ); "
            "write to a new output location or pass --overwrite"
        )
    return True


def write_output(output_uri: str, shard: Shard, table: pa.Table, settings: dict) -> str:
    """Write a complete shard's results; the file appears whole or not at all."""
    if table.num_rows != shard.num_rows:
        raise AssertionError(f"{shard.uri}: {table.num_rows} results for {shard.num_rows} rows")
    final = Storage.at(output_path(output_uri, shard))
    fs = final.fs
    meta = dict(table.schema.metadata or {})
    meta.update(
        {META_SOURCE: shard.uri.encode(), META_ROWS: str(shard.num_rows).encode(), META_SETTINGS: json.dumps(settings).encode()}
    )
    table = table.replace_schema_metadata(meta)
    parent = posixpath.dirname(final.path)

    def write() -> None:
        fs.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f".{shard.name}.{uuid.uuid4().hex}.tmp")
        with fs.open(temporary, "wb") as f:
            pq.write_table(table, f)
        fs.mv(temporary, final.path)

    with_retries(write, f"writing {final.uri}")
    return final.uri


def remove_stale_temporaries(output_uri: str) -> int:
    """Delete temporary files a killed run left half-written (``.<shard>.<uuid>.tmp``).

    They never pass for outputs (outputs are ``*.parquet``); this only tidies up. One job
    writes to an output location at a time (``ray job submit --submission-id`` guards that)."""
    where = Storage.at(output_uri)
    if not where.exists():
        return 0
    listed = with_retries(lambda: where.fs.ls(where.path, detail=False), f"listing {output_uri}")
    stale = [p for p in listed if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
    for p in stale:
        with_retries(lambda p=p: where.fs.rm(p), f"removing {p}")
    return len(stale)


def output_files(output_uri: str) -> list[str]:
    """The result files under ``output_uri`` (paths on its filesystem), sorted; none if it is missing."""
    where = Storage.at(output_uri)
    if not where.exists():
        return []
    listed = with_retries(lambda: where.fs.ls(where.path, detail=False), f"listing {output_uri}")
    return sorted(p for p in listed if _is_result_file(p))


def _is_result_file(path: str) -> bool:
    return path.endswith(".parquet") and not posixpath.basename(path).startswith((".", "_"))


def listed_outputs(output_uri: str) -> dict[str, int]:
    """Every result file directly under ``output_uri`` (its path on the filesystem) with its size,
    from one fresh listing; empty if the location is missing."""
    where = Storage.at(output_uri)
    where.fs.invalidate_cache(where.path)  # a listing cached before a writer ran would be stale
    try:
        listed = with_retries(lambda: where.fs.ls(where.path, detail=True), f"listing {output_uri}")
    except FileNotFoundError:
        return {}
    return {e["name"]: e["size"] for e in listed if e["type"] == "file" and _is_result_file(e["name"])}


def read_outputs(output_uri: str) -> pa.Table | None:
    """All result rows under ``output_uri`` (for the run summary), or None if there are none."""
    where = Storage.at(output_uri)

    def read(p: str) -> pa.Table:
        with where.fs.open(p, "rb") as f:
            return pq.read_table(f)

    tables = [with_retries(lambda p=p: read(p), f"reading {p}") for p in output_files(output_uri)]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def check_output_writable(output_uri: str) -> None:
    """Fail fast on a missing bucket, a read-only location or a file in the way, before any model loads."""
    where = Storage.at(output_uri)
    fs, path = where.fs, where.path
    if where.is_s3:  # a mistyped bucket is an error, not a bucket to create
        bucket = path.split("/", 1)[0]
        try:
            exists = with_retries(lambda: fs.exists(bucket), f"checking bucket {bucket}")
        except StorageUnavailable as e:
            raise InputError(f"cannot reach the output {output_uri}: {e}") from None
        if not exists:
            raise InputError(f"the output bucket {bucket} does not exist (or is not visible with these credentials)")
    try:
        is_file = with_retries(lambda: fs.isfile(path), f"checking {output_uri}")
    except StorageUnavailable as e:
        raise InputError(f"cannot reach the output {output_uri}: {e}") from None
    if is_file:
        raise InputError(f"the output {output_uri} is a file, not a folder: give a folder for the results")
    probe = posixpath.join(path, f"._write_check_{uuid.uuid4().hex}")
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as e:
        raise InputError(f"cannot write to the output {output_uri}: {type(e).__name__}: {e}") from None
