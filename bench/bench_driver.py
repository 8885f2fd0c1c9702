"""Driver benchmark: result rows per second the driver collects into shards and writes.

    python bench/bench_driver.py                     # 100,000 rows, shards of 1,000-5,000, blocks of 8-64
    python bench/bench_driver.py --rows 20000 --repeats 3
    python bench/bench_driver.py --min-block 8 --max-block 8     # the smallest blocks: the most calls a row

One driver serves every GPU; it must keep up with all of them (target: 10,000 rows/s). This
feeds ``ShardCollector`` synthetic result blocks as Ray Data hands them to the driver: pyarrow
tables of the output columns with the types Ray infers from the generation stage's object
arrays (int64 counts, a null-typed column where a block is all nulls), 8-64 rows, several
shards in flight at once, a few blocks delivered twice (a batch Ray retried), and times
``add`` over all of them, writes of complete shards (Parquet, to a local folder) included.

Side by side, round-robin, each in a fresh process on the same blocks:

* ``columnar``: this tree's collector;
* ``row-wise``: the collector at ``--baseline`` (a git commit; by default cb64896, whose collector
  keeps a Python object a row), run from ``git archive``.

Prints rows/s against the target and writes ``bench/results/driver-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "cb64896"  # a commit whose collector keeps a Python object a row
TARGET_ROWS_PER_S = 10_000
RETRIED_BLOCKS = 0.02  # share of blocks delivered a second time


def synthetic_blocks(rows: int, seed: int, min_shard: int, max_shard: int, min_block: int = 8, max_block: int = 64,
                     in_flight: int = 4):
    """(shards as (uri, rows), blocks) for about ``rows`` result rows, blocks interleaved over
    ``in_flight`` shards at a time, in the order a driver could receive them."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    shards = []
    total = 0
    while total < rows:
        size = int(rng.integers(min_shard, max_shard + 1))
        shards.append((f"s3://bench/input/part-{len(shards):05d}.parquet", size))
        total += size
    cursors = {}  # shard number -> next row
    waiting = list(range(len(shards)))
    blocks = []
    while cursors or waiting:
        while waiting and len(cursors) < in_flight:
            cursors[waiting.pop(0)] = 0
        number = list(cursors)[int(rng.integers(len(cursors)))]
        uri, size = shards[number]
        first = cursors[number]
        n = min(int(rng.integers(min_block, max_block + 1)), size - first)
        blocks.append(result_block(pa, rng, uri, first, n))
        # The same rows again; never after the shard's last rows (the row-wise collector
        # failed on rows of a shard it had already written).
        if rng.random() < RETRIED_BLOCKS and first + n < size:
            blocks.append(blocks[-1])
        cursors[number] = first + n
        if cursors[number] == size:
            del cursors[number]
    return shards, blocks


