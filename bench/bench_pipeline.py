"""Pipeline efficiency: the whole job's steady-state images/s against the bare ``Predictor``, side by side.

    python bench/bench_pipeline.py                    # CPU, the real-geometry scaled-down model, about 12 minutes (3 repeats of 128 and 64 rows)
    python bench/bench_pipeline.py --rows 128 --variants default,one-thread:HIRED_CPU_THREADS=1
                                                      # side by side: the job as shipped (every core) and one thread

What is compared, in one process, on the same rows, the same saved model, the same batch size:

* ``bare``: ``Preprocessor`` then ``Predictor`` called directly in this process on batches of the
  size the pipeline's generation actor gets; only the ``Predictor`` calls are timed (preprocessing
  overlaps generation in the pipeline, so the bare figure is what the pipeline could at best reach);
* ``pipeline``: ``run_job`` (Ray Data: read, preprocess actors, the generation actor, the driver's
  collector and the shard writes) on a fresh private local Ray per variant (``--variants``: the
  environment its workers start with), started before any timing. Its steady state is measured two ways, start-up excluded from both:

  - ``difference``: a job over ``--rows`` rows and one over half of them, each timed whole; the
    extra rows over the extra seconds (model loading and actor start cancel out);
  - ``between blocks``: in the larger job, the rows of every result block after the first over the
    time from the first block reaching the driver to the last (results come a generation task's
    block at a time, and a block's shards are written together, so blocks mark the steady state).

  The difference is the job's steady state and the figure to judge by. Between blocks runs high in
  jobs this short: the object store holds every preprocessed row, so preprocessing runs ahead and
  has finished, on the cores generation also needs, before most blocks arrive; in a long run it
  cannot run ahead further than the store holds and shares the cores all along.

Each variant is judged against the bare predictor timed just before and just after its jobs (the mean
of the two, with Ray shut down, as the predictor runs outside the pipeline), so that drift in the
machine's speed hits both sides of each ratio alike. Also reported: the generation actor's time per row from the
pipeline's own rows (its batches' ``ttft_ms + decode_ms``), which separates "generation is slower in
the actor" from "the rest of the pipeline keeps the actor waiting"; and CPU seconds a row, the bare
process's against the whole pipeline's (this process and every descendant: Ray's daemons, workers
and actors, sampled from /proc) between the first and last result block. On a machine that
others load, wall-clock rates swing with their load; CPU seconds a row are what the pipeline spends.

The model is ``bench_generation``'s CPU model: a scaled-down LLaVA-Next with the real geometry
(672x672 pictures, a 2x2 grid, 2,880 grid tokens), random weights, saved once to a temporary
folder and loaded with ``from_pretrained`` by both sides. Pictures are the demo's drawn scenes as JPEG.

Results: a table on stdout and ``bench/results/pipeline-<device>.json`` (every repeat, the medians and
the spread). Timings on a shared machine are noisy: repeat, and read the spread.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private Ray on loopback

import hired  # noqa: E402
from pipeline.columns import ID, IMAGE, MODEL_INPUTS  # noqa: E402
from pipeline.settings import JobSettings  # noqa: E402
from pipeline.memory import CPU_BATCH_SIZE  # noqa: E402
from pipeline.stages.generate import Predictor  # noqa: E402
from pipeline.stages.preprocess import Preprocessor  # noqa: E402

PICTURE_SIDE = 672  # the real LLaVA-Next geometry: a 2x2 grid of 336 px crops plus the full view


# -- inputs ---------------------------------------------------------------------------------------------
def save_model(folder: Path) -> Path:
    """bench_generation's CPU model (real geometry, random weights), saved for from_pretrained."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_generation import build_model

    model, processor = build_model("cpu", torch.device("cpu"), torch.float32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def jpeg(index: int) -> bytes:
    from pipeline.demo.data import draw_scene

    buffer = io.BytesIO()
    draw_scene(PICTURE_SIDE, PICTURE_SIDE, seed=index).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(folder: Path, pictures: list[bytes], shard_rows: int) -> list[dict]:
    """``pictures`` as Parquet shards of ``shard_rows`` rows (one row group each); returns the rows."""
    folder.mkdir(parents=True)
    rows = [{ID: f"img-{i:05d}", IMAGE: data} for i, data in enumerate(pictures)]
    for start in range(0, len(rows), shard_rows):
        table = pa.Table.from_pylist(rows[start : start + shard_rows], schema=pa.schema([(ID, pa.string()), (IMAGE, pa.binary())]))
        pq.write_table(table, folder / f"shard-{start // shard_rows:04d}.parquet")
    return rows


# -- the bare predictor -----------------------------------------------------------------------------------
def column_batches(rows: list[dict], size: int):
    import numpy as np

    from pipeline.columns import READ_COLUMNS, ROW_INDEX, SOURCE_SHARD
    from pipeline.stages.base import object_array

    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        batch = {name: object_array([None] * len(part)) for name in READ_COLUMNS}  # as the read stage hands them on
        batch.update({
            ID: object_array([r[ID] for r in part]),
            IMAGE: object_array([r[IMAGE] for r in part]),
            SOURCE_SHARD: object_array(["bare"] * len(part)),
            ROW_INDEX: np.arange(start, start + len(part)),
        })
        yield batch


def preprocess(model_dir: Path, rows: list[dict]) -> list[dict]:
    preprocessor = Preprocessor(JobSettings(model=str(model_dir)), pixel_dtype="float32")
    return [preprocessor(batch) for batch in column_batches(rows, 8)]


def split_batches(batches: list[dict], size: int) -> list[dict]:
    """The preprocessed rows re-cut into batches of ``size`` rows, as Ray Data hands them to the actor."""
    columns = list(batches[0])
    merged = {c: [v for b in batches for v in b[c]] for c in columns}
    from pipeline.stages.base import object_array

    n = len(merged[ID])
    return [{c: object_array(merged[c][s : s + size]) for c in columns} for s in range(0, n, size)]


def time_bare(predictor: Predictor, batches: list[dict]) -> dict:
    cpu_started = time.process_time()
    started = time.perf_counter()
    tokens, errors = 0, 0
    for batch in batches:
        out = predictor(batch)
        tokens += sum(t or 0 for t in out["generated_tokens"])
        errors += sum(e is not None for e in out["error_kind"])
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    rows = sum(len(b[ID]) for b in batches)
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds, "cpu_s_per_row": cpu_seconds / rows,
            "generated_tokens": tokens, "errors": errors, "torch_threads": torch.get_num_threads()}


