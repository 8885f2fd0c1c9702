"""What a report states, read from a pipeline output without holding its rows.

Only the result files that describe the current input count (``_manifest.json``, written by each
run: results whose shard is gone, or stale, are left out and named in the notes). They are read
one at a time, a few columns at a time, in two passes: the first
gathers the counts (through :class:`pipeline.summary.SummaryTotals`, so they agree with the job's
own summary), the first error rows and each chart's value range; the second fills histograms with
fixed bins and draws an even sample of at most ``MAX_PLOTTED_POINTS`` items for the scatter charts.
Memory therefore does not grow with the output's rows. What only the job knew (its wall time,
failed shards, shard counts) comes from ``_summary.json`` when it is there.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..columns import (
    ALPHA, ANSWERS, BATCH_SIZE, BUDGET_FRACTION, BUDGET_TOKENS, DECODE_MS, DEVICE, ERROR, EXACT_MATCH, GENERATED_TOKENS,
    ID, MODEL, PEAK_GPU_MEM_BYTES, QUESTION, ROW_INDEX, RUN_ID, SCORE, SOURCE_SHARD, STRATEGY, TEXT, TOKENS_PER_S,
    TTFT_MS, VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT, VQA_ACCURACY,
)
from ..io.location import Location
from ..io.manifest import read_manifest
from ..io.outputs import Outputs, result_name
from ..summary import SUMMARY_COLUMNS, SummaryTotals, read_columns

MAX_PLOTTED_POINTS = 20_000  # beyond this a scatter is a blot and slow to draw: plot an even subset
HISTOGRAM_BINS = 30

# Settings that tell runs apart, listed in the report (few distinct values each).
DISTINCT = {MODEL: "models", DEVICE: "devices", STRATEGY: "strategies", BUDGET_FRACTION: "budget_fractions",
            BUDGET_TOKENS: "budget_counts", ALPHA: "alphas",
            RUN_ID: "run_ids", SOURCE_SHARD: "source_shards"}
FIRST_PASS_COLUMNS = SUMMARY_COLUMNS + (ERROR, DECODE_MS, BATCH_SIZE, ROW_INDEX) + tuple(DISTINCT)
SECOND_PASS_COLUMNS = (ERROR, VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT, TTFT_MS, DECODE_MS, BATCH_SIZE,
                       TOKENS_PER_S, PEAK_GPU_MEM_BYTES, VQA_ACCURACY, RUN_ID)
# Histogram charts: their column over the ok rows, and the unit it is drawn in.
HISTOGRAMS = {"ttft": (TTFT_MS, 1.0), "tokens-per-s": (TOKENS_PER_S, 1.0),
              "gpu-memory": (PEAK_GPU_MEM_BYTES, 1 / 2**30), "vqa-accuracy": (VQA_ACCURACY, 1.0)}
# VQA accuracy takes few values (0, 0.3, 0.6, 0.9, 1 and a few between): one bar per tenth.
VQA_ACCURACY_EDGES = np.linspace(-0.05, 1.05, 12)
# The columns of the sample rows shown on the page.
SAMPLE_COLUMNS = (ID, ERROR, TEXT, VISUAL_TOKENS_KEPT, VISUAL_TOKENS_FULL, QUESTION, ANSWERS,
                  VQA_ACCURACY, EXACT_MATCH, SCORE)


class ReportError(Exception):
    """The output cannot be reported on (missing, empty, unreadable): a message for the user, exit 2."""


@dataclass
class Output:
    """An output location's result files and what their footers and ``_summary.json`` say, rows unread."""

    uri: str
    where: Location
    files: list[str]  # the result files, in output order (sorted); rows in input order within each
    file_rows: list[int]  # each file's row count, from its footer
    column_names: set[str]  # every column any file has
    saved_summary: dict | None  # _summary.json as the last run wrote it, if present and readable
    notes: list[str] = field(default_factory=list)  # things the reader should know about the inputs

    @property
    def rows(self) -> int:
        return sum(self.file_rows)

    @property
    def is_vqa(self) -> bool:
        return VQA_ACCURACY in self.column_names

    @property
    def is_benchmark(self) -> bool:
        """A ``--benchmark`` run's output: each row has the benchmark's ``score``."""
        return SCORE in self.column_names

    def tables(self, columns, scoring: bool = False) -> Iterator[pa.Table]:
        """Each file's ``columns`` (those it has), one file in memory at a time; ``scoring``: with
        the columns a benchmark's aggregates read (pipeline.summary.read_columns)."""
        for path in self.files:
            yield read_columns(self.where, path, columns, scoring=scoring)


