"""The output location: one result file per input shard, written whole, recognised as complete on a rerun.

Shard ``<input>/a/b.parquet`` produces ``<output>/a__b.parquet`` holding exactly one row per input
row, written once the shard is complete. A file is written under a temporary name and moved into
place (a rename on local disks; on S3 an object appears whole or not at all), and its footer
records the source shard, its fingerprint (what the input was when planned), its row count and
the settings, so a rerun can tell a complete output from a partial, stale or foreign one.
Results whose input shard is gone can be set aside under ``_removed/<run_id>/``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, StorageUnavailable
from .formats.parquet import read_footer
from .location import Location
from .shard import Shard

META_SOURCE = b"hired.source_shard"
META_FINGERPRINT = b"hired.source_fingerprint"
META_ROWS = b"hired.source_rows"
META_SETTINGS = b"hired.settings"
META_ROW_VERSIONS = b"hired.row_versions"  # per row, a digest of its input file's version (folder chunks)
REMOVED = "_removed"


def version_digest(version: str) -> str:
    """A file version as a row's footer entry: 16 hex digits, so 1,000 rows keep the footer within one read."""
    return hashlib.blake2b(version.encode(), digest_size=8).hexdigest()


def rows_per_input_row(settings: dict) -> int:
    """Result rows an input row makes under these (recorded) settings: one per prompt of ``--prompts``."""
    return len(settings.get("prompts") or ()) or 1


def is_result_file(path: str) -> bool:
    return path.endswith(".parquet") and not posixpath.basename(path).startswith((".", "_"))


def result_name(path: str) -> str:
    """A result file's shard name (its stem)."""
    return posixpath.basename(path).removesuffix(".parquet")


@dataclass(frozen=True)
class Recorded:
    """What a result file's footer says of how it was made; ``damaged`` when it cannot be read."""

    name: str
    source: str = ""
    fingerprint: str | None = None
    rows: int = 0
    settings: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict, repr=False)
    damaged: str | None = None

    @classmethod
    def of(cls, name: str, footer: pq.FileMetaData) -> Recorded:
        meta = footer.metadata or {}
        fingerprint = meta.get(META_FINGERPRINT)
        return cls(name=name, source=meta.get(META_SOURCE, b"").decode(), rows=footer.num_rows,
                   fingerprint=None if fingerprint is None else fingerprint.decode(),
                   settings=json.loads(meta.get(META_SETTINGS, b"{}")), metadata=meta)

    def describes(self, uri: str, fingerprint: str) -> bool:
        """Whether this output was made from ``uri`` as it is now."""
        return self.damaged is None and self.source == uri and self.fingerprint == fingerprint

    def row_versions(self) -> list[str] | None:
        """Per row, the digest of its input file's version (:func:`version_digest`), if recorded."""
        raw = self.metadata.get(META_ROW_VERSIONS)
        return None if raw is None else json.loads(raw)


