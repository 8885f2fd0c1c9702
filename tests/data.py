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