def _footer(where: Location, path: str) -> pq.FileMetaData:
    def read() -> pq.FileMetaData:
        with where.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata

    return where.retry.call(read, f"reading the footer of {path}")


def load_output(output_uri: str) -> Output:
    """The result files and saved summary under ``output_uri``; :class:`ReportError` if there are no rows."""
    try:
        where = Location.resolve(output_uri)
        fs, path = where.fs, where.path
        exists = fs.exists(path)
    except Exception as e:  # a malformed URI, an unknown protocol, missing credentials
        raise ReportError(f"cannot open {output_uri}: {type(e).__name__}: {e}") from None
    if not exists:
        raise ReportError(f"{output_uri} does not exist")
    if not fs.isdir(path):
        raise ReportError(f"{output_uri} is not a directory: give the job's --output location")
    notes: list[str] = []
    try:
        files = Outputs(where).result_files()
        footers = [_footer(where, p) for p in files]
    except Exception as e:  # a damaged result file: say which error, not a traceback
        raise ReportError(f"cannot read the result files under {output_uri}: {type(e).__name__}: {e}") from None
    if not files:
        raise ReportError(f"{output_uri} holds no result files (*.parquet): is it a pipeline output?")
    manifest = read_manifest(where)
    if manifest is not None:  # only the results describing the input as the last run found it
        why = {p: manifest.why_left_out(result_name(p), f.metadata) for p, f in zip(files, footers)}
        left_out = [p for p in files if why[p] is not None]
        if left_out:
            shown = "; ".join(f"{posixpath.basename(p)}: {why[p]}" for p in left_out[:5])
            notes.append(f"{len(left_out)} result file(s) do not describe the current input and are left out "
                         f"({shown}{' ...' if len(left_out) > 5 else ''}).")
        footers = [f for p, f in zip(files, footers) if why[p] is None]
        files = [p for p in files if why[p] is None]
        if not files:
            raise ReportError(f"{output_uri} holds no result files for its current input: {notes[-1]}")
    file_rows = [footer.num_rows for footer in footers]
    if not sum(file_rows):
        raise ReportError(f"{output_uri} holds result files but no rows: there is nothing to report")
    column_names = {name for footer in footers for name in footer.schema.to_arrow_schema().names}
    saved = _read_saved_summary(fs, path, notes)
    if saved and saved.get("items") != sum(file_rows):  # e.g. shards added or removed by hand since
        notes.append(f"_summary.json counts {saved.get('items')} items but the result files hold {sum(file_rows)}: "
                     "the files changed after the last run; the counts here are the files'.")
    return Output(uri=output_uri, where=where, files=files, file_rows=file_rows, column_names=column_names,
                  saved_summary=saved, notes=notes)


def _read_saved_summary(fs, path: str, notes: list[str]) -> dict | None:
    summary_path = posixpath.join(path, "_summary.json")
    if not fs.exists(summary_path):
        notes.append("No _summary.json: counts are computed from the rows; this run's wall time and "
                     "failed shards (recorded only by the job) are unknown.")
        return None
    try:
        with fs.open(summary_path, "r") as f:
            saved = json.load(f)
    except Exception as e:  # a half-written or hand-edited file should not stop the report
        notes.append(f"_summary.json could not be read ({type(e).__name__}: {e}); counts are computed from the rows.")
        return None
    if not isinstance(saved, dict):
        notes.append("_summary.json is not a JSON object; ignored.")
        return None
    return saved


# ---------------------------------------------------------------------------------------------
# What the report states: the first pass


def column(table: pa.Table, name: str, rows: pa.Array | None = None) -> np.ndarray:
    """A numeric column as float64 (nulls as NaN), optionally only the rows where ``rows`` is true."""
    if name not in table.column_names:
        return np.full(table.num_rows if rows is None else int(pc.sum(rows).as_py() or 0), np.nan)
    values = table.column(name)
    if rows is not None:
        values = values.filter(rows)
    return values.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def ok_rows(table: pa.Table) -> pa.Array:
    if ERROR not in table.column_names:
        return pa.array(np.ones(table.num_rows, dtype=bool))
    return pc.is_null(table.column(ERROR)).combine_chunks()


