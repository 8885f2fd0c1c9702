"""The read stage: one read task in (a Parquet row group, a WebDataset tar, a run of image
files), its rows out in bounded slices.

A generator, so Ray Data gets a row group as several small batches rather than one that
grows with the row group. Every slice has the same columns, whatever the input's shape:
``id, image, image_uri, prompt, question, answers, error, source_shard, row_index``:

* ``id``: the input's id as a string (integer ids are turned back into integers when the
  shard's output is written, see :class:`pipeline.job.collect.ShardCollector`), or the row's
  place ``<shard name>/<row index>`` when the input has no id column;
* ``image`` (encoded bytes) and/or ``image_uri`` (a URI, relative paths already resolved
  against the shard's folder), from a binary, Hugging Face ``Image()`` or string column;
* ``answers``: the VQA references as a list of strings, whichever of the accepted shapes the
  input holds them in.

Rows a task cannot read still come out, one error row per row (the count is known from the
footer), so the shard completes and says why.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from ..columns import ANSWERS, ERROR, ID, IMAGE, IMAGE_URI, INPUT_COLUMNS, PROMPT, QUESTION, ROW_INDEX, SOURCE_SHARD
from ..columns import ColumnMap, object_array
from ..errors import StorageUnavailable
from ..io import folders, webdataset
from ..io.inputs import ParquetLayout, Shard, read_row_group_slices


def read_tasks(shards: list[Shard]) -> list[dict]:
    """The read stage's work: one task per non-empty row group (Parquet), one per tar (WebDataset:
    a tar is read in one pass), one per run of files (folder). Every task has the same keys."""
    tasks = []
    for shard in shards:
        base = {"shard": shard.uri, "name": shard.name, "kind": shard.kind, "row_group": -1, "members": []}
        if shard.kind == "webdataset":
            tasks.append(dict(base, first_row=0, num_rows=shard.num_rows))
        elif shard.kind == "folder":
            tasks += [dict(base, first_row=t["first_row"], num_rows=len(t["members"]), members=t["members"])
                      for t in folders.read_tasks(shard)]
        else:
            first = 0
            for group, rows in enumerate(shard.row_groups):
                if rows:
                    tasks.append(dict(base, row_group=group, first_row=first, num_rows=rows))
                first += rows
    return tasks


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
    """One row's references as a list of strings, from any accepted shape (see inputs.answers_kind)."""
    if value is None:
        return None
    if kind == "string":
        return [value]
    if kind == "structs":
        return [str(a["answer"]) for a in value if a is not None and a.get("answer") is not None]
    return [str(a) for a in value if a is not None]


def parquet_rows(layout: ParquetLayout, batch: pa.RecordBatch, shard_uri: str, shard_name: str, first: int) -> dict:
    """One slice of a Parquet shard as the read stage's columns (lists), rows numbered from ``first``."""
    n = batch.num_rows
    places = range(first, first + n)
    if layout.id is None:
        ids = [f"{shard_name}/{i}" for i in places]
    else:
        ids = [None if v is None else str(v) for v in _values(batch, layout.id)]
    raw = _values(batch, layout.image)
    if layout.image_kind == "struct":
        images = [None if v is None else v.get("bytes") for v in raw]
        uris = [None if v is None else resolve_uri(v.get("path"), shard_uri) for v in raw]
    elif layout.image_kind == "uri":
        images, uris = [None] * n, [resolve_uri(v, shard_uri) for v in raw]
    else:
        images, uris = raw, [resolve_uri(v, shard_uri) for v in _values(batch, layout.image_uri)]
    rows = {
        ID: ids,
        IMAGE: images,
        IMAGE_URI: uris,
        PROMPT: _values(batch, layout.prompt),
        QUESTION: _values(batch, layout.question),
        ANSWERS: [answer_texts(v, layout.answers_kind) for v in _values(batch, layout.answers)],
    }
    rows[ERROR] = [None if i is not None else "missing field: id is null" for i in ids]
    if layout.image is not None and layout.image_uri is None:
        # One image column and it is null here (img2dataset: a failed download): name it.
        for i in range(n):
            if rows[ERROR][i] is None and images[i] is None and uris[i] is None:
                rows[ERROR][i] = f"missing image: column '{layout.image}' is null"
    return rows


def error_rows(count: int, reason: str) -> dict:
    rows = {c: [None] * count for c in INPUT_COLUMNS}
    rows[ERROR] = [reason] * count
    return rows


def _finish(rows: dict, uri: str, first: int) -> dict[str, np.ndarray]:
    n = len(rows[ERROR])
    rows[SOURCE_SHARD] = [uri] * n
    rows[ROW_INDEX] = list(range(first, first + n))
    return {k: object_array(v) for k, v in rows.items()}


def _parquet_task(request: dict, columns: ColumnMap, task: str) -> Iterator[dict[str, np.ndarray]]:
    uri = str(request["shard"][0])
    name = str(request["name"][0]) if "name" in request else posixpath.basename(uri).removesuffix(".parquet")
    group, first, count = int(request["row_group"][0]), int(request["first_row"][0]), int(request["num_rows"][0])
    done = 0
    try:
        for layout, batch in read_row_group_slices(uri, group, columns, task):
            if done + batch.num_rows > count:
                raise ValueError(f"row group {group} has more rows than the footer's {count}")
            yield _finish(parquet_rows(layout, batch, uri, name, first + done), uri, first + done)
            done += batch.num_rows
        if done != count:
            raise ValueError(f"row group {group} ended after {done} rows, the footer says {count}")
    except StorageUnavailable:
        raise  # storage is down, the data may be fine: fail the run (a rerun finishes it), no error rows
    except Exception as e:
        reason = f"unreadable shard: row group {group}: {type(e).__name__}: {e}"
        if count > done:
            yield _finish(error_rows(count - done, reason), uri, first + done)


def _slices_of_dicts(slices: Iterator[list[dict]], uri: str, first: int) -> Iterator[dict[str, np.ndarray]]:
    """Slices given as lists of row dicts (some input columns and ``error``) as the stage's batches."""
    for rows in slices:
        columns = {c: [row.get(c) for row in rows] for c in (*INPUT_COLUMNS, ERROR)}
        yield _finish(columns, uri, first)
        first += len(rows)


def _webdataset_task(request: dict, columns: ColumnMap, task: str) -> Iterator[dict[str, np.ndarray]]:
    uri, first, count = str(request["shard"][0]), int(request["first_row"][0]), int(request["num_rows"][0])
    yield from _slices_of_dicts(webdataset.read_tar_rows(uri, count), uri, first)


def _folder_task(request: dict, columns: ColumnMap, task: str) -> Iterator[dict[str, np.ndarray]]:
    uri, first = str(request["shard"][0]), int(request["first_row"][0])
    members = [str(m) for m in request["members"][0]]
    yield from _slices_of_dicts(folders.read_folder_rows(uri, members), uri, first)


# One reader per shard kind; each yields slices of the columns above for one read task.
READERS = {"parquet": _parquet_task, "webdataset": _webdataset_task, "folder": _folder_task}


def read_rows(request: dict[str, np.ndarray], columns: ColumnMap = ColumnMap(),
              task: str = "caption") -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (a generator function, ``batch_size=1``): a request names a shard, its
    kind and the part of it to read (Parquet: a row group, its first row's index and its row count)."""
    kind = str(request["kind"][0]) if "kind" in request else "parquet"
    yield from READERS[kind](request, columns, task)
