"""The run summary: what the output holds (all shards, this run's and earlier ones'),
and how fast this run went.

Computed from aggregates, never from all rows at once: each result file is read on its own,
only the columns the summary needs, and folded into running totals with Arrow kernels. The
driver's memory therefore does not grow with the output (a million rows cost what a thousand
do, plus the ids spilled to local disk for the duplicate check, see :class:`DuplicateIds`).

``hired summary OUTPUT`` prints the summary of an output location, the same code the job runs at
its end.
"""

from __future__ import annotations

import collections
import json
import logging
import posixpath
import sys
import tempfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .benchmarks import BENCHMARKS, Aggregator, BenchmarkDataError, ColumnError
from .columns import (
    ERROR_KIND, EXACT_MATCH, GENERATED_TOKENS, ID, PEAK_GPU_MEM_BYTES, PROMPT_INDEX, PROMPT_NAME, SCORE, TOKENS_PER_S,
    TTFT_MS, VISUAL_TOKENS_FULL, VISUAL_TOKENS_KEPT, VQA_ACCURACY,
)
from .io.location import Location
from .io.manifest import GONE, Manifest
from .io.outputs import META_SETTINGS, Outputs, result_name
from .job.progress import progress_line
from .tally import DUPLICATE_EXAMPLES, DuplicateIds, RunningMean

# The columns the summary reads (and, in a benchmark run's files, those its aggregates read: read_columns);
# captions, prompts and VQA references are never loaded.
SUMMARY_COLUMNS = (ID, ERROR_KIND, VISUAL_TOKENS_KEPT, VISUAL_TOKENS_FULL, GENERATED_TOKENS, TTFT_MS,
                   TOKENS_PER_S, PEAK_GPU_MEM_BYTES, VQA_ACCURACY, EXACT_MATCH, PROMPT_INDEX, PROMPT_NAME)
# Each mean in the summary and the column it averages over the ok rows.
MEANS = {"mean_visual_tokens_kept": VISUAL_TOKENS_KEPT, "mean_visual_tokens_full": VISUAL_TOKENS_FULL,
         "mean_generated_tokens": GENERATED_TOKENS, "mean_ttft_ms": TTFT_MS,
         "mean_tokens_per_s_per_item": TOKENS_PER_S}


def benchmark_of(metadata: dict | None) -> str | None:
    """The benchmark a result file's run scored (``--benchmark``, recorded in its footer), or None."""
    try:
        return json.loads((metadata or {}).get(META_SETTINGS, b"{}")).get("benchmark")
    except (ValueError, AttributeError):  # a footer hired did not write
        return None


def read_columns(where: Location, path: str, columns, manifest: Manifest | None = None,
                 scoring: bool = False) -> pa.Table | str:
    """One result file's ``columns`` (those it has), retried as a whole if storage falters; with a
    ``manifest``, why the file is left out instead, when it does not describe the current input
    (told by its footer, which opening the file reads anyway). ``scoring``: also, in a benchmark
    run's file, ``score`` and the columns its aggregates read."""

    def read() -> pa.Table | str:
        with where.fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            if manifest is not None:
                why = manifest.why_left_out(result_name(path), parquet.metadata.metadata)
                if why is not None:
                    return why
            wanted = list(columns)
            benchmark = BENCHMARKS.get(benchmark_of(parquet.metadata.metadata)) if scoring else None
            if benchmark is not None:
                wanted += [SCORE, *benchmark.aggregate_columns]
            present = [c for c in dict.fromkeys(wanted) if c in parquet.schema_arrow.names]
            return parquet.read(columns=present)

    return where.retry.call(read, f"reading {path}")


def output_tables(output: Location, columns, manifest: Manifest | None = None,
                  left_out: dict[str, str] | None = None, scoring: bool = False) -> Iterator[pa.Table]:
    """Each result file's projected columns in output order, one file in memory at a time; with a
    ``manifest``, only the files describing the current input (the others named in ``left_out``)."""
    for path in Outputs(output).result_files():
        if manifest is not None and result_name(path) not in manifest.results:
            read = GONE  # no need to open it
        else:
            read = read_columns(output, path, columns, manifest, scoring)
        if isinstance(read, str):
            if left_out is not None:
                left_out[posixpath.basename(path)] = read
            continue
        yield read