def generation_seconds_per_item(table: pa.Table) -> np.ndarray:
    """Each ok item's share of its batch's time (ttft + decode, which are per batch) in seconds.

    Summed over items this is the total time spent in generation, each batch counted once,
    whatever its size; a row without a batch size counts as a batch of its own."""
    ok = ok_rows(table)
    batch_ms = column(table, TTFT_MS, ok) + column(table, DECODE_MS, ok)
    batch_size = column(table, BATCH_SIZE, ok)
    batch_size = np.where(np.isnan(batch_size) | (batch_size < 1), 1.0, batch_size)
    return batch_ms / batch_size / 1000.0


@dataclass
class FirstPass:
    """What one read of every file gathers: the facts, each histogram's value range, the first error rows."""

    facts: dict
    ranges: dict[str, tuple[float, float]]  # histogram key -> (smallest, largest) value over the ok rows
    ok_count: int
    error_count: int
    first_errors: list[list]  # [id, row index, shard file name, reason] of the first error rows


def first_pass(output: Output, error_rows: int) -> FirstPass:
    distinct: dict[str, set] = {name: set() for name in DISTINCT}
    ranges = {key: (np.inf, -np.inf) for key in HISTOGRAMS}
    generation_s = generated = 0.0
    first_errors: list[list] = []
    with tempfile.TemporaryDirectory(prefix="hired-report-") as spill:
        totals = SummaryTotals(spill)
        for table in output.tables(FIRST_PASS_COLUMNS, scoring=True):
            totals.add(table)
            ok = ok_rows(table)
            generation_s += float(np.nansum(generation_seconds_per_item(table)))
            generated += float(np.nansum(column(table, GENERATED_TOKENS, ok)))
            for name, values in distinct.items():
                if name in table.column_names:
                    values.update(v for v in pc.unique(table.column(name)).to_pylist() if v is not None)
            for key, (name, scale) in HISTOGRAMS.items():
                values = column(table, name, ok) * scale
                values = values[~np.isnan(values)]
                if values.size:
                    low, high = ranges[key]
                    ranges[key] = (min(low, float(values.min())), max(high, float(values.max())))
            if len(first_errors) < error_rows:
                first_errors += _error_rows(table.filter(pc.invert(ok)).slice(0, error_rows - len(first_errors)))
        facts = totals.counts()
    facts["generation_s"] = generation_s
    facts["items_per_generation_s"] = facts["ok"] / generation_s if generation_s > 0 else None
    facts["tokens_per_generation_s"] = generated / generation_s if generation_s > 0 else None
    facts["task"] = "vqa" if output.is_vqa or output.is_benchmark else "caption"
    for name, plural in DISTINCT.items():
        facts[plural] = sorted(distinct[name], key=str)
    facts["result_files"] = len(facts.pop("source_shards"))
    # The output keeps a budget's two kinds in two columns; here they become floats (fractions)
    # and ints (token counts) again, which is how hired reads a budget's kind.
    facts["budgets"] = [float(f) for f in facts.pop("budget_fractions")] + [int(c) for c in facts.pop("budget_counts")]
    saved = output.saved_summary or {}
    facts["last_run_id"] = saved.get("run_id")
    facts["this_run"] = saved.get("this_run")
    facts["shards"] = saved.get("shards")
    facts["failed_shards"] = saved.get("failed_shards") if saved else None
    return FirstPass(facts=facts, ranges={k: v for k, v in ranges.items() if v[0] <= v[1]}, ok_count=facts["ok"],
                     error_count=facts["errors"], first_errors=first_errors)


def _error_rows(failed: pa.Table) -> list[list]:
    get = lambda name: failed.column(name).to_pylist() if name in failed.column_names else [None] * failed.num_rows  # noqa: E731
    return [[i, r, posixpath.basename(s) if s else s, e]
            for i, r, s, e in zip(get(ID), get(ROW_INDEX), get(SOURCE_SHARD), get(ERROR))]


# ---------------------------------------------------------------------------------------------
# The second pass: histograms with fixed bins, and an even sample of items for the scatter charts


