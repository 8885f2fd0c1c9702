"""Scoring a batch of rows, and folding scored rows into a benchmark's aggregates.

A batch is a dict of columns, as Ray Data hands a stage (numpy arrays, nulls as None or NaN) or
as lists or Arrow arrays. ``columns`` maps a benchmark column to the batch's name for it where
they differ (``{"answers": "refs"}``); by default each has the benchmark's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from .base import PREDICTION, SCORE, Benchmark, BenchmarkDataError, ColumnError


def _is_null(value: Any) -> bool:
    # An all-null column travels through Ray as Arrow's null type and comes back as NaN.
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def _plain(value: Any) -> Any:
    """A cell as plain Python: numpy arrays to lists, numpy scalars to Python scalars."""
    if _is_null(value):
        return None
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _values(values: Any) -> list:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return [_plain(v) for v in values]


def _sources(benchmark: Benchmark, names: Sequence[str], available: Sequence[str],
             columns: Mapping[str, str] | None) -> dict[str, str]:
    columns = columns or {}
    sources = {name: columns.get(name, name) for name in names}
    for name, source in sources.items():
        if source not in available:
            usage = benchmark.column(name).usage(source if name in columns else "COLUMN")
            raise ColumnError(f"{benchmark.name} needs a column {source!r} ({benchmark.column(name).holds}); "
                              f"the rows have none: {usage}")
    return sources


def rows_of(batch: Mapping[str, Any], sources: Mapping[str, str]) -> list[dict[str, Any]]:
    """The batch as one dict a row, under the benchmark's column names."""
    values = {name: _values(batch[source]) for name, source in sources.items()}
    count = len(next(iter(values.values()))) if values else 0
    return [{name: column[i] for name, column in values.items()} for i in range(count)]


def score_rows(benchmark: Benchmark, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Each row's value before aggregation (float64); a row whose ground truth cannot be scored
    raises :class:`BenchmarkDataError` with its place in ``rows``."""
    scores = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            scores[i] = benchmark.score(row.get(PREDICTION), row)
        except BenchmarkDataError as error:
            raise BenchmarkDataError(error.reason, row=i) from None
    return scores


def score_batch(benchmark: Benchmark, batch: Mapping[str, Any] | pa.Table,
                columns: Mapping[str, str] | None = None) -> np.ndarray:
    """The stage's work: the float64 ``score`` of each row of ``batch``, which holds the
    benchmark's scoring columns and ``text``, the prediction."""
    names = [c.name for c in benchmark.scoring_columns()]
    available = batch.column_names if isinstance(batch, (pa.Table, pa.RecordBatch)) else list(batch)
    return score_rows(benchmark, rows_of(batch, _sources(benchmark, names, available, columns)))


class BenchmarkScorer:
    """A Ray Data stage (``dataset.map_batches(BenchmarkScorer(benchmark), ...)``): the batch
    with a float64 ``score`` column added."""

    def __init__(self, benchmark: Benchmark, columns: Mapping[str, str] | None = None):
        self.benchmark, self.columns = benchmark, dict(columns or {})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, SCORE: score_batch(self.benchmark, batch, self.columns)}


class Aggregator:
    """Folds scored rows into the benchmark's aggregates, table by table, holding only the
    aggregates' state (for MME, two numbers an image). :meth:`result` gives exactly the
    benchmark's keys; a value over no rows is None."""

    def __init__(self, benchmark: Benchmark, columns: Mapping[str, str] | None = None):
        self.benchmark, self.columns = benchmark, dict(columns or {})
        self.tally = benchmark.tally()
        self.rows = 0

    def add(self, rows: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> None:
        """Rows under the benchmark's column names, with their scores."""
        for row, score in zip(rows, scores, strict=True):
            self.tally.add(row, float(score))
        self.rows += len(scores)

    def add_table(self, table: pa.Table | pa.RecordBatch) -> None:
        """A scored table (an output file of the job or of ``pipeline.score``): its ``score``
        column and the columns the aggregates read."""
        if SCORE not in table.column_names or not pa.types.is_floating(table.schema.field(SCORE).type):
            raise ColumnError(f"a scored table needs a float column {SCORE!r} (the rows' values before aggregation)")
        scores = table.column(SCORE).to_pylist()
        for i, score in enumerate(scores):
            if score is None or score != score:
                raise BenchmarkDataError(f"`{SCORE}` is null", row=i)
        sources = _sources(self.benchmark, self.tally.columns, table.column_names, self.columns)
        self.add(rows_of(table, sources) if sources else [{}] * len(scores), scores)

    def result(self) -> dict[str, float | None]:
        return self.tally.result()
