"""The driver's books: result rows gathered per shard, each shard written the moment it is complete.

One driver serves every GPU, so its cost per row bounds the whole job: it keeps result blocks
as the Arrow tables Ray hands it (no Python object per row), notes which rows of each shard have
arrived in a bit array, and does the per-row work (ordering, the no-result check) once per
shard, in Arrow, when it writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..columns import (
    ERROR, ERROR_DETAIL, ERROR_KIND, GENERATED_TOKENS, PROMPT_INDEX, ROW_INDEX, SOURCE_SHARD, TEXT, output_schema,
)
from ..faults import failpoint
from ..io.outputs import Outputs
from ..io.shard import FailedShard, Shard
from ..row_errors import ErrorKind, RowError
from ..settings import JobSettings
from ..stages.base import missing
from .carry import carried_blocks

log = logging.getLogger("hired.pipeline")

NO_RESULT = RowError(ErrorKind.INTERNAL, "no result came back for this row")


class _ShardRows:
    """One shard's results so far: blocks of first arrivals, and which result rows they cover.

    With ``per_row`` prompts (``--prompts``) input row ``r`` makes result rows ``r * per_row + p``,
    one per prompt ``p``."""

    def __init__(self, shard: Shard, per_row: int = 1):
        self.shard, self.per_row = shard, per_row
        self.expected = shard.num_rows * per_row
        self.arrived = np.zeros(self.expected, dtype=bool)
        self.arrived[[row for row, _, _ in shard.carried]] = True  # carried over: read when the shard is written
        self.count = len(shard.carried)
        self.blocks: list[pa.Table] = []

    @property
    def complete(self) -> bool:
        return self.count == self.expected

    def add(self, rows: pa.Table) -> pa.Table:
        """Keep the rows not seen before (a batch Ray retried after a worker died sends its rows
        again; the first result for a row is kept); return them."""
        index = rows.column(ROW_INDEX).to_numpy(zero_copy_only=False)
        if self.per_row > 1:
            prompt = as_type(rows.column(PROMPT_INDEX), pa.int64()).to_numpy(zero_copy_only=False)
            index = index * self.per_row + prompt
        fresh = first_arrivals(index, self.arrived)
        if not fresh.all():
            rows, index = rows.filter(pa.array(fresh)), index[fresh]
        if rows.num_rows:
            self.arrived[index] = True
            self.count += rows.num_rows
            self.blocks.append(rows)
        return rows


def first_arrivals(index: np.ndarray, arrived: np.ndarray) -> np.ndarray:
    """Which of a block's rows (by ``index``, their positions in the shard) are new: in range,
    not arrived before, and the first of their position within the block."""
    in_range = (index >= 0) & (index < len(arrived))
    if not in_range.all():
        log.error("dropping %d result row(s) with a row_index outside their shard", int((~in_range).sum()))
    fresh = in_range.copy()
    fresh[in_range] = ~arrived[index[in_range]]
    candidates = np.flatnonzero(fresh)
    if len(candidates) > 1 and not (np.diff(index[candidates]) > 0).all():  # a row twice in the block (rare)
        _, first = np.unique(index[candidates], return_index=True)
        if len(first) < len(candidates):
            fresh[:] = False
            fresh[candidates[first]] = True
    return fresh


class ShardCollector:
    """Gathers result rows per shard; writes a shard's output the moment it is complete."""

    def __init__(self, shards: list[Shard], settings: JobSettings,
                 on_rows: Callable[[int], None] | None = None, on_written: Callable[[Shard], None] | None = None):
        self.settings = settings
        self.outputs = Outputs(settings.output)
        self.per_row = settings.outputs_per_row
        self.shards: dict[str, _ShardRows | None] = {s.uri: _ShardRows(s, self.per_row) for s in shards}  # None once written
        self.written: list[str] = []
        self.generated_tokens = 0
        self.processed = 0
        self.on_rows = on_rows  # told how many fresh rows each block brought
        self.on_written = on_written  # told of each shard written

    def add(self, block: pa.Table) -> None:
        """A block of result rows as Ray Data hands it (any shards, any order, perhaps repeated)."""
        for uri, rows in rows_per_shard(block):
            books = self.shards.get(uri)
            if books is None:
                if uri not in self.shards:
                    log.error("dropping %d result row(s) of a shard this run does not hold: %s", rows.num_rows, uri)
                continue  # a retried batch's rows for a shard already written
            fresh = books.add(rows)
            self.processed += fresh.num_rows
            if self.on_rows is not None:
                self.on_rows(fresh.num_rows)
            self.generated_tokens += token_sum(fresh)
            if books.complete:
                self.flush(uri)

    def flush(self, uri: str) -> None:
        books = self.shards[uri]
        blocks = books.blocks + carried_blocks(self.outputs, books.shard)
        # Ids travel between stages as strings; the output keeps the input's id type (cast here).
        schema = output_schema(self.settings.task, books.shard.id_type, books.shard.benchmark,
                               prompts=bool(self.settings.prompts))
        table = shard_table(blocks, schema)
        self.written.append(self.outputs.write(books.shard, table, self.settings.result_settings()))
        carried = f", {len(books.shard.carried)} carried over" if books.shard.carried else ""
        log.info("wrote %s (%d rows%s)", self.written[-1], table.num_rows, carried)
        self.shards[uri] = None  # done
        if self.on_written is not None:
            self.on_written(books.shard)
        failpoint("shard_written")  # tests kill the driver here, between two shards

    def incomplete(self) -> list[FailedShard]:
        return [
            FailedShard(uri, f"incomplete: {books.count} of {books.expected} rows came back")
            for uri, books in self.shards.items()
            if books is not None
        ]