# -- CPU accounting ---------------------------------------------------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (name) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


class TreeCpu:
    """CPU seconds used by this process and all its descendants (Ray's local cluster: GCS, raylet,
    workers, actors), sampled every ``period`` s so that processes that exit in between still count
    up to their last sample. On a machine other people load, wall time says little; CPU seconds a
    row are what the pipeline itself spends."""

    def __init__(self, period: float = 1.0):
        import threading

        self.seen: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self.thread.start()

    def _run(self, period):
        while not self.stop.wait(period):
            self.total()

    def total(self) -> float:
        stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := _stat(p))}
        tree, frontier = {os.getpid()}, [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in stats.items():
            children.setdefault(parent, []).append(pid)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
        with self.lock:
            for pid in tree:
                if pid in stats:
                    self.seen[pid] = stats[pid][1]
            return sum(self.seen.values())

    def close(self):
        self.stop.set()
        self.thread.join()


# -- the pipeline -----------------------------------------------------------------------------------------
def arrivals_recorder(cpu: TreeCpu):
    """A ShardCollector that notes when each result block reaches the driver, with its row count and
    the CPU seconds used so far. Results arrive a block (one generation task's rows) at a time, and
    shards are written in bursts within a block, so blocks, not shards, mark the steady state."""
    from pipeline.job.collect import ShardCollector

    arrivals: list[tuple[float, int, float]] = []

    class Recording(ShardCollector):
        def add(self, table):
            super().add(table)
            arrivals.append((time.perf_counter(), table.num_rows, cpu.total()))

    return Recording, arrivals


def steady_state(arrivals: list[tuple[float, int, float]]) -> tuple[float | None, float | None]:
    """(images/s, CPU s a row) from the first block's arrival to the last's: the rows of every later block."""
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return None, None
    rows = sum(n for _, n, _ in arrivals[1:])
    return rows / (arrivals[-1][0] - arrivals[0][0]), (arrivals[-1][2] - arrivals[0][2]) / rows


def time_job(model_dir: Path, input_dir: Path, output_dir: Path, new_tokens: int, budget: float | int, cpu: TreeCpu) -> dict:
    from pipeline.job import run

    recording, arrivals = arrivals_recorder(cpu)
    from pipeline.settings import environment_settings

    settings = JobSettings(task="caption", input=str(input_dir), output=str(output_dir), model=str(model_dir),
                           config=hired.HiREDConfig(budget=budget), max_new_tokens=new_tokens, num_gpus=0,
                           dtype="float32", overwrite=True, **environment_settings(os.environ))  # the variant's knobs
    original, run.ShardCollector = run.ShardCollector, recording
    cpu_started = cpu.total()
    started = time.perf_counter()
    try:
        summary = run.run_job(settings)
    finally:
        run.ShardCollector = original
    seconds = time.perf_counter() - started
    job_cpu_s = cpu.total() - cpu_started  # start-up included: worker imports, model loads
    table = pq.read_table(output_dir, columns=["error", "generated_tokens", "ttft_ms", "decode_ms", "batch_size"])
    rows = table.num_rows
    results = table.to_pylist()
    actor_seconds = sum((r["ttft_ms"] + r["decode_ms"]) / 1e3 / r["batch_size"] for r in results if r["error"] is None)
    rate, cpu_per_row = steady_state(arrivals)
    return {"rows": rows, "seconds": seconds, "cpu_s": job_cpu_s, "blocks": len(arrivals), "first_block_after_s": arrivals[0][0] - started,
            "between_blocks_images_per_s": rate, "between_blocks_cpu_s_per_row": cpu_per_row,
            "actor_generation_s_per_row": actor_seconds / rows,
            "generated_tokens": sum(r["generated_tokens"] or 0 for r in results),
            "errors": sum(r["error"] is not None for r in results), "shards": summary["shards"]["written_this_run"]}


# -- the comparison ---------------------------------------------------------------------------------------
def parse_variants(text: str) -> list[tuple[str, dict]]:
    """``name`` or ``name:KEY=VALUE;KEY=VALUE``, comma-separated: environment settings a private Ray
    is started with (its workers inherit them), e.g. ``one-thread:HIRED_CPU_THREADS=1``."""
    variants = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, settings = part.partition(":")
        env = dict(kv.split("=", 1) for kv in settings.split(";") if kv)
        variants.append((name, env))
    return variants


def restart_ray(env: dict, saved: dict) -> None:
    """A fresh private Ray whose workers see ``env`` (workers inherit the environment at start)."""
    from pipeline.job.run import init_ray

    shut_down_ray()
    for key, value in saved.items():  # undo the previous variant's settings
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.environ.update(env)
    init_ray()


def pipeline_variant(name, env, saved, model_dir, work, args, k, cpu: TreeCpu) -> dict:
    import ray

    restart_ray(env, saved)
    cluster_cpus = ray.cluster_resources().get("CPU")
    large = time_job(model_dir, work / "large", work / f"out-{name}-large-{k}", args.new_tokens, args.budget, cpu)
    result = {"ray_cluster_cpus": cluster_cpus, "large_job": large, "images_per_s_between_blocks": large["between_blocks_images_per_s"],
              "images_per_s_difference": None, "startup_s": None,
              "cpu_s_per_row_difference": None}
    if args.difference:
        small = time_job(model_dir, work / "small", work / f"out-{name}-small-{k}", args.new_tokens, args.budget, cpu)
        difference = (large["rows"] - small["rows"]) / (large["seconds"] - small["seconds"])
        result.update(small_job=small, images_per_s_difference=difference,
                      startup_s=small["seconds"] - small["rows"] / difference,
                      cpu_s_per_row_difference=(large["cpu_s"] - small["cpu_s"]) / (large["rows"] - small["rows"]))
    return result


def one_repeat(variants, saved, model_dir, work, bare_batches, predictor, args, k, cpu: TreeCpu) -> dict:
    """The bare predictor, then each variant's jobs followed by the bare predictor again: every
    variant is judged against the mean of the bare runs just before and just after its jobs, so
    that drift in the machine's speed hits both sides of each ratio alike."""
    result = {"variants": {}}
    before = time_bare(predictor, bare_batches)
    for name, env in variants:
        v = pipeline_variant(name, env, saved, model_dir, work, args, k, cpu)
        shut_down_ray()  # the bare predictor runs alone, as it would outside the pipeline
        after = time_bare(predictor, bare_batches)
        bare = mean_bare(before, after)
        before = after
        v["bare"] = bare
        v["load_average"] = os.getloadavg()[0]
        v["ratio_difference"] = v["images_per_s_difference"] / bare["images_per_s"] if args.difference else None
        v["ratio_between_blocks"] = ratio(v["images_per_s_between_blocks"], bare["images_per_s"])
        v["actor_vs_bare_generation_per_row"] = v["large_job"]["actor_generation_s_per_row"] / (bare["seconds"] / bare["rows"])
        v["cpu_per_row_bare_over_pipeline"] = ratio(bare["cpu_s_per_row"], v["large_job"]["between_blocks_cpu_s_per_row"])
        result["variants"][name] = v
        difference = (f"{number(v['images_per_s_difference'])} img/s steady state (difference), "
                      f"{number(v['ratio_difference'])} of bare; " if args.difference else "")
        print(
            f"repeat {k} {name:12s} bare {bare['images_per_s']:.2f} img/s (before {bare['before_images_per_s']:.2f}, "
            f"after {bare['after_images_per_s']:.2f}) | pipeline {difference}"
            f"{number(v['images_per_s_between_blocks'])} between blocks, {number(v['ratio_between_blocks'])} of bare | "
            f"actor generation per row {v['actor_vs_bare_generation_per_row']:.2f}x bare | CPU s a row bare "
            f"{bare['cpu_s_per_row']:.2f}, pipeline {number(v['large_job']['between_blocks_cpu_s_per_row'])} | "
            f"load {os.getloadavg()[0]:.1f}", flush=True,
        )
    return result


def mean_bare(before: dict, after: dict) -> dict:
    """The two bare runs around a variant's jobs as one: rows over their total seconds."""
    rows, seconds = before["rows"] + after["rows"], before["seconds"] + after["seconds"]
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds,
            "cpu_s_per_row": (before["cpu_s_per_row"] * before["rows"] + after["cpu_s_per_row"] * after["rows"]) / rows,
            "generated_tokens": before["generated_tokens"], "errors": before["errors"] + after["errors"],
            "torch_threads": before["torch_threads"],
            "before_images_per_s": before["images_per_s"], "after_images_per_s": after["images_per_s"]}