def _even_subset(count: int) -> np.ndarray:
    """Ordinals of at most ``MAX_PLOTTED_POINTS`` of ``count`` items, evenly spread, first and last included."""
    limit = MAX_PLOTTED_POINTS
    return np.arange(count) if count <= limit else np.linspace(0, count - 1, limit).round().astype(int)


def histogram_edges(key: str, value_range: tuple[float, float]) -> np.ndarray:
    """The bins a histogram of all the values would get (numpy's, from their range alone)."""
    if key == "vqa-accuracy":
        return VQA_ACCURACY_EDGES
    return np.histogram_bin_edges(np.asarray(value_range, dtype=np.float64), bins=HISTOGRAM_BINS)


@dataclass
class ChartData:
    """What the second pass gathers for the charts: every ok row binned, an even sample plotted."""

    rows: int
    histograms: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (bin edges, counts)
    position: np.ndarray  # the sampled ok items' row positions in output order
    seconds: np.ndarray  # their share of their batch's generation time
    cumulative_s: np.ndarray  # generation time summed over every ok item up to and including each
    full: np.ndarray  # their visual tokens, stock and kept
    kept: np.ndarray
    run: np.ndarray  # their run ids
    error_position: np.ndarray  # an even sample of the error rows' positions
    boundaries: list[int]  # where each file after the first starts


def _pick(wanted: np.ndarray, seen: int, count: int) -> np.ndarray:
    """Of the wanted ordinals, those among this file's ``count`` (after ``seen``), as local indices."""
    return wanted[(wanted >= seen) & (wanted < seen + count)] - seen


def second_pass(output: Output, first: FirstPass) -> ChartData:
    edges = {key: histogram_edges(key, first.ranges[key]) for key in HISTOGRAMS if key in first.ranges}
    counts = {key: np.zeros(len(e) - 1, dtype=np.int64) for key, e in edges.items()}
    wanted_ok, wanted_errors = _even_subset(first.ok_count), _even_subset(first.error_count)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("position", "seconds", "cumulative_s", "full", "kept", "run",
                                                           "error_position")}
    offset = ok_seen = errors_seen = 0
    running_s = 0.0
    for table in output.tables(SECOND_PASS_COLUMNS):
        ok_mask = ok_rows(table)
        ok = ok_mask.to_numpy(zero_copy_only=False)
        for key, (name, scale) in HISTOGRAMS.items():
            if key in edges:
                values = column(table, name, ok_mask) * scale
                counts[key] += np.histogram(values[~np.isnan(values)], bins=edges[key])[0]
        ok_position, error_position = offset + np.flatnonzero(ok), offset + np.flatnonzero(~ok)
        seconds = generation_seconds_per_item(table)
        cumulative = running_s + np.cumsum(np.nan_to_num(seconds))
        running_s = float(cumulative[-1]) if cumulative.size else running_s
        pick = _pick(wanted_ok, ok_seen, ok_position.size)
        for name, values in (("position", ok_position), ("seconds", seconds), ("cumulative_s", cumulative),
                             ("full", column(table, VISUAL_TOKENS_FULL, ok_mask)),
                             ("kept", column(table, VISUAL_TOKENS_KEPT, ok_mask))):
            parts[name].append(values[pick])
        runs = (table.column(RUN_ID).filter(ok_mask).take(pa.array(pick, pa.int64())).to_pylist()
                if RUN_ID in table.column_names else [None] * pick.size)  # only the sampled rows' strings
        parts["run"].append(np.asarray(runs, dtype=object).reshape(-1))
        parts["error_position"].append(error_position[_pick(wanted_errors, errors_seen, error_position.size)])
        offset, ok_seen, errors_seen = offset + table.num_rows, ok_seen + ok_position.size, errors_seen + error_position.size
    joined = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
    return ChartData(rows=output.rows, histograms={k: (edges[k], counts[k]) for k in edges},
                     boundaries=list(np.cumsum(output.file_rows)[:-1]), **joined)


def first_ok_records(output: Output, limit: int) -> list[dict]:
    """The first ``limit`` ok rows with their text, reading only as many files as that takes."""
    records: list[dict] = []
    for table in output.tables(SAMPLE_COLUMNS):
        if len(records) >= limit:
            break
        records += table.filter(ok_rows(table)).slice(0, limit - len(records)).to_pylist()
    return records
