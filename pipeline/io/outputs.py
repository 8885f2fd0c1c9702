"""The output location: one result file per input shard, written whole, recognised as complete on a rerun.

Shard ``<input>/a/b.parquet`` produces ``<output>/a__b.parquet`` holding exactly one row per input
row, written once the shard is complete. A file is written under a temporary name and moved into
place (a rename on local disks; on S3 an object appears whole or not at all), and its footer
records the source shard, its row count and the settings, so a rerun can tell a complete output
from a partial or foreign one.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, StorageUnavailable
from .formats.parquet import read_footer
from .location import Location
from .shard import Shard

META_SOURCE = b"hired.source_shard"
META_ROWS = b"hired.source_rows"
META_SETTINGS = b"hired.settings"


def is_result_file(path: str) -> bool:
    return path.endswith(".parquet") and not posixpath.basename(path).startswith((".", "_"))


class Outputs:
    """What the job writes under one output :class:`Location`."""

    def __init__(self, where: Location):
        self.where = where

    def file_of(self, shard: Shard) -> Location:
        return self.where.join(f"{shard.name}.parquet")

    def held(self) -> dict[str, int]:
        """Every result file directly under the output (its name, ``<shard name>.parquet``) with its
        size, from one fresh listing; empty if the location is missing."""
        fs, path = self.where.fs, self.where.path
        fs.invalidate_cache(path)  # a listing cached before a writer ran would be stale
        try:
            listed = self.where.retry.call(lambda: fs.ls(path, detail=True), f"listing {self.where.uri}")
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"]): e["size"] for e in listed
                if e["type"] == "file" and is_result_file(e["name"])}

    def result_files(self) -> list[str]:
        """The result files (paths on the output's filesystem), sorted; none if the location is missing."""
        return sorted(self.where.join(name).path for name in self.held())

    def is_complete(self, shard: Shard, settings: dict, size: int | None = None) -> bool:
        """Whether the shard's output exists and is whole. An output made with other settings
        (another model or budget) is an error: mixing them would silently corrupt the dataset.
        ``size`` (bytes, from :meth:`held`) says the output exists and saves two requests."""
        where = self.file_of(shard)
        if size is None and not where.exists():
            return False
        try:
            metadata = where.retry.call(lambda: read_footer(where, size), f"reading the footer of {where.path}")
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

    def write(self, shard: Shard, table: pa.Table, settings: dict) -> str:
        """Write a complete shard's results; the file appears whole or not at all. Returns its URI."""
        if table.num_rows != shard.num_rows:
            raise AssertionError(f"{shard.uri}: {table.num_rows} results for {shard.num_rows} rows")
        final = self.file_of(shard)
        fs = final.fs
        meta = dict(table.schema.metadata or {})
        meta.update({META_SOURCE: shard.uri.encode(), META_ROWS: str(shard.num_rows).encode(),
                     META_SETTINGS: json.dumps(settings).encode()})
        table = table.replace_schema_metadata(meta)
        parent = posixpath.dirname(final.path)

        def write() -> None:
            fs.makedirs(parent, exist_ok=True)
            temporary = posixpath.join(parent, f".{shard.name}.{uuid.uuid4().hex}.tmp")
            with fs.open(temporary, "wb") as f:
                pq.write_table(table, f)
            fs.mv(temporary, final.path)

        final.retry.call(write, f"writing {final.uri}")
        return final.uri

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a killed run left half-written (``.<shard>.<uuid>.tmp``).

        They never pass for outputs (outputs are ``*.parquet``); this only tidies up. One job
        writes to an output location at a time (``ray job submit --submission-id`` guards that)."""
        where = self.where
        if not where.exists():
            return 0
        listed = where.retry.call(lambda: where.fs.ls(where.path, detail=False), f"listing {where.uri}")
        stale = [p for p in listed if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
        for p in stale:
            where.retry.call(lambda p=p: where.fs.rm(p), f"removing {p}")
        return len(stale)

    def check_writable(self) -> None:
        """Fail fast on a missing bucket, a read-only location or a file in the way, before any model loads."""
        where = self.where
        fs, path = where.fs, where.path
        if where.is_s3:  # a mistyped bucket is an error, not a bucket to create
            bucket = path.split("/", 1)[0]
            try:
                exists = where.retry.call(lambda: fs.exists(bucket), f"checking bucket {bucket}")
            except StorageUnavailable as e:
                raise InputError(f"cannot reach the output {where.uri}: {e}") from None
            if not exists:
                raise InputError(f"the output bucket {bucket} does not exist (or is not visible with these credentials)")
        try:
            is_file = where.retry.call(lambda: fs.isfile(path), f"checking {where.uri}")
        except StorageUnavailable as e:
            raise InputError(f"cannot reach the output {where.uri}: {e}") from None
        if is_file:
            raise InputError(f"the output {where.uri} is a file, not a folder: give a folder for the results")
        probe = posixpath.join(path, f"._write_check_{uuid.uuid4().hex}")
        try:
            fs.makedirs(path, exist_ok=True)
            with fs.open(probe, "wb") as f:
                f.write(b"ok")
            fs.rm(probe)
        except Exception as e:
            raise InputError(f"cannot write to the output {where.uri}: {type(e).__name__}: {e}") from None