class Outputs:
    """What the job writes under one output :class:`Location`."""

    def __init__(self, where: Location):
        self.where = where

    def file_of(self, shard: Shard) -> Location:
        return self.file_named(shard.name)

    def file_named(self, name: str) -> Location:
        return self.where.join(f"{name}.parquet")

    def held(self) -> dict[str, int]:
        """Every result file directly under the output (its name, ``<shard name>.parquet``) with its
        size, from one fresh listing; empty if the location is missing."""
        fs, path = self.where.fs, self.where.path
        fs.invalidate_cache(path)  # a listing cached before a writer ran would be stale
        try:
            listed = self.where.ask(lambda: fs.ls(path, detail=True), f"listing the output {self.where.uri}")
        except FileNotFoundError:
            return {}
        return {posixpath.basename(e["name"]): e["size"] for e in listed
                if e["type"] == "file" and is_result_file(e["name"])}

    def result_files(self) -> list[str]:
        """The result files (paths on the output's filesystem), sorted; none if the location is missing."""
        return sorted(self.where.join(name).path for name in self.held())

    def record(self, name: str, size: int | None = None) -> Recorded:
        """The footer of result file ``name`` (``size``, from :meth:`held`, saves a request)."""
        where = self.file_named(name)
        try:
            footer = where.retry.call(lambda: read_footer(where, size), f"reading the footer of {where.path}")
        except StorageUnavailable:
            raise
        except Exception as e:
            return Recorded(name=name, damaged=f"{type(e).__name__}: {e}")
        return Recorded.of(name, footer)

    def status(self, shard: Shard, recorded: Recorded | None, settings: dict) -> str | None:
        """None when ``recorded`` (the shard's output, if any) is complete for the shard as planned,
        else why it must be (re)done. An output made with other settings (another model or budget)
        is an error: mixing them would silently corrupt the dataset."""
        if recorded is None:
            return "new"
        if recorded.damaged is not None:
            return f"its output is damaged ({recorded.damaged})"
        if recorded.source != shard.uri:
            return f"its output was made from another source ({recorded.source or 'unknown'})"
        self.check_settings(recorded, settings)
        if recorded.fingerprint is None:
            return "its output records no fingerprint of its input"
        if recorded.fingerprint != shard.fingerprint or recorded.rows != shard.num_rows * rows_per_input_row(settings):
            return "changed since its output was written"
        return None

    def check_settings(self, recorded: Recorded, settings: dict) -> None:
        if recorded.settings != settings:
            changed = sorted(k for k in set(recorded.settings) | set(settings)
                             if k not in recorded.settings or k not in settings
                             or recorded.settings[k] != settings[k])
            raise InputError(
                f"{self.file_named(recorded.name).path} was produced with other settings ({', '.join(changed)} differ); "
                "write to a new output location or pass --overwrite"
            )

    def is_complete(self, shard: Shard, settings: dict, size: int | None = None) -> bool:
        """Whether the shard's output exists and is complete for the shard as planned."""
        if size is None and not self.file_of(shard).exists():
            return False
        return self.status(shard, self.record(shard.name, size), settings) is None

    def write(self, shard: Shard, table: pa.Table, settings: dict) -> str:
        """Write a complete shard's results; the file appears whole or not at all. Returns its URI."""
        if table.num_rows != shard.num_rows * rows_per_input_row(settings):
            raise AssertionError(f"{shard.uri}: {table.num_rows} results for {shard.num_rows} rows")
        final = self.file_of(shard)
        fs = final.fs
        meta = dict(table.schema.metadata or {})
        meta.update({META_SOURCE: shard.uri.encode(), META_FINGERPRINT: shard.fingerprint.encode(),
                     META_ROWS: str(shard.num_rows).encode(), META_SETTINGS: json.dumps(settings).encode()})
        if shard.versions:
            meta[META_ROW_VERSIONS] = json.dumps([version_digest(v) for v in shard.versions]).encode()
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

    def read_rows(self, name: str, rows: list[int] | None, columns: list[str] | None = None) -> pa.Table:
        """Rows (by index; None: all) of result file ``name``, in the order asked."""
        where = self.file_named(name)

        def read() -> pa.Table:
            with where.open("rb") as f:
                return pq.read_table(f, columns=columns)

        table = where.retry.call(read, f"reading {where.uri}")
        return table if rows is None else table.take(pa.array(rows, pa.int64()))

    def set_aside(self, names: list[str], run_id: str) -> str:
        """Move result files under ``_removed/<run_id>/`` (out of the results, kept). Returns that folder's URI."""
        folder = self.where.join(REMOVED, run_id)
        for name in names:
            source, target = self.file_named(name), folder.join(f"{name}.parquet")
            source.retry.call(lambda: source.fs.makedirs(folder.path, exist_ok=True), f"creating {folder.uri}")
            source.retry.call(lambda: source.fs.mv(source.path, target.path), f"moving {source.uri} to {target.uri}")
        return folder.uri

    def remove(self, names: list[str]) -> None:
        for name in names:
            where = self.file_named(name)
            where.retry.call(lambda: where.fs.rm(where.path), f"removing {where.uri}")

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a killed run left half-written (``.<shard>.<uuid>.tmp``).

        They never pass for outputs (outputs are ``*.parquet``); this only tidies up. One job
        writes to an output location at a time (``ray job submit --submission-id`` guards that)."""
        where = self.where
        if not where.exists():
            return 0
        listed = where.ask(lambda: where.fs.ls(where.path, detail=False), f"listing the output {where.uri}")
        stale = [p for p in listed if posixpath.basename(p).startswith(".") and p.endswith(".tmp")]
        for p in stale:
            where.retry.call(lambda p=p: where.fs.rm(p), f"removing {p}")
        return len(stale)

    def check_writable(self) -> None:
        """Fail fast on credentials that do not work, a missing bucket, a read-only location or a
        file in the way, before any model loads, and leave the output as it was: nothing is created
        (the probe file is written where the output will be, or in its nearest existing folder,
        and deleted)."""
        where = self.where
        fs, path = where.fs, where.path
        try:
            where.check_bucket("output")
            is_file = where.ask(lambda: fs.isfile(path), f"looking at the output {where.uri}")
        except StorageUnavailable as e:
            raise InputError(f"cannot reach the output {where.uri}: {e}") from None
        if is_file:
            raise InputError(f"the output {where.uri} is a file, not a folder: give a folder for the results")
        folder = path
        if where.is_local:  # folders are real here: probe the nearest one that exists, creating none
            while not fs.exists(folder) and posixpath.dirname(folder) != folder:
                folder = posixpath.dirname(folder)
            if fs.isfile(folder):
                raise InputError(f"the output {where.uri} is under a file ({folder}), not a folder")
        probe = where.at(posixpath.join(folder, f"._write_check_{uuid.uuid4().hex}"))

        def write_probe() -> None:
            with fs.open(probe.path, "wb") as f:
                f.write(b"ok")
            fs.rm(probe.path)

        try:
            probe.ask(write_probe, f"cannot write to the output {where.uri}")
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot write to the output {where.uri}: {type(e).__name__}: {e}") from None
