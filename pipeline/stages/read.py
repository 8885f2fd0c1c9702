"""The read stage: one task in (a shard's row group, a tar, a run of image files), its rows
out, as column batches.

A row group that cannot be read still yields one error row per row (its row count is
known from the footer), so the shard completes and reports why.
"""

from __future__ import annotations

import numpy as np

from ..columns import ERROR, ID, INPUT_COLUMNS, ROW_INDEX, SOURCE_SHARD, object_array
from ..errors import StorageUnavailable
from ..io import folders, webdataset
from ..io.inputs import read_row_group


def _column(table, name, n):
    return table.column(name).to_pylist() if name in table.column_names else [None] * n


def read_rows(task: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage (a function, ``batch_size=1``): a task names a shard, a row group, its
    first row's index and its row count."""
    uri, group = str(task["shard"][0]), int(task["row_group"][0])
    first, count = int(task["first_row"][0]), int(task["num_rows"][0])
    try:
        table = read_row_group(uri, group)
        if table.num_rows != count:
            raise ValueError(f"row group {group} has {table.num_rows} rows, the footer says {count}")
        n = table.num_rows
        rows = {c: _column(table, c, n) for c in INPUT_COLUMNS}
        errors = [None if i is not None else "missing field: id is null" for i in rows[ID]]
    except StorageUnavailable:
        raise  # storage is down, the data may be fine: fail the run (a rerun finishes it), no error rows
    except Exception as e:
        n = count
        rows = {c: [None] * n for c in INPUT_COLUMNS}
        errors = [f"unreadable shard: row group {group}: {type(e).__name__}: {e}"] * n
    rows[ERROR] = errors
    rows[SOURCE_SHARD] = [uri] * n
    rows[ROW_INDEX] = list(range(first, first + n))
    return {k: object_array(v) for k, v in rows.items()}


# --- WebDataset tars and image folders: their modules yield rows in bounded slices. ---


def _slice_batch(rows: list[dict], uri: str, first: int) -> dict[str, np.ndarray]:
    """A slice of rows (dicts with some input columns and ``error``) as the stage's column batch."""
    columns = {c: [row.get(c) for row in rows] for c in (*INPUT_COLUMNS, ERROR)}
    columns[SOURCE_SHARD] = [uri] * len(rows)
    columns[ROW_INDEX] = list(range(first, first + len(rows)))
    return {k: object_array(v) for k, v in columns.items()}


def _sliced_rows(slices, uri: str, first: int):
    for rows in slices:
        yield _slice_batch(rows, uri, first)
        first += len(rows)


def read_task_rows(task: dict[str, np.ndarray]):
    """Ray Data stage (a generator, ``batch_size=1``): any read task's rows, dispatched on its
    shard's kind, in slices of bounded size."""
    kind, uri = str(task["kind"][0]), str(task["shard"][0])
    first, count = int(task["first_row"][0]), int(task["num_rows"][0])
    if kind == "webdataset":
        yield from _sliced_rows(webdataset.read_tar_rows(uri, count), uri, first)
    elif kind == "folder":
        yield from _sliced_rows(folders.read_folder_rows(uri, [str(m) for m in task["members"][0]]), uri, first)
    else:
        yield read_rows(task)