class BenchmarkTotals:
    """A ``--benchmark`` run's aggregates over the output's scored rows, folded file by file in
    output order (as ``pipeline.score`` folds the same files). Rows without a score (ground truth
    that cannot be scored) are counted, not folded."""

    def __init__(self):
        self.name: str | None = None
        self.aggregator: Aggregator | None = None
        self.scored = self.unscored = 0
        self.error: str | None = None

    def add(self, table: pa.Table) -> None:
        name = benchmark_of(table.schema.metadata)
        if name is None:
            return
        if self.name is None:
            self.name = name
            if name not in BENCHMARKS:
                self.error = f"the output was scored as {name!r}, a benchmark this version does not know"
            else:
                self.aggregator = Aggregator(BENCHMARKS[name])
        elif name != self.name and self.error is None:
            self.error = f"the output holds runs of two benchmarks, {self.name} and {name}"
        if SCORE not in table.column_names:
            self.unscored += table.num_rows
            self.error = self.error or f"a result file of the {name} run has no {SCORE!r} column"
            return
        scored = table.filter(pc.is_valid(table.column(SCORE)))
        self.scored += scored.num_rows
        self.unscored += table.num_rows - scored.num_rows
        if self.error is None:
            try:
                self.aggregator.add_table(scored)
            except (BenchmarkDataError, ColumnError) as error:
                self.error = str(error)

    def result(self) -> dict | None:
        if self.name is None:
            return None
        aggregates = None
        if self.error is None:
            try:
                aggregates = self.aggregator.result()
            except BenchmarkDataError as error:  # MME's questions come in pairs
                self.error = str(error)
        known = BENCHMARKS.get(self.name)
        return {"name": self.name, "task": known.task if known else None, "scored": self.scored,
                "unscored": self.unscored, "aggregates": aggregates, "error": self.error}


class SummaryTotals:
    """The output's counts and means, folded in one table (any slice of the rows) at a time."""

    def __init__(self, spill_directory: str):
        self.items = 0
        self.ok = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.means = {name: RunningMean() for name in MEANS}
        self.peak_gpu_mem_bytes: int | None = None
        self.ids = DuplicateIds(spill_directory)
        self.has_vqa = False
        self.scored = 0
        self.accuracy = RunningMean()
        self.exact_match = RunningMean()
        self.benchmark = BenchmarkTotals()
        self.pictures = 0  # with --prompts: input rows (each has a row per prompt)
        self.prompt_names: set[str] = set()

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.benchmark.add(table)
        self.items += table.num_rows
        kinds = table.column(ERROR_KIND) if ERROR_KIND in table.column_names else pa.nulls(table.num_rows, pa.string())
        ok = pc.is_null(kinds)
        self.ok += int(pc.sum(ok).as_py() or 0)
        counted = pc.value_counts(pc.drop_null(kinds))
        for kind, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
            self.reasons[kind] += count
        ids = table.column(ID) if ID in table.column_names else None
        if PROMPT_INDEX in table.column_names:  # one row per (id, prompt): an id once per picture
            first = pc.fill_null(pc.equal(table.column(PROMPT_INDEX), 0), False)
            self.pictures += int(pc.sum(first).as_py() or 0)
            self.prompt_names.update(n for n in pc.unique(table.column(PROMPT_NAME)).to_pylist() if n is not None)
            ids = None if ids is None else ids.filter(first)
        if ids is not None:
            self.ids.add(ids)
        done = table.filter(ok)
        for name, column in MEANS.items():
            if column in done.column_names:
                self.means[name].add(done.column(column))
        if PEAK_GPU_MEM_BYTES in done.column_names:
            peak = pc.max(done.column(PEAK_GPU_MEM_BYTES)).as_py()
            if peak is not None:
                self.peak_gpu_mem_bytes = peak if self.peak_gpu_mem_bytes is None else max(peak, self.peak_gpu_mem_bytes)
        if VQA_ACCURACY in table.column_names:
            self.has_vqa = True
            scored = done.filter(pc.is_valid(done.column(VQA_ACCURACY)))
            self.scored += scored.num_rows
            self.accuracy.add(scored.column(VQA_ACCURACY))
            if EXACT_MATCH in scored.column_names:
                self.exact_match.add(scored.column(EXACT_MATCH).cast(pa.int64()))

    def counts(self) -> dict:
        """The summary's keys about the output (the job adds the run's own)."""
        duplicates, examples = self.ids.result()
        mean_kept = self.means["mean_visual_tokens_kept"].value
        mean_full = self.means["mean_visual_tokens_full"].value
        counts = {
            "items": self.items,
            **({"pictures": self.pictures, "prompts": sorted(self.prompt_names)} if self.prompt_names else {}),
            "ok": self.ok,
            "errors": sum(self.reasons.values()),
            "errors_by_reason": dict(self.reasons.most_common()),
            "duplicate_ids": duplicates,
            "duplicate_id_examples": examples,
            "mean_visual_tokens_kept": mean_kept,
            "mean_visual_tokens_full": mean_full,
            "kept_fraction": (mean_kept / mean_full) if mean_kept is not None and mean_full else None,
        }
        counts.update({name: self.means[name].value for name in MEANS if name not in counts})
        counts["peak_gpu_mem_bytes"] = self.peak_gpu_mem_bytes
        if self.has_vqa:
            counts["vqa"] = {"scored": self.scored, "accuracy": self.accuracy.value,
                             "exact_match": self.exact_match.value}
        benchmark = self.benchmark.result()
        if benchmark is not None:
            counts["benchmark"] = benchmark
        return counts