def shut_down_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def number(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def spread(values: list[float | None]) -> dict | None:
    """Median, min and max of the values that could be measured (a job of one block has no steady state)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=128, help="rows in the larger job (the smaller has half)")
    parser.add_argument("--shard-rows", type=int, default=8, help="rows per input shard")
    parser.add_argument("--new-tokens", type=int, default=16, help="--max-new-tokens of the job")
    parser.add_argument("--budget", type=hired.parse_budget, default=0.2, help="HiRED budget (as the jobs read it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="default",
                        help="pipeline variants, each on its own private Ray: name[:ENV=VALUE;...], comma-separated "
                             "(e.g. 'default,one-thread:HIRED_CPU_THREADS=1')")
    parser.add_argument("--no-difference", dest="difference", action="store_false",
                        help="skip the half-size job (only the between-blocks estimate; saves time on a loaded machine)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.rows % (2 * args.shard_rows):
        parser.error("--rows must be a multiple of twice --shard-rows (the smaller job is whole shards)")
    variants = parse_variants(args.variants)
    saved = {key: os.environ.get(key) for _, env in variants for key in env}

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        model_dir = save_model(work / "model")
        pictures = [jpeg(i) for i in range(args.rows)]
        rows = write_shards(work / "large", pictures, args.shard_rows)
        write_shards(work / "small", pictures[: args.rows // 2], args.shard_rows)
        started = time.perf_counter()
        preprocessed = preprocess(model_dir, rows)
        preprocess_s_per_row = (time.perf_counter() - started) / len(rows)
        wire_bytes_per_row = statistics.mean(len(v) for b in preprocessed for v in b[MODEL_INPUTS])
        bare_batches = split_batches(preprocessed, CPU_BATCH_SIZE)
        predictor = Predictor(JobSettings(model=str(model_dir), config=hired.HiREDConfig(budget=args.budget),
                                          max_new_tokens=args.new_tokens, dtype="float32"), device="cpu")
        cpu = TreeCpu()
        repeats = [one_repeat(variants, saved, model_dir, work, bare_batches, predictor, args, k, cpu)
                   for k in range(args.repeats)]
    finally:
        shut_down_ray()
        if "cpu" in locals():
            cpu.close()
        shutil.rmtree(work, ignore_errors=True)

    tokens_bare = repeats[0]["variants"][variants[0][0]]["bare"]["generated_tokens"]
    report = {
        "what": "steady-state images/s of run_job (Ray Data, CPU) vs the bare Predictor on the same rows",
        "model": "bench_generation's CPU model: scaled-down LLaVA-Next, real geometry (672x672, 2x2 grid), random weights",
        "settings": {"rows": args.rows, "shard_rows": args.shard_rows, "new_tokens": args.new_tokens, "budget": args.budget,
                     "generation_batch_rows": CPU_BATCH_SIZE, "repeats": args.repeats,
                     "variants": {name: env for name, env in variants}},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch": torch.__version__, "ray_cluster_cpus": repeats[0]["variants"][variants[0][0]]["ray_cluster_cpus"]},
        "preprocess_ms_per_row_in_process": 1e3 * preprocess_s_per_row,
        "model_inputs_bytes_per_row_float32": wire_bytes_per_row,
        "bare_images_per_s": spread([v["bare"]["images_per_s"] for r in repeats for v in r["variants"].values()]),
        "variants": {},
        "repeats": repeats,
    }
    for name, _ in variants:
        runs = [r["variants"][name] for r in repeats]
        report["variants"][name] = {
            "same_generated_tokens_as_bare": all(v["large_job"]["generated_tokens"] == tokens_bare for v in runs),
            **{key: spread([v[key] for v in runs]) for key in REPORTED},
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pipeline-cpu-{platform.machine().replace('_', '-').lower()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\npreprocessing {1e3 * preprocess_s_per_row:.0f} ms a row in-process; {wire_bytes_per_row / 2**20:.1f} MiB of "
          "model inputs a row (float32)")
    print(f"median [min-max] over {args.repeats} repeats; bare {fmt(report['bare_images_per_s'])} images/s")
    print(f"{'variant':14s}" + "".join(f"{key:>24.24s}" for key in REPORTED))
    for name, v in report["variants"].items():
        print(f"{name:14s}" + "".join(f"{fmt(v[key]):>24s}" for key in REPORTED))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; written {path}")
    print("\n" + markdown_table(report))
    return 0


def markdown_table(report: dict) -> str:
    """bench/README.md's table of this report (bench/tables.py draws it there from the results file)."""
    from tables import pipeline_table  # bench/tables.py, beside this script

    return pipeline_table(report)


REPORTED = ("images_per_s_difference", "ratio_difference", "images_per_s_between_blocks", "ratio_between_blocks",
            "actor_vs_bare_generation_per_row", "cpu_per_row_bare_over_pipeline", "startup_s")


def fmt(s: dict | None) -> str:
    if s is None:
        return "n/a"
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
