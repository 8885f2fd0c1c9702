"""The end-of-run summary and the report at a million rows: time and peak memory.

Writes synthetic outputs with the real output schema (``pipeline.columns.OUTPUT_SCHEMA``) through
the pipeline's own writer: 1,000,000 rows in 200 files, and 1,000 rows in the same 200 files.
Then runs ``python -m pipeline.summary`` and ``python -m pipeline.report`` on each in a subprocess
and measures its wall time and peak RSS (its own ``ru_maxrss``, from ``os.wait4`` in a small launcher).
Prints the figures against the targets and writes them to ``bench/results/summary-<machine>-<rows>-rows.json``.

    python bench/bench_summary.py                 # both outputs, summary and report
    python bench/bench_summary.py --row-by-row    # also a summary that reads every row into Python
    python bench/bench_summary.py --rows 10000000 # ten million rows, same 200 files

Targets: summary of 1M rows in <= 600 MiB and <= 30 s; report in <= 800 MiB and
<= 60 s; the summary's peak over 1M rows no more than over 1,000 rows plus a small constant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.columns import OUTPUT_SCHEMA  # noqa: E402
from pipeline.io.location import Location  # noqa: E402
from pipeline.io.outputs import Outputs  # noqa: E402
from pipeline.io.shard import Shard  # noqa: E402

FILES = 200
TARGETS = {"summary": {"peak_rss_mib": 600, "wall_s": 30}, "report": {"peak_rss_mib": 800, "wall_s": 60}}
SMALL_CONSTANT_MIB = 64  # what "no more than over 1,000 rows plus a small constant" allows here

# For comparison (--row-by-row): a summary that reads every output row into Python.
ROW_BY_ROW = """
import sys, collections
import pyarrow.parquet as pq
rows = pq.read_table(sys.argv[1]).to_pylist()
ids = collections.Counter(r["id"] for r in rows)
print(len(rows), sum(1 for c in ids.values() if c > 1))
"""


def synthetic_shard(index: int, rows: int, first_row: int, rng: np.random.Generator) -> pa.Table:
    """One output file's rows: captions, 2% dead links (each reason names its own URI), 0.1% duplicate ids."""
    n = np.arange(first_row, first_row + rows)
    ids = np.char.add("item-", n.astype(str)).astype(object)
    duplicated = rng.random(rows) < 0.001
    ids[duplicated] = np.char.add("item-", rng.integers(0, max(first_row, 1), duplicated.sum()).astype(str))
    failed = rng.random(rows) < 0.02
    full = rng.choice([1728, 2304, 2880], rows).astype(np.int32)
    generated = rng.integers(8, 40, rows).astype(np.int32)
    ttft = rng.uniform(200, 900, rows)
    decode = generated * rng.uniform(20, 40, rows)
    nulls = lambda values: pa.array(values, mask=failed)  # noqa: E731
    shard_uri = f"s3://bench-input/shard-{index:05d}.parquet"
    columns = {
        "id": pa.array(ids, pa.string()),
        "text": pa.array(np.char.add("a photograph of a thing, number ", n.astype(str)).astype(object), mask=failed),
        "error": pa.array(np.char.add("cannot fetch image_uri: s3://bench-images/gone/", n.astype(str)).astype(object),
                          mask=~failed),
        "error_kind": pa.array(np.full(rows, "cannot fetch image_uri", dtype=object), mask=~failed),
        "visual_tokens_full": nulls(full),
        "visual_tokens_kept": nulls((full * 0.2).astype(np.int32)),
        "prompt_tokens": nulls((full * 0.2 + 40).astype(np.int32)),
        "generated_tokens": nulls(generated),
        "ttft_ms": nulls(ttft),
        "decode_ms": nulls(decode),
        "tokens_per_s": nulls(generated / ((ttft + decode) / 1000)),
        "batch_size": nulls(np.full(rows, 8, np.int32)),
        "peak_gpu_mem_bytes": nulls(rng.integers(14 * 2**30, 18 * 2**30, rows)),
        "device": pa.array(["cuda:0"] * rows),
        "model": pa.array(["llava-hf/llava-v1.6-vicuna-7b-hf"] * rows),
        "strategy": pa.array(["hired"] * rows),
        "budget_fraction": pa.array(np.full(rows, 0.2)),
        "budget_tokens": pa.nulls(rows, pa.int32()),
        "alpha": pa.array(np.full(rows, 0.5)),
        "run_id": pa.array(["run-bench"] * rows),
        "source_shard": pa.array([shard_uri] * rows),
        "row_index": pa.array(np.arange(rows, dtype=np.int64)),
    }
    return pa.table([columns[f.name].cast(f.type) for f in OUTPUT_SCHEMA], schema=OUTPUT_SCHEMA)


