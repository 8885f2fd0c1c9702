"""Helpers that build pipeline inputs: encoded pictures and Parquet shards on any fsspec URI."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def encoded(height: int, width: int, fmt: str = "PNG", seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def truncated_jpeg(seed: int = 0) -> bytes:
    data = encoded(120, 160, "JPEG", seed)
    return data[: len(data) // 2]


INPUT_SCHEMA = pa.schema([
    ("id", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()), ("prompt", pa.string()),
    ("question", pa.string()), ("answers", pa.list_(pa.string())),
])


def write_shard(uri: str, rows: list[dict], row_group_size: int = 1000, schema: pa.Schema = INPUT_SCHEMA) -> str:
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=row_group_size)
    return uri


def error_texts(batch: dict) -> list[str | None]:
    """A stage batch's row errors as the output writes them: '<kind>: <detail>', or None."""
    return [None if kind is None else f"{kind}: {detail}" for kind, detail in zip(batch["error_kind"], batch["error_detail"])]


def plan_input(uri: str, task: str = "caption", columns=None, benchmark: str | None = None):
    """(shards, failed shards) of the input at ``uri``, planned as the job plans them."""
    from pipeline.io.formats import inspect_input
    from pipeline.settings import ColumnMap, JobSettings

    settings = JobSettings(task=task, input=uri, columns=columns or ColumnMap(), benchmark=benchmark)
    return inspect_input(settings.input, settings)


def read_all(shard, task: str = "caption", columns=None) -> list[dict]:
    """Every row the read stage makes of ``shard``, each a dict of its columns plus ``error``: the
    row's error as the output writes it."""
    import numpy as np

    from pipeline.settings import ColumnMap, JobSettings
    from pipeline.stages.read import read_rows, read_tasks

    settings = JobSettings(task=task, input=shard.uri, columns=columns or ColumnMap())  # its filesystem is what counts
    rows = []
    for read_task in read_tasks([shard]):
        for batch in read_rows({"item": np.array([read_task], dtype=object)}, settings.input, settings):
            batch = dict(batch, error=np.array(error_texts(batch), dtype=object))
            rows += [dict(zip(batch, values)) for values in zip(*batch.values())]
    return rows
