"""Counts folded chunk by chunk in bounded memory, for the summary and the report: a mean that
comes out bit for bit as the row-by-row mean, and an exact count of repeated ids that spills to
local disk instead of holding every id."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

DUPLICATE_EXAMPLES = 20
ID_BUCKETS = 64  # spill files for the duplicate check: each holds about 1/64 of the ids


class RunningMean:
    """A mean folded in chunk by chunk. Float values are added one after another in row order
    (``np.cumsum`` carrying the total across chunks), as Python's ``sum`` over all rows would:
    the result is bit for bit the row-by-row mean. Integer sums are exact. NaN counts as missing."""

    def __init__(self):
        self.total: int | float = 0
        self.count = 0

    def add(self, values: pa.ChunkedArray | pa.Array) -> None:
        values = pc.drop_null(values)
        if not len(values):
            return
        if pa.types.is_floating(values.type):
            array = values.to_numpy()
            array = array[~np.isnan(array)]
            if array.size:
                self.total = float(np.cumsum(np.concatenate(([self.total], array)))[-1])
                self.count += int(array.size)
        else:
            self.total += int(pc.sum(values.cast(pa.int64())).as_py())
            self.count += len(values)

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


class DuplicateIds:
    """Ids that occur more than once across all files, counted exactly in bounded memory.

    Chosen over keeping every id (or a 64-bit hash of each) in memory, which grows with the rows:
    ids are partitioned by hash into ``buckets`` Arrow files on local disk as the files are read,
    and afterwards each bucket is counted on its own with ``value_counts``. A duplicate's copies
    share a bucket, so the counts are exact (no hash collisions to second-guess), and memory holds
    one bucket: about rows / 64 ids (1.5 million ids at 100 million rows). The disk holds the ids
    once. Null ids (rows whose input had none) are not ids and are not counted."""

    def __init__(self, directory: str, buckets: int = ID_BUCKETS):
        self.directory = directory
        self.buckets = buckets
        self.writers: dict[int, tuple[pa.OSFile, ipc.RecordBatchStreamWriter]] = {}

    def add(self, ids: pa.ChunkedArray | pa.Array) -> None:
        ids = pc.drop_null(ids)
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if not len(ids):
            return
        ids = ids.cast(pa.string())
        # Python's string hash: fast, and stable within this process, which is all a partition needs.
        bucket = np.fromiter(map(hash, ids.to_pylist()), dtype=np.int64, count=len(ids)) % self.buckets
        order = np.argsort(bucket, kind="stable")
        grouped = ids.take(pa.array(order))
        ends = np.cumsum(np.bincount(bucket, minlength=self.buckets))
        for b in np.flatnonzero(np.diff(ends, prepend=0)):
            start = int(ends[b - 1]) if b else 0
            self._writer(int(b)).write_batch(pa.record_batch([grouped.slice(start, int(ends[b]) - start)], names=["id"]))

    def _writer(self, bucket: int) -> ipc.RecordBatchStreamWriter:
        if bucket not in self.writers:
            sink = pa.OSFile(os.path.join(self.directory, f"ids-{bucket}.arrow"), "wb")
            self.writers[bucket] = (sink, ipc.new_stream(sink, pa.schema([("id", pa.string())])))
        return self.writers[bucket][1]

    def result(self, examples: int = DUPLICATE_EXAMPLES) -> tuple[int, list[str]]:
        """How many distinct ids occur more than once, and the smallest ``examples`` of them."""
        count, smallest = 0, []
        for bucket, (sink, writer) in sorted(self.writers.items()):
            writer.close()
            sink.close()
            path = os.path.join(self.directory, f"ids-{bucket}.arrow")
            with pa.memory_map(path) as source:
                counted = pc.value_counts(ipc.open_stream(source).read_all().column("id"))
            repeated = counted.field("values").filter(pc.greater(counted.field("counts"), 1))
            count += len(repeated)
            first = pc.array_sort_indices(repeated)[:examples]  # UTF-8 byte order = code point order
            smallest = sorted(smallest + repeated.take(first).to_pylist())[:examples]
            os.remove(path)
        self.writers = {}
        return count, smallest
