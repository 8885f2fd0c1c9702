"""Input formats: one module each, behind one small interface, in one registry.

A format says which files it reads (``claims``), turns the files of an input into shards at plan
time (``inspect``: row counts, schema checks), cuts a shard into read tasks (``read_tasks``) and
reads a task's rows in bounded slices (``read``). Planning lists the input once and picks the
format here (:func:`inspect_input`); the read stage dispatches on ``ReadTask.format``.

A new format is a module here and an entry in :data:`FORMATS`.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa

from ...errors import InputError
from ..location import Location
from ..shard import FailedShard, Shard
from . import folder, parquet, webdataset
from .base import Format, Records

if TYPE_CHECKING:
    from ...settings import JobSettings


FORMATS: dict[str, Format] = {f.name: f for f in (parquet.FORMAT, webdataset.FORMAT, folder.FORMAT)}


def get(name: str) -> Format:
    return FORMATS[name]


def _hidden(relative: str) -> bool:
    """A file under a folder or name starting with '.' or '_' (Spark's and Hadoop's ``_temporary``,
    ``_SUCCESS``, ``.staging``) is no input: the rule Hadoop, Spark and Arrow's datasets apply."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def list_files(input: Location) -> dict[str, dict]:
    """Every visible file under ``input`` (a file, or a directory searched recursively): path ->
    listing info (``size``, ETag or mtime), sorted, from one listing asked of the store itself
    (s3fs caches listings, and a folder that changed since must be seen as it is). Credentials,
    permissions or a bucket that do not work stop here, naming what to set (InputError)."""
    fs, path = input.fs, input.path
    fs.invalidate_cache(path)
    # The listing first: a store's refusal of a listing says why (a HEAD's says only "Forbidden").
    found = input.ask(lambda: fs.find(path, detail=True), f"listing the input {input.uri}")
    if path in found:  # a file named on its own
        return {path: found[path]}
    if not found and not input.ask(lambda: fs.exists(path), f"looking for the input {input.uri}"):
        input.check_bucket("input")
        raise InputError(f"input {input.uri} does not exist")
    return {p: found[p] for p in sorted(found) if not _hidden(posixpath.relpath(p, path))}


def choose_format(input: Location, found: dict[str, dict]) -> tuple[Format, dict[str, dict]]:
    """The input's format and its files of that format.

    A file named on its own is an input whatever its name says (Parquet unless it says otherwise).
    Parquet shards win over image files beside them, which are the pictures their relative image
    paths point at. img2dataset writes a ``<n>.parquet`` of download statuses beside each
    ``<n>.tar``: next to tars, such same-named Parquet files are those sidecars, not shards. Any
    other mix of formats is refused: which files are the data would be a guess."""
    parquet, webdataset, folder = FORMATS["parquet"], FORMATS["webdataset"], FORMATS["folder"]
    claimed: dict[str, dict[str, dict]] = {name: {} for name in FORMATS}
    for p, info in found.items():
        owner = next((f for f in FORMATS.values() if f.claims(p)), parquet if p == input.path else None)
        if owner is not None:
            claimed[owner.name][p] = info
    tars = {posixpath.splitext(p)[0] for p in claimed[webdataset.name]}
    claimed[parquet.name] = {p: i for p, i in claimed[parquet.name].items() if posixpath.splitext(p)[0] not in tars}
    present = [name for name in FORMATS if claimed[name]]
    if present == [parquet.name, folder.name]:
        present = [parquet.name]
    if not present:
        raise InputError(f"input {input.uri} holds no .parquet shards (nor .tar shards or image files)")
    if len(present) > 1:
        counts = ", ".join(f"{len(claimed[name])} {FORMATS[name].files}" for name in present)
        raise InputError(f"input {input.uri} mixes kinds of input ({counts}); point --input at one kind")
    return FORMATS[present[0]], claimed[present[0]]


def inspect_input(input: Location, settings: JobSettings, threads: int = 1,
                  records: Records | None = None) -> tuple[list[Shard], list[FailedShard]]:
    """Every shard of the input from one listing, inspected by up to ``threads`` at once: (readable
    shards, failed shards), each in input order. Integer ids stay integers only if every shard's
    are: the outputs of one input share a schema. ``records``: what the output holds, by name (a
    format may skip inspecting a shard its output describes). Two shards that would write one
    output file (``sub/x.parquet`` and ``sub__x.parquet``) stop the run, naming both."""
    form, files = choose_format(input, list_files(input))
    if settings.task == "vqa" and not form.carries_questions:
        raise InputError(f"the VQA job needs questions: input {input.uri} holds {form.files}, "
                         "give it Parquet shards with a 'question' column")
    for part in ("sampling", "choices"):
        if getattr(settings.columns, part) is not None and not form.carries_questions:
            raise InputError(f"{settings.columns.flag(part)}: input {input.uri} holds {form.files}, which have no "
                             "columns; per-row settings come from Parquet shards")
    shards, failed = form.inspect(input, files, settings, threads, records)
    check_unique_names(shards + failed)
    if not all(s.id_type == "int64" for s in shards):
        shards = [replace(s, id_type="string") for s in shards]
    return common_benchmark_types(shards), failed


def check_unique_names(shards: list[Shard | FailedShard]) -> None:
    first: dict[str, str] = {}
    for shard in shards:
        if not shard.name:
            continue
        if shard.name in first:
            raise InputError(f"input shards {first[shard.name]} and {shard.uri} would both write {shard.name}.parquet "
                             "(the output names a shard by its path with '/' as '__'): rename one of them")
        first[shard.name] = shard.uri


def common_benchmark_types(shards: list[Shard]) -> list[Shard]:
    """The shards with one type for each benchmark column, every shard's joined (int32 and int64
    make int64, null and string make string); types that do not join are refused."""
    schemas = [s.benchmark for s in shards if s.benchmark is not None]
    if not schemas:
        return shards
    try:
        common = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise InputError(f"the shards hold a benchmark column in types that do not join: {error}") from None
    return [replace(s, benchmark=common) for s in shards]