def summarize_tables(tables, *, processed_rows: int, processed_generated_tokens: int, wall_s: float,
                     extra: dict, left_out: dict[str, str] | None = None) -> dict:
    """The summary of the rows in ``tables`` (an iterable, read one at a time), plus this run's
    throughput; ``left_out``: result files not counted, and why (filled as ``tables`` is read)."""
    left_out = {} if left_out is None else left_out
    with tempfile.TemporaryDirectory(prefix="hired-summary-") as spill:
        totals = SummaryTotals(spill)
        for table in tables:
            totals.add(table)
        counts = totals.counts()
    vqa = counts.pop("vqa", None)
    benchmark = counts.pop("benchmark", None)
    summary = {
        **extra,
        **counts,
        "left_out_results": {"count": len(left_out),
                             "examples": [f"{name}: {why}" for name, why in list(left_out.items())[:DUPLICATE_EXAMPLES]]},
        "this_run": {
            "rows_processed": processed_rows,
            "wall_s": round(wall_s, 3),
            "images_per_s": processed_rows / wall_s if wall_s > 0 else None,
            "generated_tokens_per_s": processed_generated_tokens / wall_s if wall_s > 0 else None,
        },
    }
    if vqa is not None:
        summary["vqa"] = vqa
    if benchmark is not None:
        summary["benchmark"] = benchmark
    return summary


def summarize(table: pa.Table | None, **run) -> dict:
    """The summary of one in-memory table (tests, small outputs); see :func:`summarize_tables`."""
    return summarize_tables([] if table is None else [table], **run)


def summarize_output(output: Location, manifest: Manifest | None = None, **run) -> dict:
    """The summary of the result files under ``output``, read file by file: with a ``manifest``
    (pipeline.io.manifest), only those describing the current input; without, all of them."""
    left_out: dict[str, str] = {}
    return summarize_tables(output_tables(output, SUMMARY_COLUMNS, manifest, left_out, scoring=True),
                            left_out=left_out, **run)


def write_summary(output: Location, summary: dict) -> str:
    """``_summary.json`` beside the output (the latest run) and ``_runs/<run_id>.json`` (history)."""
    fs, root = output.fs, output.path
    text = json.dumps(summary, indent=2, sort_keys=False, default=str)
    write_run_record(output, summary["run_id"], summary, attempts=None)
    path = posixpath.join(root, "_summary.json")
    with fs.open(path, "w") as f:
        f.write(text)
    return fs.unstrip_protocol(path)


def write_run_record(output: Location, run_id: str, record: dict, attempts: int | None = 1) -> None:
    """``_runs/<run_id>.json``: a running job's progress, rewritten at each shard write, then its
    summary. While running, one attempt (``attempts=1``) and no retries: a progress record must
    never hold up the run; a failed write is logged and the next one catches up."""
    fs = output.fs
    path = posixpath.join(output.path, "_runs", f"{run_id}.json")
    text = json.dumps(record, indent=2, default=str)
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "w") as f:
            f.write(text)
    except Exception as error:
        if attempts is None:
            raise
        logging.getLogger("hired.pipeline").warning("could not update %s: %s: %s", fs.unstrip_protocol(path),
                                                    type(error).__name__, error)