def result_block(pa, rng, uri: str, first: int, n: int):
    """Result rows as the generation stage's object arrays reach the driver: Arrow-inferred types."""
    failed = rng.random(n) < 0.05
    tokens = rng.integers(8, 64, n)
    return pa.table({
        "id": [f"{uri[-18:-8]}-{first + i}" for i in range(n)],
        "text": [None if failed[i] else "a photo of " + "words " * int(tokens[i] // 4) for i in range(n)],
        "error_kind": ["undecodable image" if failed[i] else None for i in range(n)],
        "error_detail": ["cannot identify image file" if failed[i] else None for i in range(n)],
        "visual_tokens_full": [None if failed[i] else 2880 for i in range(n)],
        "visual_tokens_kept": [None if failed[i] else 576 for i in range(n)],
        "prompt_tokens": [None if failed[i] else 640 for i in range(n)],
        "generated_tokens": [None if failed[i] else int(tokens[i]) for i in range(n)],
        "ttft_ms": [None if failed[i] else float(rng.random() * 100) for i in range(n)],
        "decode_ms": [None if failed[i] else float(rng.random() * 900) for i in range(n)],
        "tokens_per_s": [None if failed[i] else float(rng.random() * 50) for i in range(n)],
        "batch_size": [None if failed[i] else 16 for i in range(n)],
        "peak_gpu_mem_bytes": pa.nulls(n),  # all null in the block: Ray's null type
        "device": ["cuda:0"] * n,
        "model": ["llava-hf/llava-v1.6-vicuna-7b-hf"] * n,
        "run_id": ["20261121T000000Z-bench"] * n,
        "strategy": ["hired"] * n,
        "budget": [0.2] * n,
        "alpha": [0.5] * n,
        "source_shard": [uri] * n,
        "row_index": list(range(first, first + n)),
    })


def worker(args) -> None:
    """In a fresh process whose ``pipeline`` is the tree being measured: time the collector."""
    sys.path.insert(0, str(args.tree))
    from pipeline.job.collect import ShardCollector
    from pipeline.settings import JobSettings

    try:
        from pipeline.io.shard import Shard

        def make_shard(uri, n):
            return Shard(uri=uri, name=uri.rsplit("/", 1)[1][:-8], num_rows=n, format="parquet", path=uri, plan=(n,))
    except ImportError:  # a --baseline tree before shards had formats
        from pipeline.io.inputs import Shard

        def make_shard(uri, n):
            return Shard(uri=uri, name=uri.rsplit("/", 1)[1][:-8], num_rows=n, row_groups=(n,))

    shard_list, blocks = synthetic_blocks(args.rows, args.seed, args.min_shard, args.max_shard, args.min_block, args.max_block)
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as out:
        shards = [make_shard(uri, n) for uri, n in shard_list]
        settings = JobSettings(task="caption", input="s3://bench/input", output=out, model="bench-model")
        collector = ShardCollector(shards, settings)
        started, cpu = time.perf_counter(), time.process_time()
        for block in blocks:
            collector.add(block)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        written = len(collector.written)
        rows = sum(n for _, n in shard_list)
    if written != len(shards) or collector.processed != rows:
        raise SystemExit(f"wrote {written} of {len(shards)} shards, {collector.processed} of {rows} rows")
    print(json.dumps({"seconds": seconds, "cpu_s": cpu_s, "rows": rows, "blocks": len(blocks), "shards": written}))


def extract_baseline(ref: str, where: Path) -> Path | None:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "pipeline", "hired"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    where.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def run_worker(tree: Path, args) -> dict:
    command = [sys.executable, __file__, "--worker", "--tree", str(tree), "--rows", str(args.rows), "--seed", str(args.seed),
               "--min-shard", str(args.min_shard), "--max-shard", str(args.max_shard),
               "--min-block", str(args.min_block), "--max-block", str(args.max_block)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    if result.returncode:
        raise SystemExit(f"the benchmark of {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--min-shard", type=int, default=1000)
    parser.add_argument("--max-shard", type=int, default=5000)
    parser.add_argument("--min-block", type=int, default=8)
    parser.add_argument("--max-block", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose collector is compared ('' skips)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="bench-driver-trees-") as scratch:
        trees = {"columnar": ROOT}
        baseline = extract_baseline(args.baseline, Path(scratch) / "baseline") if args.baseline else None
        if baseline:
            trees["row-wise"] = baseline
        load_before = os.getloadavg()
        runs = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_worker(tree, args))
                r = runs[name][-1]
                print(f"  {name}: {r['rows'] / r['seconds']:,.0f} rows/s ({r['blocks']} blocks, {r['shards']} shards)", flush=True)
        load_after = os.getloadavg()

    rows_per_s = {name: statistics.median(r["rows"] / r["seconds"] for r in rs) for name, rs in runs.items()}
    # Rows per second of the driver's own CPU time: what an unloaded core would give.
    rows_per_cpu_s = {name: statistics.median(r["rows"] / r["cpu_s"] for r in rs) for name, rs in runs.items()}
    first = runs["columnar"][0]
    print(f"\ndriver: {first['rows']:,} result rows, {first['blocks']:,} blocks of {args.min_block}-{args.max_block} rows, {first['shards']} shards of "
          f"{args.min_shard:,}-{args.max_shard:,} rows written to local Parquet ({os.cpu_count()} cores, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}):")
    for name, value in rows_per_s.items():
        versus = f", {value / rows_per_s['row-wise']:.1f}x row-wise" if "row-wise" in rows_per_s else ""
        cpu = rows_per_cpu_s[name]
        print(f"  {name:<9} {value:10,.0f} rows/s  {1e6 / value:6.1f} us/row  "
              f"{value / TARGET_ROWS_PER_S:5.1f}x the {TARGET_ROWS_PER_S:,} rows/s target{versus}; "
              f"per CPU second {cpu:,.0f} rows ({1e6 / cpu:.1f} us/row)")
    report = {
        "rows": first["rows"],
        "blocks": first["blocks"],
        "shards": first["shards"],
        "shard_rows": [args.min_shard, args.max_shard],
        "block_rows": [args.min_block, args.max_block],
        "retried_blocks": RETRIED_BLOCKS,
        "repeats": args.repeats,
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "baseline": args.baseline or None,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows_per_s": rows_per_s,
        "rows_per_cpu_s": rows_per_cpu_s,
        "runs": runs,
        "meets_target": rows_per_s["columnar"] >= TARGET_ROWS_PER_S,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"driver-local-blocks-{args.min_block}-{args.max_block}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
