"""Memory of the read stage on a big shard in a single row group (what pandas/pyarrow write by default).

Builds a Parquet shard of at least 1 GB in one row group in a temporary folder (each row a
small JPEG padded with incompressible bytes, so the rows are also usable images), then reads
it twice, each time in a fresh process:

* ``streamed``: the read stage as it is (pipeline.stages.read.read_rows: bounded slices);
* ``whole``: the row group loaded at once and turned into column lists (a reader without slices).

For each it reports the peak resident memory above the process's memory just before the
read (Linux: VmHWM reset through /proc/self/clear_refs), and the time taken, side by side.

    python bench/bench_read_memory.py                      # 1.1 GB shard of 50 kB rows, both readers
    python bench/bench_read_memory.py --rows 11000 --row-bytes 100000 --out bench/results/read-memory-100k.json

A Parquet page is the smallest unit a reader can load, and pyarrow's writer (pandas' too) closes
a page only every 1024 rows by default, its first (dictionary) page included and kept for the
whole column chunk: streaming bounds memory by about two or three pages (1024 rows each), not
below, so the figure grows with the images' size, not with the row group's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_shard(path: Path, rows: int, row_bytes: int) -> int:
    """One row group of ``rows`` rows of about ``row_bytes`` each; returns the file's size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(buffer, "JPEG")
    picture = buffer.getvalue()  # decoders stop at the JPEG's end marker: the padding is ignored
    images = pa.array((picture + rng.bytes(row_bytes - len(picture)) for _ in range(rows)), pa.binary(), size=rows)
    table = pa.table({"id": [f"row-{i:06d}" for i in range(rows)], "image": images})
    pq.write_table(table, path)  # pyarrow's defaults: one row group up to 1Mi rows
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return path.stat().st_size


def _status(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(reader: str, path: str) -> dict:
    """In this (fresh) process: read every row of the shard with ``reader``; peak RSS growth and time."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.columns import READ_COLUMNS
    from pipeline.io.formats import inspect_input
    from pipeline.settings import JobSettings
    from pipeline.stages.base import object_array
    from pipeline.stages.read import read_rows, read_tasks

    settings = JobSettings(input=f"file://{path}")
    shards, _ = inspect_input(settings.input, settings)
    tasks = read_tasks(shards)
    _reset_peak()
    before = _status("VmRSS")
    started = time.perf_counter()
    rows = image_bytes = slices = 0
    if reader == "streamed":
        for task in tasks:
            for batch in read_rows({"item": np.array([task], dtype=object)}, settings.input, settings):
                slices += 1
                rows += len(batch["id"])
                image_bytes += sum(len(b) for b in batch["image"])
    else:  # a reader without slices: the row group at once, then Python lists
        with open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            table = parquet.read_row_group(0, columns=[c for c in parquet.schema_arrow.names if c in READ_COLUMNS])
        batch = {c: object_array(table.column(c).to_pylist()) for c in table.column_names}
        slices, rows = 1, len(batch["id"])
        image_bytes = sum(len(b) for b in batch["image"])
        del table, batch
    seconds = time.perf_counter() - started
    return {"reader": reader, "rows": rows, "image_bytes": image_bytes, "slices": slices, "seconds": round(seconds, 2),
            "peak_rss_growth_mb": round((_status("VmHWM") - before) / 2**20, 1)}


def run_child(reader: str, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--measure", reader, str(path)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=22_000)
    parser.add_argument("--row-bytes", type=int, default=50_000, help="bytes per image (a web JPEG: 20-100 kB)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "read-memory.json"))
    parser.add_argument("--measure", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        path = Path(tmp) / "one-row-group.parquet"
        size = build_shard(path, args.rows, args.row_bytes)
        print(f"shard: {args.rows} rows, {size / 2**30:.2f} GiB in one row group")
        results = [run_child(reader, path) for reader in ("streamed", "whole")]
    streamed, whole = results
    assert streamed["rows"] == whole["rows"] == args.rows and streamed["image_bytes"] == whole["image_bytes"]
    print(f"{'reader':<10} {'slices':>7} {'peak RSS growth':>16} {'seconds':>8}")
    for r in results:
        print(f"{r['reader']:<10} {r['slices']:>7} {r['peak_rss_growth_mb']:>13.0f} MB {r['seconds']:>8.1f}")
    print(f"streamed / whole: memory {streamed['peak_rss_growth_mb'] / whole['peak_rss_growth_mb']:.3f}, "
          f"time {streamed['seconds'] / whole['seconds']:.2f}")
    record = {"shard_bytes": size, "rows": args.rows, "row_bytes": args.row_bytes, "row_groups": 1, "results": results,
              "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