def read_run_record(output: Location, run_id: str) -> dict | None:
    """``_runs/<run_id>.json`` as written, or None when it is missing or unreadable."""
    path = posixpath.join(output.path, "_runs", f"{run_id}.json")
    try:
        record = json.loads(output.fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def format_summary(summary: dict) -> str:
    """A few readable lines for the end of a job's log."""

    def num(v, fmt="{:.1f}"):
        return "n/a" if v is None else fmt.format(v)

    run = summary.get("this_run")  # absent when summarising an output outside a job
    lines = []
    if summary.get("running"):  # a job is writing to this output now
        running = summary["running"]
        lines.append(f"run {running['run_id']} is running (as of {running['updated_at']}): "
                     f"{progress_line(running['progress'])}")
    pictures = (f" ({summary['pictures']} pictures x {len(summary['prompts'])} prompts)"
                if summary.get("prompts") else "")
    lines.append(
        f"items {summary['items']}{pictures}  ok {summary['ok']}  errors {summary['errors']}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in summary['errors_by_reason'].items())})" if summary["errors"] else ""),
    )
    changes = summary.get("input_changes")
    if changes and (changes["redone_shards"] or changes["new_shards"]):
        lines.append(f"input changes: {changes['new_shards']} new shard(s), {changes['redone_shards']} redone "
                     f"(changed since their output was written{', e.g. ' + ', '.join(changes['redone_examples']) if changes['redone_examples'] else ''})")
    if changes and changes.get("moved_to"):
        lines.append(f"moved {changes['removed_results']} result file(s) whose shard is gone to {changes['moved_to']}")
    left_out = summary.get("left_out_results") or {"count": 0}
    if left_out["count"]:
        lines.append(f"left out: {left_out['count']} result file(s) not describing the current input, e.g. "
                     f"{'; '.join(left_out['examples'][:3])} (--prune moves those whose shard is gone under _removed/)")
    if run is not None:
        lines.append(f"this run: {run['rows_processed']} rows in {run['wall_s']:.1f} s = "
                     f"{num(run['images_per_s'], '{:.2f}')} images/s, {num(run['generated_tokens_per_s'])} generated tokens/s")
    lines += [
        f"visual tokens: {num(summary['mean_visual_tokens_kept'])} kept of {num(summary['mean_visual_tokens_full'])} "
        f"({num(summary['kept_fraction'] and 100 * summary['kept_fraction'])}%)",
        f"mean time to first token {num(summary['mean_ttft_ms'])} ms; peak GPU memory "
        + ("n/a (CPU)" if summary["peak_gpu_mem_bytes"] is None else f"{summary['peak_gpu_mem_bytes'] / 2**30:.2f} GiB"),
    ]
    if summary.get("duplicate_ids"):
        lines.append(f"duplicate ids: {summary['duplicate_ids']} (kept, not merged), e.g. {summary['duplicate_id_examples'][:5]}")
    if summary.get("failed_shards"):
        lines.append(f"FAILED shards: {len(summary['failed_shards'])}")
        lines += [f"  {f['shard']}: {f['reason']}" for f in summary["failed_shards"]]
    if "benchmark" in summary:
        lines.append(benchmark_line(summary["benchmark"]))
    if "vqa" in summary:
        vqa = summary["vqa"]
        lines.append(f"VQA accuracy {num(vqa['accuracy'] and 100 * vqa['accuracy'])}%  exact match "
                     f"{num(vqa['exact_match'] and 100 * vqa['exact_match'])}% over {vqa['scored']} scored items")
    return "\n".join(lines)


def benchmark_line(result: dict) -> str:
    """The benchmark's aggregates in a line: ``pope (lmms-eval pope) over 6 scored rows: accuracy 50.0%, ...``."""
    head = f"{result['name']} (lmms-eval {result['task']}) over {result['scored']} scored rows"
    if result["unscored"]:
        head += f" ({result['unscored']} without a score)"
    if result["error"]:
        return f"{head}: no aggregates: {result['error']}"
    benchmark = BENCHMARKS[result["name"]]
    return f"{head}: " + ", ".join(f"{k} {benchmark.shown(v)}" for k, v in result["aggregates"].items())


if __name__ == "__main__":  # python -m pipeline.summary OUTPUT: the same as hired summary OUTPUT
    from .cli import main

    sys.exit(main(["summary", *sys.argv[1:]]))
