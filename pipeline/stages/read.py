"""The read stage: one read task in (a Parquet row group, a WebDataset tar, a run of image files),
its rows out in bounded slices with the same columns whatever the format (``READ_COLUMNS``, and
with ``--benchmark`` the benchmark's columns, carried).

A generator, so Ray Data gets a row group as several small batches rather than one that grows
with the row group. Every planned row comes out: rows a task cannot read (a shard damaged or
changed since planning) are error rows, so the shard completes and says why. Storage being down
is not the data's fault: it stops the run instead (a rerun finishes it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from ..columns import (
    ANSWERS, CHOICES, ERROR_DETAIL, ERROR_KIND, ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ROW_INDEX, SAMPLING,
    SOURCE_SHARD, carried,
)
from ..errors import StorageUnavailable
from ..io import formats
from ..io.location import Location
from ..io.shard import ReadTask, Shard
from ..row_errors import ErrorKind, RowError
from ..settings import JobSettings
from .base import object_array

log = logging.getLogger("hired.pipeline")
INPUT_PARTS = (ID, IMAGE, IMAGE_URI, PROMPT, QUESTION, ANSWERS, SAMPLING, CHOICES)  # what a format's slices may hold
NEEDS = {"item": "a pipeline.io.shard.ReadTask"}


def read_tasks(shards: list[Shard]) -> list[ReadTask]:
    """The read stage's work, each shard cut by its format."""
    return [task for shard in shards for task in formats.get(shard.format).read_tasks(shard)]


def benchmark_parts(settings: JobSettings) -> tuple[str, ...]:
    """The carried benchmark columns every slice holds with ``--benchmark`` (pipeline.columns.carried)."""
    scoring = settings.scoring
    return () if scoring is None else tuple(carried(c.name) for c in scoring.columns)


def _columns(rows: dict[str, list], task: ReadTask, first: int, parts: tuple[str, ...] = INPUT_PARTS) -> dict[str, np.ndarray]:
    """A format's slice as the stage's columns, rows numbered from ``first``."""
    n = len(rows[ID])
    out = {name: rows.get(name) or [None] * n for name in parts}
    errors = rows.get("error") or [None] * n
    out[ERROR_KIND] = [None if e is None else e.kind.value for e in errors]
    out[ERROR_DETAIL] = [None if e is None else e.detail for e in errors]
    out[SOURCE_SHARD] = [task.shard_uri] * n
    out[ROW_INDEX] = list(range(first, first + n))
    return {name: object_array(values) for name, values in out.items()}


def read_rows(batch: dict[str, np.ndarray], input: Location, settings: JobSettings) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data stage (a generator function, ``batch_size=1``): one ReadTask's rows, exactly its
    ``num_rows`` of them."""
    task: ReadTask = batch["item"][0]
    first, planned = task.first_row, task.num_rows
    parts = INPUT_PARTS + benchmark_parts(settings)
    done, reason = 0, None
    try:
        for rows in formats.get(task.format).read(input, task, settings):
            take = min(len(rows[ID]), planned - done)
            if take < len(rows[ID]):
                rows = {name: values[:take] for name, values in rows.items()}
                log.warning("%s holds more rows than when the run was planned; the extra ones are left out", task.shard_uri)
            if take:
                yield _columns(rows, task, first + done, parts)
                done += take
            if done == planned:
                break
        else:
            if done < planned:
                reason = f"the shard ended after {done} of the {planned} rows planned for this part (changed since planning?)"
    except StorageUnavailable:
        raise  # storage is down, the data may be fine: fail the run (a rerun finishes it), no error rows
    except Exception as e:
        reason = f"{type(e).__name__}: {e}"
    if done < planned:
        error = RowError(ErrorKind.UNREADABLE_SHARD, reason)
        yield _columns({ID: [None] * (planned - done), "error": [error] * (planned - done)}, task, first + done, parts)
