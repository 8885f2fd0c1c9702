"""A one-file HTML report of a pipeline output: ``python -m pipeline.report OUTPUT_URI -o report.html``.

The counts come from the result rows themselves (through :class:`pipeline.summary.SummaryTotals`,
so they agree with the job's own summary); what only the job knew (its wall time, failed shards,
shard counts) comes from ``_summary.json`` when it is there. Charts are PNGs drawn with matplotlib's
Agg renderer and embedded as base64, so the page needs nothing but itself: it can be mailed,
archived next to the output, or opened from object storage.

The result files are read one at a time, a few columns at a time, in two passes: the first
gathers the counts, the first error rows and each chart's value range; the second fills
histograms with fixed bins and draws an even sample of at most ``MAX_PLOTTED_POINTS`` items for
the scatter charts. Memory therefore does not grow with the output's rows.

Every string that comes from the data (ids, captions, error reasons, shard URIs) is HTML-escaped,
and the page carries a Content-Security-Policy that forbids scripts and remote loads anyway.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import posixpath
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .io.outputs import output_files
from .io.retry import with_retries
from .io.storage import Storage
from .summary import SUMMARY_COLUMNS, SummaryTotals, read_columns

DEFAULT_REPORT = "report.html"
DEFAULT_ERROR_ROWS = 50
DEFAULT_SAMPLE_ROWS = 10
MAX_PLOTTED_POINTS = 20_000  # beyond this a scatter is a blot and slow to draw: plot an even subset
MAX_SHARD_LINES = 60  # shard boundaries drawn on the timeline; more would hide the data
MAX_REASON_BARS = 20
TEXT_PREVIEW_CHARS = 300
HISTOGRAM_BINS = 30

# Settings that tell runs apart, listed in the report (few distinct values each).
DISTINCT = {"model": "models", "device": "devices", "strategy": "strategies", "budget_fraction": "budget_fractions",
            "budget_tokens": "budget_counts", "alpha": "alphas",
            "run_id": "run_ids", "source_shard": "source_shards"}
FIRST_PASS_COLUMNS = SUMMARY_COLUMNS + ("decode_ms", "batch_size", "row_index") + tuple(DISTINCT)
SECOND_PASS_COLUMNS = ("error", "visual_tokens_full", "visual_tokens_kept", "ttft_ms", "decode_ms", "batch_size",
                       "tokens_per_s", "peak_gpu_mem_bytes", "vqa_accuracy", "run_id")
# Histogram charts: their column over the ok rows, and the unit it is drawn in.
HISTOGRAMS = {"ttft": ("ttft_ms", 1.0), "tokens-per-s": ("tokens_per_s", 1.0),
              "gpu-memory": ("peak_gpu_mem_bytes", 1 / 2**30), "vqa-accuracy": ("vqa_accuracy", 1.0)}
# VQA accuracy takes few values (0, 0.3, 0.6, 0.9, 1 and a few between): one bar per tenth.
VQA_ACCURACY_EDGES = np.linspace(-0.05, 1.05, 12)


class ReportError(Exception):
    """The output cannot be reported on (missing, empty, unreadable): a message for the user, exit 2."""


# ---------------------------------------------------------------------------------------------
# Reading an output


@dataclass
class Output:
    uri: str
    where: Storage
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
        return "vqa_accuracy" in self.column_names

    def tables(self, columns) -> Iterator[pa.Table]:
        """Each file's ``columns`` (those it has), one file in memory at a time."""
        for path in self.files:
            yield read_columns(self.where, path, columns)


def _footer(where: Storage, path: str) -> pq.FileMetaData:
    def read() -> pq.FileMetaData:
        with where.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata

    return with_retries(read, f"reading the footer of {path}")


