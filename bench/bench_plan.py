"""Planning benchmark: how long a run waits before its first batch, on object storage.

    python bench/bench_plan.py                      # 2,000 shards, outputs for half of them
    python bench/bench_plan.py --shards 500 --repeats 3

Starts an S3 server on loopback (SeaweedFS, as the tests do), writes ``--shards`` small input
shards and the complete outputs of half of them (so a plan finds 1,000 to do and 1,000 done),
then times ``plan()`` side by side, round-robin so that load on the machine hits all alike:

* ``parallel``: this tree's ``plan()`` (one listing each for input and output, footers read by
  a pool of threads, one request a footer);
* ``one-thread``: the same code with one thread (what the request savings alone give);
* ``sequential``: the planning at ``--baseline`` (a git commit; by default cb64896, whose planner
  checks every footer and output one after another), run from ``git archive`` in a subprocess.

Every configuration must give the same split. Prints seconds and ratios against the target
(``--target-s``, 8 s for 2,000 shards on 2 cores) and writes ``bench/results/plan-*.json``.
The machine's load average is recorded: on a shared machine, compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.columns import OUTPUT_SCHEMA  # noqa: E402
from pipeline.io.location import Location  # noqa: E402
from pipeline.io.outputs import Outputs  # noqa: E402
from pipeline.io.formats.parquet import inspect_shard  # noqa: E402
from pipeline.job.plan import plan  # noqa: E402
from pipeline.settings import JobSettings  # noqa: E402
from tests.servers import start_s3  # noqa: E402

BASELINE = "cb64896"  # a commit whose plan() checks every footer and output one after another
ROWS_PER_SHARD, ROWS_PER_GROUP = 10, 5
BUCKET = "bench-plan"

# Run in a subprocess in the tree extracted at --baseline: its plan() with the same settings.
BASELINE_SCRIPT = """
import json, sys, time
from pipeline.job.plan import plan
from pipeline.settings import JobSettings
settings = JobSettings(task="caption", input=sys.argv[1], output=sys.argv[2], model="bench-model")
# The outputs are written by this tree's code, whose settings record may hold fields the baseline's
# lacks (e.g. the column mapping): the baseline is given this tree's record, so it judges
# completeness, not versions.
wanted = json.loads(sys.argv[3])
JobSettings.result_settings = lambda self: wanted
started, cpu = time.perf_counter(), time.process_time()
todo, done, failed = plan(settings)
print(json.dumps({"seconds": time.perf_counter() - started, "planner_cpu_s": time.process_time() - cpu,
                  "split": [len(todo), len(done), len(failed)]}))
"""


def settings_for(input_uri: str, output_uri: str) -> JobSettings:
    return JobSettings(task="caption", input=input_uri, output=output_uri, model="bench-model")


def shard_bytes() -> bytes:
    table = pa.table({
        "id": [f"r{i}" for i in range(ROWS_PER_SHARD)],
        "image": [b"\x89PNG not decoded here" * 4] * ROWS_PER_SHARD,
        "prompt": ["Describe the image."] * ROWS_PER_SHARD,
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROWS_PER_GROUP)
    return buffer.getvalue()


def build(input_uri: str, output_uri: str, shards: int, threads: int = 32) -> None:
    """``shards`` input shards and, for every other one, its complete output as a run writes it."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    data = shard_bytes()
    names = [f"part-{i:05d}" for i in range(shards)]
    settings = settings_for(input_uri, output_uri).result_settings()
    outputs = Outputs(Location.resolve(output_uri))

    def write(i: int) -> None:
        uri = f"{input_uri}/{names[i]}.parquet"
        fs.pipe_file(uri.removeprefix("s3://"), data)
        if i % 2 == 0:  # planned as a run plans it, so its output records the shard's fingerprint
            where = Location.resolve(uri)
            shard = inspect_shard(where, names[i], JobSettings(), info=where.fs.info(where.path))
            rows = [{"id": f"r{k}", "text": "a caption", "source_shard": uri, "row_index": k} for k in range(ROWS_PER_SHARD)]
            outputs.write(shard, pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), settings)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(shards)))


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(run, server_pid: int) -> dict:
    """Run one plan; add the CPU it and the S3 server used (what a quiet machine's time is made of).
    A baseline run in a subprocess reports its own CPU (its imports not counted)."""
    planner, server = time.process_time(), process_cpu_s(server_pid)
    result = run()
    result.setdefault("planner_cpu_s", time.process_time() - planner)
    result["s3_server_cpu_s"] = process_cpu_s(server_pid) - server
    return result