def write_synthetic_output(directory: Path, rows: int, files: int = FILES) -> str:
    """``rows`` result rows in ``files`` files under ``directory`` (reused if already complete)."""
    done = directory / "_complete"
    if done.exists():
        return str(directory)
    rng = np.random.default_rng(12)
    per_file = np.diff(np.linspace(0, rows, files + 1).round().astype(int))
    first = 0
    outputs = Outputs(Location.resolve(str(directory)))
    for index, count in enumerate(per_file):
        table = synthetic_shard(index, int(count), first, rng)
        shard = Shard(uri=f"s3://bench-input/shard-{index:05d}.parquet", name=f"shard-{index:05d}",
                      num_rows=int(count), format="parquet", path=f"bench-input/shard-{index:05d}.parquet",
                      plan=(int(count),))
        outputs.write(shard, table, {"model": "bench"})
        first += int(count)
    done.write_text("")
    return str(directory)


# Runs a command as its own child and writes that child's peak RSS to a file. The launcher is a
# small fresh process on purpose: Linux counts the memory a process had before exec in its
# ru_maxrss, so a command forked straight from this (large) benchmark would report our size.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss}, f)
"""


def measure(command: list[str], scratch: str) -> dict:
    """Wall time and peak resident memory of one command run as a child process."""
    figures_file = os.path.join(scratch, "rusage.json")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, figures_file, *command], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    wall_s = time.perf_counter() - started
    output = done.stdout.decode(errors="replace")
    with open(figures_file) as f:
        usage = json.load(f)
    if done.returncode != 0 or usage["code"] != 0:
        raise SystemExit(f"{' '.join(command)} failed ({usage['code']}):\n{output[-3000:]}")
    peak_mib = usage["maxrss"] / 1024 if platform.system() == "Linux" else usage["maxrss"] / 2**20
    return {"wall_s": round(wall_s, 2), "peak_rss_mib": round(peak_mib, 1), "output_tail": output[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000)
    parser.add_argument("--files", type=int, default=FILES, help="result files each output is written in")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "hired-bench-summary"),
                        help="where the synthetic outputs are written (kept for reruns)")
    parser.add_argument("--row-by-row", action="store_true", help="also time a summary that reads every row into Python")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    outputs = {}
    for rows in (args.small_rows, args.rows):
        started = time.perf_counter()
        outputs[rows] = write_synthetic_output(Path(args.data) / f"rows-{rows}-files-{args.files}", rows, args.files)
        print(f"output of {rows:,} rows in {args.files} files: {outputs[rows]} ({time.perf_counter() - started:.1f} s)")

    results = {"rows": args.rows, "small_rows": args.small_rows, "files": args.files, "cpus": os.cpu_count(),
               "load_average": os.getloadavg(), "python": platform.python_version(), "targets": TARGETS,
               "measured": {}}
    with tempfile.TemporaryDirectory() as scratch:
        commands = {
            "summary": lambda uri: [sys.executable, "-m", "pipeline.summary", uri],
            "report": lambda uri: [sys.executable, "-m", "pipeline.report", uri, "-o", f"{scratch}/report.html"],
        }
        if args.row_by_row:
            commands["row_by_row_summary"] = lambda uri: [sys.executable, "-c", ROW_BY_ROW, uri]
        for name, command in commands.items():
            for rows in (args.small_rows, args.rows):
                figures = measure(command(outputs[rows]), scratch)
                results["measured"][f"{name}@{rows}"] = figures
                print(f"{name:>20} {rows:>9,} rows: {figures['wall_s']:7.2f} s  {figures['peak_rss_mib']:7.1f} MiB")

    measured = results["measured"]
    verdicts = {}
    for name, target in TARGETS.items():
        got = measured[f"{name}@{args.rows}"]
        verdicts[name] = {key: {"measured": got[key], "target": limit, "ok": got[key] <= limit}
                          for key, limit in target.items()}
    growth = measured[f"summary@{args.rows}"]["peak_rss_mib"] - measured[f"summary@{args.small_rows}"]["peak_rss_mib"]
    verdicts["summary_memory_growth_mib"] = {"measured": round(growth, 1), "target": SMALL_CONSTANT_MIB,
                                             "ok": growth <= SMALL_CONSTANT_MIB}
    results["verdicts"] = verdicts
    print("\nagainst the targets:")
    for name in TARGETS:
        for key, verdict in verdicts[name].items():
            print(f"  {name} {key}: {verdict['measured']} (target <= {verdict['target']}) "
                  f"{'ok' if verdict['ok'] else 'MISSED'}")
    growth_verdict = verdicts["summary_memory_growth_mib"]
    print(f"  summary peak RSS, {args.rows:,} rows minus {args.small_rows:,} rows: {growth_verdict['measured']} MiB "
          f"(target <= {SMALL_CONSTANT_MIB}) {'ok' if growth_verdict['ok'] else 'MISSED'}")
    if args.row_by_row:
        before, after = measured[f"row_by_row_summary@{args.rows}"], measured[f"summary@{args.rows}"]
        print(f"  row-by-row summary / aggregate summary at {args.rows:,} rows: "
              f"{before['wall_s'] / after['wall_s']:.1f}x the time, {before['peak_rss_mib'] / after['peak_rss_mib']:.1f}x "
              "the memory")

    Path(args.out).mkdir(parents=True, exist_ok=True)
    where = Path(args.out) / f"summary-{platform.machine().replace('_', '-')}-{args.rows}-rows.json"
    where.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {where}")


if __name__ == "__main__":
    main()