def load_output(output_uri: str) -> Output:
    """The result files and saved summary under ``output_uri``; :class:`ReportError` if there are no rows."""
    try:
        where = Storage.at(output_uri)
        fs, path = where.fs, where.path
        exists = fs.exists(path)
    except Exception as e:  # a malformed URI, an unknown protocol, missing credentials
        raise ReportError(f"cannot open {output_uri}: {type(e).__name__}: {e}") from None
    if not exists:
        raise ReportError(f"{output_uri} does not exist")
    if not fs.isdir(path):
        raise ReportError(f"{output_uri} is not a directory: give the job's --output location")
    try:
        files = output_files(output_uri)
        footers = [_footer(where, p) for p in files]
    except Exception as e:  # a damaged result file: say which error, not a traceback
        raise ReportError(f"cannot read the result files under {output_uri}: {type(e).__name__}: {e}") from None
    if not files:
        raise ReportError(f"{output_uri} holds no result files (*.parquet): is it a pipeline output?")
    file_rows = [footer.num_rows for footer in footers]
    if not sum(file_rows):
        raise ReportError(f"{output_uri} holds result files but no rows: there is nothing to report")
    column_names = {name for footer in footers for name in footer.schema.to_arrow_schema().names}
    notes: list[str] = []
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
    if "error" not in table.column_names:
        return pa.array(np.ones(table.num_rows, dtype=bool))
    return pc.is_null(table.column("error")).combine_chunks()


def generation_seconds_per_item(table: pa.Table) -> np.ndarray:
    """Each ok item's share of its batch's time (ttft + decode, which are per batch) in seconds.

    Summed over items this is the total time spent in generation, each batch counted once,
    whatever its size; a row without a batch size counts as a batch of its own."""
    ok = ok_rows(table)
    batch_ms = column(table, "ttft_ms", ok) + column(table, "decode_ms", ok)
    batch_size = column(table, "batch_size", ok)
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
        for table in output.tables(FIRST_PASS_COLUMNS):
            totals.add(table)
            ok = ok_rows(table)
            generation_s += float(np.nansum(generation_seconds_per_item(table)))
            generated += float(np.nansum(column(table, "generated_tokens", ok)))
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
    facts["task"] = "vqa" if output.is_vqa else "caption"
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
            for i, r, s, e in zip(get("id"), get("row_index"), get("source_shard"), get("error"))]


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
                             ("full", column(table, "visual_tokens_full", ok_mask)),
                             ("kept", column(table, "visual_tokens_kept", ok_mask))):
            parts[name].append(values[pick])
        runs = (table.column("run_id").filter(ok_mask).take(pa.array(pick, pa.int64())).to_pylist()
                if "run_id" in table.column_names else [None] * pick.size)  # only the sampled rows' strings
        parts["run"].append(np.asarray(runs, dtype=object).reshape(-1))
        parts["error_position"].append(error_position[_pick(wanted_errors, errors_seen, error_position.size)])
        offset, ok_seen, errors_seen = offset + table.num_rows, ok_seen + ok_position.size, errors_seen + error_position.size
    joined = {k: np.concatenate(v) if v else np.array([]) for k, v in parts.items()}
    return ChartData(rows=output.rows, histograms={k: (edges[k], counts[k]) for k in edges},
                     boundaries=list(np.cumsum(output.file_rows)[:-1]), **joined)


# ---------------------------------------------------------------------------------------------
# Charts: PNG bytes, or None when there is nothing to draw


def _new_figure(width: float = 8.0, height: float = 3.6):
    # Figure without pyplot: no global backend state, the Agg canvas is attached on savefig.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _whole_numbers(axis) -> None:
    """Counts of items on an axis: no 0.5-item ticks when the counts are small."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # ids in scripts DejaVu lacks
        figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plain_text():
    """Data strings drawn in charts are text, never mathtext (an error reason holding two '$')."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False})


def _short(text: str, limit: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _budget_text(budget: float | int) -> str:
    """As ``hired.describe_budget`` words it (not imported: hired brings torch, which the report does not need)."""
    return f"{budget} tokens" if isinstance(budget, int) else f"{100 * budget:g}%"


def chart_visual_tokens(data: ChartData, budgets: list) -> bytes | None:
    known = ~(np.isnan(data.full) | np.isnan(data.kept))
    full, kept = data.full[known], data.kept[known]
    if not full.size:
        return None
    figure, axes = _new_figure()
    axes.scatter(full, kept, s=10, alpha=0.6, label="items", zorder=3)
    span = np.linspace(0, full.max() * 1.05, 200)
    axes.plot(span, span, ls=":", color="grey", label="all tokens (stock model)")
    for budget in budgets:
        if isinstance(budget, int):  # a count keeps min(budget, N); a fraction floor(budget * N)
            axes.plot(span, np.minimum(budget, span), color="C3", label=f"budget {budget} tokens")
        else:
            axes.plot(span, np.floor(budget * span), color="C3", label=f"budget {budget:g}: floor({budget:g} N)")
    axes.set_xlabel("visual tokens of the stock model (N)")
    axes.set_ylabel("visual tokens kept")
    axes.set_xlim(0, span[-1])
    axes.set_ylim(0, max(kept.max(), 1) * 1.1 if budgets else span[-1])
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    return _png(figure)


def chart_histogram(data: ChartData, key: str, xlabel: str, *, color: str = "C0") -> bytes | None:
    if key not in data.histograms or not data.histograms[key][1].sum():
        return None
    edges, counts = data.histograms[key]
    figure, axes = _new_figure(height=3.2)
    axes.hist(edges[:-1], bins=edges, weights=counts, color=color, edgecolor="white")  # bars of the counted bins
    axes.set_xlabel(xlabel)
    axes.set_ylabel("items")
    _whole_numbers(axes.yaxis)
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)