def cpu_floor_s(planner_cpu_s: float, server_cpu_s: float, cores: int) -> float:
    """The least wall time that CPU can take on an idle machine: the planner is mostly one core
    (Python's lock), and it and the server share the cores."""
    return max(planner_cpu_s, (planner_cpu_s + server_cpu_s) / cores)


def time_plan(input_uri: str, output_uri: str, threads: int) -> dict:
    started = time.perf_counter()
    planned = plan(settings_for(input_uri, output_uri), threads=threads)
    return {"seconds": time.perf_counter() - started,
            "split": [len(planned.pending), len(planned.done), len(planned.failed)]}


def extract_baseline(ref: str, where: Path) -> Path | None:
    """The tree at ``ref`` (its pipeline/ and hired/), or None without git or the commit."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "pipeline", "hired"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    where.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def time_baseline(tree: Path, input_uri: str, output_uri: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    wanted = json.dumps(settings_for(input_uri, output_uri).result_settings())
    result = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT, input_uri, output_uri, wanted],
                            capture_output=True, text=True, env=env, cwd=tree, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the configurations (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="the parallel planner's threads (default: its own)")
    parser.add_argument("--target-s", type=float, default=8.0, help="target for 2,000 shards, scaled to --shards")
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose sequential plan() is compared ('' skips)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from pipeline.job.plan import PLAN_THREADS

    threads = args.threads or PLAN_THREADS
    target = args.target_s * args.shards / 2000
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as scratch:
        server = start_s3(Path(scratch) / "s3")
        os.environ.update(server.env)
        try:
            input_uri, output_uri = f"s3://{BUCKET}/input", f"s3://{BUCKET}/output"
            started = time.perf_counter()
            build(input_uri, output_uri, args.shards)
            print(f"built {args.shards} shards and {(args.shards + 1) // 2} outputs in {time.perf_counter() - started:.1f} s")
            baseline = extract_baseline(args.baseline, Path(scratch) / "baseline") if args.baseline else None
            configs = {
                "parallel": lambda: time_plan(input_uri, output_uri, threads),
                "one-thread": lambda: time_plan(input_uri, output_uri, 1),
            }
            if baseline:
                configs["sequential"] = lambda: time_baseline(baseline, input_uri, output_uri)
            load_before = os.getloadavg()
            runs = {name: [] for name in configs}
            for _ in range(args.repeats):
                for name, run in configs.items():
                    r = measured(run, server.process.pid)
                    runs[name].append(r)
                    print(f"  {name}: {r['seconds']:.2f} s, split {r['split']}, CPU s: planner {r['planner_cpu_s']:.2f}, "
                          f"S3 server {r['s3_server_cpu_s']:.2f}", flush=True)
            load_after = os.getloadavg()
        finally:
            server.stop()

    expected = [args.shards // 2, (args.shards + 1) // 2, 0]
    splits = {name: {tuple(r["split"]) for r in rs} for name, rs in runs.items()}
    if any(s != {tuple(expected)} for s in splits.values()):
        raise SystemExit(f"the configurations disagree on the split (to do, done, failed): {splits}, expected {expected}")
    seconds = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu = {name: {k: statistics.median(r[k] for r in rs) for k in ("planner_cpu_s", "s3_server_cpu_s")}
           for name, rs in runs.items()}
    print(f"\nplan() over {args.shards} shards on loopback S3 ({os.cpu_count()} cores, "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}):")
    for name, value in seconds.items():
        ratio = f", {seconds.get('sequential', value) / value:.1f}x faster than sequential" if "sequential" in seconds else ""
        used = cpu[name]
        floor = cpu_floor_s(used["planner_cpu_s"], used["s3_server_cpu_s"], os.cpu_count() or 1)
        print(f"  {name:<11} {value:7.2f} s  {value / args.shards * 1e3:6.2f} ms/shard  "
              f"{value / target:5.2f} of the {target:.1f} s target{ratio}; CPU s: planner {used['planner_cpu_s']:.2f} "
              f"+ S3 server {used['s3_server_cpu_s']:.2f}, so >= {floor:.2f} s on an idle machine")
    report = {
        "shards": args.shards,
        "outputs": (args.shards + 1) // 2,
        "threads": threads,
        "repeats": args.repeats,
        "target_s": target,
        "baseline": args.baseline or None,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "seconds": seconds,
        "cpu_s": cpu,
        "cpu_floor_s": {name: cpu_floor_s(c["planner_cpu_s"], c["s3_server_cpu_s"], os.cpu_count() or 1)
                        for name, c in cpu.items()},
        "runs": runs,
        "meets_target": seconds["parallel"] <= target,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"plan-s3-loopback-{args.shards}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