def rows_per_shard(block: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """A block's rows by source shard (usually a block holds one shard's rows)."""
    source = block.column(SOURCE_SHARD)
    if source.null_count:
        log.error("dropping %d result row(s) without a source shard", source.null_count)
    uris = [uri for uri in pc.unique(source).to_pylist() if uri is not None]
    if len(uris) == 1 and not source.null_count:
        yield uris[0], block
        return
    for uri in uris:
        yield uri, block.filter(pc.equal(source, uri))


def token_sum(rows: pa.Table) -> int:
    """The tokens generated for these rows (as the output will hold them: NaN counts as null)."""
    if GENERATED_TOKENS not in rows.column_names:
        return 0
    return pc.sum(as_type(rows.column(GENERATED_TOKENS), pa.int64())).as_py() or 0


def shard_table(blocks: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """A complete shard's rows in input order as the output schema has them, every row with a
    text or an error. Blocks are joined first and conformed once, as a shard: one cast a column
    instead of one a column and block (blocks whose types do not join are conformed one by one)."""
    if not blocks:
        return schema.empty_table()
    try:
        table = conform(pa.concat_tables(blocks, promote_options="permissive"), schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        table = pa.concat_tables([conform(block, schema) for block in blocks])
    table = table.combine_chunks()
    keys = [(ROW_INDEX, "ascending")] + ([(PROMPT_INDEX, "ascending")] if PROMPT_INDEX in table.column_names else [])
    table = table.take(pc.sort_indices(table, sort_keys=keys))
    no_result = pc.and_(pc.is_null(table.column(TEXT)), pc.is_null(table.column(ERROR_KIND)))
    if pc.any(no_result).as_py():  # never a silently empty row
        for name, value in ((ERROR, NO_RESULT.text), (ERROR_KIND, NO_RESULT.kind.value)):
            filled = pc.if_else(no_result, pa.scalar(value, pa.string()), table.column(name))
            table = table.set_column(table.schema.get_field_index(name), schema.field(name), filled)
    return table


def with_error_text(block: pa.Table) -> pa.Table:
    """The output's ``error`` column ("<kind>: <detail>") from the stages' kind and detail columns."""
    if ERROR_KIND not in block.column_names:
        return block
    kind = as_type(block.column(ERROR_KIND), pa.string())
    detail = as_type(block.column(ERROR_DETAIL), pa.string()) if ERROR_DETAIL in block.column_names else None
    text = kind if detail is None else pc.if_else(pc.is_null(detail), kind, pc.binary_join_element_wise(kind, detail, ": "))
    block = block.set_column(block.schema.get_field_index(ERROR_KIND), ERROR_KIND, kind)
    return block.append_column(ERROR, text) if ERROR not in block.column_names else block


def conform(block: pa.Table, schema: pa.Schema) -> pa.Table:
    """A block's columns as the output schema has them: absent columns as nulls, others cast."""
    columns = []
    block = with_error_text(block)
    for field in schema:
        if field.name not in block.column_names:
            columns.append(pa.nulls(block.num_rows, field.type))
        else:
            column = block.column(field.name)
            columns.append(column if column.type == field.type and not pa.types.is_floating(field.type)
                           else as_type(column, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def as_type(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """``column`` as ``target``. A column that was all nulls in one block travels through Ray as
    Arrow's null type, and through a numpy stage as float NaN: both are nulls here."""
    if pa.types.is_null(column.type):
        return pa.chunked_array([pa.nulls(len(column), target)])
    if pa.types.is_floating(column.type):
        nan = pc.is_nan(column)
        if pc.any(nan).as_py():
            column = pc.if_else(nan, pa.scalar(None, column.type), column)
        if column.null_count == len(column):
            return pa.chunked_array([pa.nulls(len(column), target)])
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        # Values Arrow cannot cast as a column (e.g. objects Ray stored pickled): one by one.
        return pa.chunked_array([pa.array([None if missing(v) else v for v in column.to_pylist()], type=target)])