def chart_timeline(data: ChartData, run_names: list) -> bytes | None:
    """Each item's generation cost and the running total, along the output order."""
    figure, axes = _new_figure(height=3.8)
    _plot_item_costs(axes, data, run_names)
    if data.error_position.size:
        axes.plot(data.error_position, np.zeros(data.error_position.size), "|", color="C3", markersize=12,
                  label="error rows")
    boundaries = _mark_shard_boundaries(axes, data.boundaries)
    axes.set_xlabel(f"row in output order (shard files sorted, rows in input order{boundaries})")
    axes.set_ylabel("ms of generation per item")
    axes.set_ylim(bottom=0)
    axes.set_xlim(-0.5, data.rows - 0.5)
    axes.grid(alpha=0.3)
    total = axes.twinx()
    total.step(data.position, data.cumulative_s, where="post", color="black", lw=1.2,
               label="cumulative generation time")
    total.set_ylabel("cumulative generation time (s)")
    total.set_ylim(bottom=0)
    handles, labels = (a + b for a, b in zip(axes.get_legend_handles_labels(), total.get_legend_handles_labels()))
    # Above the plot: inside it would cover points or the cumulative line, wherever it went.
    axes.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.01), ncols=4, fontsize="small", frameon=False)
    return _png(figure)


def _plot_item_costs(axes, data: ChartData, run_names: list, most_runs: int = 8) -> None:
    """The sampled ok items' shares of batch time, one colour per run when several runs wrote the output."""
    milliseconds = data.seconds * 1000
    if len(run_names) <= 1:
        axes.scatter(data.position, milliseconds, s=8, alpha=0.6, label="items (share of batch time)")
        return
    for index, run in enumerate(run_names[:most_runs]):
        mine = data.run == run
        axes.scatter(data.position[mine], milliseconds[mine], s=8, alpha=0.6, color=f"C{index}",
                     label=f"run {_short(run, 32)}")
    others = ~np.isin(data.run, np.asarray(run_names[:most_runs], dtype=object))
    if others.any():
        axes.scatter(data.position[others], milliseconds[others], s=8, alpha=0.6, color="grey", label="other runs")


def _mark_shard_boundaries(axes, starts: list[int]) -> str:
    """Dashed lines where one shard's rows end, if few enough to read; the axis label's mention of them."""
    if not starts or len(starts) > MAX_SHARD_LINES:
        return ""
    for start in starts:
        axes.axvline(start - 0.5, color="grey", lw=0.6, ls="--")
    return "; dashed: shard boundaries"


def chart_errors_by_reason(errors_by_reason: dict) -> bytes | None:
    if not errors_by_reason:
        return None
    reasons = list(errors_by_reason.items())[:MAX_REASON_BARS]
    figure, axes = _new_figure(height=max(1.6, 0.5 + 0.35 * len(reasons)))
    labels = [_short(reason) for reason, _ in reasons][::-1]  # largest at the top
    counts = [count for _, count in reasons][::-1]
    bars = axes.barh(range(len(reasons)), counts, color="C3")
    axes.set_yticks(range(len(reasons)), labels=labels)
    axes.bar_label(bars, padding=3)
    axes.set_xlabel("error rows")
    _whole_numbers(axes.xaxis)
    axes.set_xlim(0, max(counts) * 1.15)
    return _png(figure)


# ---------------------------------------------------------------------------------------------
# HTML


def esc(value) -> str:
    """Text for HTML: everything from the data goes through here."""
    return "n/a" if value is None else html.escape(str(value), quote=True)


def number(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def percent(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def listing(values: list) -> str:
    if not values:
        return "n/a"
    shown = ", ".join(esc(v) for v in values[:5])
    return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def figure_html(key: str, title: str, png: bytes | None, caption: str, missing: str) -> str:
    """One chart: an embedded PNG, or the reason there is none (never a broken image)."""
    if png is None:
        body = f'<p class="na">{missing}</p>'
    else:
        data = base64.b64encode(png).decode("ascii")
        body = f'<img alt="{esc(title)}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption>'
    return f'<figure id="chart-{key}" class="chart"><h3>{esc(title)}</h3>{body}</figure>'


def key_values(pairs: list[tuple[str, str]], css: str = "facts") -> str:
    """A two-column table; the values are HTML already (escaped by the caller)."""
    rows = "".join(f"<tr><th>{esc(label)}</th><td>{value}</td></tr>" for label, value in pairs)
    return f'<table class="{css}">{rows}</table>'


def rows_table(headers: list[str], rows: list[list], css: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_section(output: Output, facts: dict) -> str:
    run = facts["this_run"]
    if run is None:
        throughput = "n/a (no _summary.json: the job's wall time is not in the rows)"
    elif not run.get("rows_processed"):
        throughput = f"n/a: the last run ({esc(facts['last_run_id'])}) found every shard complete and processed nothing"
    else:
        throughput = (f"{number(run.get('images_per_s'), 2)} images/s, {number(run.get('generated_tokens_per_s'))} "
                      f"generated tokens/s ({number(run.get('rows_processed'))} rows in {number(run.get('wall_s'))} s, "
                      f"run {esc(facts['last_run_id'])}, wall clock: loading, preprocessing and generation)")
    by_reason = facts["errors_by_reason"]
    pairs = [
        ("items", f'<span id="items">{facts["items"]}</span>'),
        ("ok", f'<span id="ok">{facts["ok"]}</span>'),
        ("errors", f'<span id="errors">{facts["errors"]}</span>'
         + (" (" + ", ".join(f"{esc(r)}: {n}" for r, n in by_reason.items()) + ")" if by_reason else "")),
        ("duplicate ids", f'<span id="duplicate-ids">{facts["duplicate_ids"]}</span>'
         + (f" (kept, not merged), e.g. {listing(facts['duplicate_id_examples'])}" if facts["duplicate_ids"] else "")),
        ("throughput of the last run", throughput),
        ("generation time", f"{number(facts['generation_s'], 2)} s summed over batches: "
         f"{number(facts['items_per_generation_s'], 2)} items/s, {number(facts['tokens_per_generation_s'])} "
         "generated tokens/s of generation (excludes loading and preprocessing; parallel actors add up)"),
        ("visual tokens", f"{number(facts['mean_visual_tokens_kept'])} kept of {number(facts['mean_visual_tokens_full'])} "
         f'on average: kept fraction <span id="kept-fraction">{percent(facts["kept_fraction"])}</span>'),
        ("mean time to first token", f"{number(facts['mean_ttft_ms'])} ms (per batch)"),
        ("mean tokens/s per item", number(facts["mean_tokens_per_s_per_item"])),
        ("peak GPU memory", "n/a on CPU" if facts["peak_gpu_mem_bytes"] is None else gib(facts["peak_gpu_mem_bytes"])),
    ]
    if "vqa" in facts:
        vqa = facts["vqa"]
        pairs.append(("VQA accuracy", f'<span id="vqa-accuracy">{percent(vqa["accuracy"])}</span>, exact match '
                      f'{percent(vqa["exact_match"])} over {vqa["scored"]} scored items'))
    pairs += [
        ("failed shards", failed_shards_html(facts["failed_shards"])),
        ("task", esc(facts["task"])),
        ("model", listing(facts["models"])),
        ("device", listing(facts["devices"])),
        ("strategy, budget, alpha", f"{listing(facts['strategies'])}; {listing([_budget_text(b) for b in facts['budgets']])}; "
                                    f"{listing(facts['alphas'])}"),
        ("runs that wrote rows", f"{len(facts['run_ids'])}: {listing(facts['run_ids'])}"),
        ("shards", shards_html(facts)),
    ]
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in output.notes)
    return f'<section id="summary"><h2>Summary</h2>{notes}{key_values(pairs)}</section>'


def failed_shards_html(failed: list | None) -> str:
    if failed is None:
        return "unknown (recorded only in _summary.json)"
    if not failed:
        return '<span id="failed-shards">0</span>'
    rows = [[f.get("shard"), f.get("reason")] for f in failed if isinstance(f, dict)]
    return f'<span id="failed-shards" class="bad">{len(failed)}</span>' + rows_table(["shard", "reason"], rows, "failed")


def shards_html(facts: dict) -> str:
    text = f"{facts['result_files']} with results"
    shards = facts["shards"]
    if isinstance(shards, dict):
        text += " (last run: " + ", ".join(f"{esc(k).replace('_', ' ')} {esc(v)}" for k, v in shards.items()) + ")"
    return text


def charts_section(facts: dict, data: ChartData) -> str:
    devices = ", ".join(esc(d) for d in facts["devices"]) or "unknown"
    sampled = (f" An even sample of {MAX_PLOTTED_POINTS:,} of the {facts['ok']:,} ok items is plotted."
               if facts["ok"] > MAX_PLOTTED_POINTS else "")
    figures = [
        figure_html("visual-tokens", "Visual tokens kept vs full", chart_visual_tokens(data, facts["budgets"]),
                    "One point per ok item: the tokens the LLM saw against the stock model's count N; "
                    "the red line is the budget, the dotted one keeping everything." + sampled,
                    "No ok item to plot."),
        figure_html("ttft", "Time to first token", chart_histogram(data, "ttft", "time to first token (ms)"),
                    "Per batch (vision, HiRED and prefill of the whole batch): the items of one batch share a "
                    "value, so each batch counts once per item in it.",
                    "No ok item to plot."),
        figure_html("tokens-per-s", "Tokens per second",
                    chart_histogram(data, "tokens-per-s", "generated tokens / s, per item", color="C1"),
                    "Each item's generated tokens over its batch's time to first token plus decode.",
                    "No ok item to plot."),
        figure_html("gpu-memory", "Peak GPU memory",
                    chart_histogram(data, "gpu-memory", "peak allocated GPU memory (GiB)", color="C4"),
                    "The peak allocated memory of each item's batch.",
                    f"n/a on CPU: no GPU memory was recorded (device: {devices})."),
        figure_html("timeline", "Over the output", chart_timeline(data, facts["run_ids"]),
                    "The rows carry no timestamps, so this follows the output order, not the order work ran in "
                    "(generation actors sort items longest first and run shards side by side). Points: each ok "
                    "item's share of its batch's time (time to first token + decode, divided by the batch size); "
                    "line: their running sum; red ticks: error rows." + sampled,
                    "No rows to plot."),
        figure_html("errors", "Errors by reason", chart_errors_by_reason(facts["errors_by_reason"]),
                    "Error rows grouped by the kind of their reason (the fixed phrase it starts with).",
                    "No errors."),
    ]
    return '<section id="charts"><h2>Charts</h2>' + "".join(figures) + "</section>"


def errors_section(first: FirstPass) -> str:
    count, rows = first.error_count, first.first_errors
    if not count:
        return '<section id="error-rows"><h2>Error rows</h2><p>None.</p></section>'
    heading = f"first {len(rows)} of {count}" if count > len(rows) else f"all {count}"
    return (f'<section id="error-rows"><h2>Error rows ({heading})</h2>'
            + rows_table(["id", "row", "shard", "error"], rows, "errors") + "</section>")


SAMPLE_COLUMNS = ("id", "error", "text", "visual_tokens_kept", "visual_tokens_full", "question", "answers",
                  "vqa_accuracy", "exact_match")


def first_ok_records(output: Output, limit: int) -> list[dict]:
    """The first ``limit`` ok rows with their text, reading only as many files as that takes."""
    records: list[dict] = []
    for table in output.tables(SAMPLE_COLUMNS):
        if len(records) >= limit:
            break
        records += table.filter(ok_rows(table)).slice(0, limit - len(records)).to_pylist()
    return records


def samples_section(output: Output, limit: int) -> str:
    if limit <= 0:
        return ""
    records = first_ok_records(output, limit)
    if not records:
        return '<section id="samples"><h2>Sample outputs</h2><p>No ok rows.</p></section>'
    preview = lambda text: text if text is None or len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"  # noqa: E731
    if output.is_vqa:
        headers = ["id", "question", "answer", "references", "VQA accuracy", "exact match"]
        rows = [[r["id"], preview(r.get("question")), preview(r.get("text")),
                 preview(", ".join(r.get("answers") or [])), number(r.get("vqa_accuracy"), 2), r.get("exact_match")]
                for r in records]
    else:
        headers = ["id", "caption", "visual tokens kept / full"]
        rows = [[r["id"], preview(r.get("text")), f"{r.get('visual_tokens_kept')} / {r.get('visual_tokens_full')}"]
                for r in records]
    return (f'<section id="samples"><h2>Sample outputs (first {len(rows)} ok rows)</h2>'
            + rows_table(headers, rows, "samples") + "</section>")


def vqa_section(output: Output, facts: dict, data: ChartData) -> str:
    if not output.is_vqa:
        return ""
    vqa = facts.get("vqa") or {"scored": 0, "accuracy": None, "exact_match": None}
    pairs = [
        ("scored items", str(vqa["scored"])),
        ("VQA accuracy", percent(vqa["accuracy"])),
        ("exact-match rate", f'<span id="exact-match">{percent(vqa["exact_match"])}</span>'),
    ]
    chart = figure_html("vqa-accuracy", "VQA accuracy per answer",
                        chart_histogram(data, "vqa-accuracy", "VQA accuracy of the answer", color="C2"),
                        "Standard VQA accuracy of each scored answer: min(matching references / 3, 1) averaged "
                        "over the leave-one-out subsets of the references.",
                        "No scored answer (no ok row with reference answers).")
    return f'<section id="vqa"><h2>VQA</h2>{key_values(pairs)}{chart}</section>'


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.1em; } .sub { color: #666; margin-top: 0; word-break: break-all; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border-bottom: 1px solid #ddd; padding: 3px 8px;
text-align: left; vertical-align: top; } table.facts th { white-space: nowrap; color: #444; font-weight: 600; }
td { word-break: break-word; } .note { background: #fff6d6; padding: 6px 10px; border-left: 4px solid #e0b000; }
.bad { color: #b00020; font-weight: 600; } .na { color: #666; font-style: italic; }
figure.chart { margin: 1.2em 0; } figure.chart img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 13px; max-width: 800px; }
"""

# No scripts, no remote loads: the page is self-contained by construction, and should escaping ever
# miss something, a browser still refuses to run it.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_report(output: Output, *, error_rows: int = DEFAULT_ERROR_ROWS, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> str:
    """The report as one HTML document."""
    first = first_pass(output, error_rows)
    facts = first.facts
    data = second_pass(output, first)
    with _plain_text():
        body = (summary_section(output, facts) + vqa_section(output, facts, data) + charts_section(facts, data)
                + errors_section(first) + samples_section(output, sample_rows))
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"hired run report: {output.uri}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>hired run report</h1><p class="sub">{esc(output.uri)}, {esc(facts["task"])}, made {made}</p>'
            f"{body}</body></html>\n")


def write_report(output_uri: str, report_path: str = DEFAULT_REPORT, **options) -> str:
    """Read the output at ``output_uri`` and write its report to ``report_path`` (any fsspec URI)."""
    page = render_report(load_output(output_uri), **options)
    try:
        with fsspec.open(report_path, "w", encoding="utf-8") as f:
            f.write(page)
    except Exception as e:
        raise ReportError(f"cannot write {report_path}: {type(e).__name__}: {e}") from None
    return report_path


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description=(
            "Write a self-contained HTML report (one file, charts embedded) of a caption or VQA job's "
            "output: counts, errors and their reasons, visual tokens kept, latency, throughput, GPU memory "
            "and, for VQA, accuracy. Counts come from the result rows; the last run's wall time and failed "
            "shards from _summary.json when present."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_uri", metavar="OUTPUT_URI",
                        help="the job's --output location: local path, file:// or s3:// URI")
    parser.add_argument("-o", "--report", default=DEFAULT_REPORT, metavar="PATH",
                        help="where to write the HTML report (a path or fsspec URI)")
    parser.add_argument("--error-rows", type=int, default=DEFAULT_ERROR_ROWS, metavar="N",
                        help="list the first N error rows (id, position, reason)")
    parser.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS, metavar="N",
                        help="show the first N ok rows' captions or answers (0: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.error_rows < 0 or args.sample_rows < 0:
        parser.error("--error-rows and --sample-rows must be 0 or more")
    try:
        path = write_report(args.output_uri, args.report, error_rows=args.error_rows, sample_rows=args.sample_rows)
    except ReportError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"report of {args.output_uri} written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
