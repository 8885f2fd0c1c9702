"""Pipeline efficiency: the whole job's steady-state images/s against the bare ``Predictor``, side by side.

    python bench/bench_pipeline.py                    # CPU, the real-geometry scaled-down model, ~10 minutes
    python bench/bench_pipeline.py --rows 24 --repeats 1 --new-tokens 2    # a smoke run

What is compared, in one process, on the same rows, the same saved model, the same batch size:

* ``bare``: ``Preprocessor`` then ``Predictor`` called directly in this process on batches of the
  size the pipeline's generation actor gets; only the ``Predictor`` calls are timed (preprocessing
  overlaps generation in the pipeline, so the bare figure is what the pipeline could at best reach);
* ``pipeline``: ``run_job`` (Ray Data: read, preprocess actors, the generation actor, the driver's
  collector and the shard writes) on a private local Ray started once, so that Ray's own start is
  not counted. Its steady state is measured two ways, start-up excluded from both:

  - ``difference``: a job over ``--rows`` rows and one over half of them, each timed whole; the
    extra rows over the extra seconds (model loading and actor start cancel out);
  - ``between shards``: in the larger job, rows written after the first shard over the time
    from the first shard written to the last.

Also reported, from the pipeline's own rows: the generation actor's time per row (its batches'
``ttft_ms + decode_ms``), which separates "generation is slower in the actor" from "the rest of the
pipeline keeps the actor waiting".

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
import logging
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
from pipeline.stages.generate import CPU_BATCH_SIZE, Predictor  # noqa: E402
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

    from pipeline.columns import ERROR, ROW_INDEX, SOURCE_SHARD, object_array

    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        yield {
            ID: object_array([r[ID] for r in part]),
            IMAGE: object_array([r[IMAGE] for r in part]),
            ERROR: object_array([None] * len(part)),
            SOURCE_SHARD: object_array(["bare"] * len(part)),
            ROW_INDEX: np.arange(start, start + len(part)),
        }


def preprocess(model_dir: Path, rows: list[dict]) -> list[dict]:
    preprocessor = Preprocessor(str(model_dir), pixel_dtype="float32")
    return [preprocessor(batch) for batch in column_batches(rows, 8)]


def split_batches(batches: list[dict], size: int) -> list[dict]:
    """The preprocessed rows re-cut into batches of ``size`` rows, as Ray Data hands them to the actor."""
    columns = list(batches[0])
    merged = {c: [v for b in batches for v in b[c]] for c in columns}
    from pipeline.columns import object_array

    n = len(merged[ID])
    return [{c: object_array(merged[c][s : s + size]) for c in columns} for s in range(0, n, size)]


def time_bare(predictor: Predictor, batches: list[dict]) -> dict:
    started = time.perf_counter()
    tokens, errors = 0, 0
    for batch in batches:
        out = predictor(batch)
        tokens += sum(t or 0 for t in out["generated_tokens"])
        errors += sum(e is not None for e in out["error"])
    seconds = time.perf_counter() - started
    rows = sum(len(b[ID]) for b in batches)
    return {"rows": rows, "seconds": seconds, "images_per_s": rows / seconds, "generated_tokens": tokens,
            "errors": errors, "torch_threads": torch.get_num_threads()}


# -- the pipeline -----------------------------------------------------------------------------------------
class ShardTimes(logging.Handler):
    """Notes when the driver writes each shard (the collector logs "wrote ...")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record):
        if record.getMessage().startswith("wrote "):
            self.times.append(time.perf_counter())


def time_job(model_dir: Path, input_dir: Path, output_dir: Path, new_tokens: int, budget: float) -> dict:
    from pipeline.job.run import run_job

    logger = logging.getLogger("hired.pipeline")
    logger.setLevel(logging.INFO)
    shard_times = ShardTimes()
    logger.addHandler(shard_times)
    settings = JobSettings(task="caption", input=str(input_dir), output=str(output_dir), model=str(model_dir),
                           config=hired.HiREDConfig(budget=budget), max_new_tokens=new_tokens, num_gpus=0,
                           dtype="float32", overwrite=True)
    started = time.perf_counter()
    try:
        summary = run_job(settings)
    finally:
        logger.removeHandler(shard_times)
    seconds = time.perf_counter() - started
    table = pq.read_table(output_dir, columns=["error", "generated_tokens", "ttft_ms", "decode_ms", "batch_size"])
    rows = table.num_rows
    batches = table.to_pylist()
    actor_seconds = sum((r["ttft_ms"] + r["decode_ms"]) / 1e3 / r["batch_size"] for r in batches if r["error"] is None)
    written = shard_times.times
    shard_rows = rows // max(1, len(written))
    between = (len(written) - 1) * shard_rows / (written[-1] - written[0]) if len(written) > 1 else None
    return {"rows": rows, "seconds": seconds, "shards": len(written), "first_shard_after_s": written[0] - started,
            "between_shards_images_per_s": between, "actor_generation_s_per_row": actor_seconds / rows,
            "generated_tokens": sum(r["generated_tokens"] or 0 for r in batches),
            "errors": sum(r["error"] is not None for r in batches), "wall_s_in_summary": summary.get("wall_s")}


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
    import ray

    from pipeline.job.run import init_ray

    if ray.is_initialized():
        ray.shutdown()
    for key, value in saved.items():  # undo the previous variant's settings
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.environ.update(env)
    init_ray()


def pipeline_variant(name, env, saved, model_dir, work, args, k) -> dict:
    restart_ray(env, saved)
    small = time_job(model_dir, work / "small", work / f"out-{name}-small-{k}", args.new_tokens, args.budget)
    large = time_job(model_dir, work / "large", work / f"out-{name}-large-{k}", args.new_tokens, args.budget)
    difference = (large["rows"] - small["rows"]) / (large["seconds"] - small["seconds"])
    return {"small_job": small, "large_job": large, "images_per_s_difference": difference,
            "images_per_s_between_shards": large["between_shards_images_per_s"],
            "startup_s": small["seconds"] - small["rows"] / difference}


def one_repeat(variants, saved, model_dir, work, bare_batches, predictor, args, k) -> dict:
    """The bare predictor, then each variant's small and large jobs, in turn, so that drift on the
    machine hits every side."""
    bare = time_bare(predictor, bare_batches)
    per_row_bare = bare["seconds"] / bare["rows"]
    result = {"bare": bare, "variants": {}}
    print(f"repeat {k}: bare {bare['images_per_s']:.2f} img/s ({bare['torch_threads']} threads)", flush=True)
    for name, env in variants:
        v = pipeline_variant(name, env, saved, model_dir, work, args, k)
        v["ratio_difference"] = v["images_per_s_difference"] / bare["images_per_s"]
        v["ratio_between_shards"] = (v["images_per_s_between_shards"] or 0) / bare["images_per_s"]
        v["actor_vs_bare_generation_per_row"] = v["large_job"]["actor_generation_s_per_row"] / per_row_bare
        result["variants"][name] = v
        print(
            f"  {name:14s} pipeline {v['images_per_s_difference']:.2f} img/s (difference), "
            f"{v['images_per_s_between_shards']:.2f} (between shards) | vs bare {v['ratio_difference']:.2f} / "
            f"{v['ratio_between_shards']:.2f} | actor generation per row {v['actor_vs_bare_generation_per_row']:.2f}x bare "
            f"| start-up {v['startup_s']:.1f} s | load {os.getloadavg()[0]:.1f}", flush=True,
        )
    return result


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="rows in the larger job (the smaller has half)")
    parser.add_argument("--shard-rows", type=int, default=8, help="rows per input shard")
    parser.add_argument("--new-tokens", type=int, default=16, help="--max-new-tokens of the job")
    parser.add_argument("--budget", type=float, default=0.2, help="HiRED budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="default",
                        help="pipeline variants, each on its own private Ray: name[:ENV=VALUE;...], comma-separated "
                             "(e.g. 'one-thread:HIRED_CPU_THREADS=1,default')")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.rows % (2 * args.shard_rows):
        parser.error("--rows must be a multiple of twice --shard-rows (the smaller job is whole shards)")
    variants = parse_variants(args.variants)
    saved = {key: os.environ.get(key) for _, env in variants for key in env}

    import ray

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
        predictor = Predictor(str(model_dir), config=hired.HiREDConfig(budget=args.budget), max_new_tokens=args.new_tokens,
                              device="cpu", dtype="float32")
        repeats = [one_repeat(variants, saved, model_dir, work, bare_batches, predictor, args, k) for k in range(args.repeats)]
        cluster_cpus = ray.cluster_resources().get("CPU")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    tokens_bare = repeats[0]["bare"]["generated_tokens"]
    report = {
        "what": "steady-state images/s of run_job (Ray Data, CPU) vs the bare Predictor on the same rows",
        "model": "bench_generation's CPU model: scaled-down LLaVA-Next, real geometry (672x672, 2x2 grid), random weights",
        "settings": {"rows": args.rows, "shard_rows": args.shard_rows, "new_tokens": args.new_tokens, "budget": args.budget,
                     "generation_batch_rows": CPU_BATCH_SIZE, "repeats": args.repeats,
                     "variants": {name: env for name, env in variants}},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch": torch.__version__, "ray_cluster_cpus": cluster_cpus},
        "preprocess_ms_per_row_in_process": 1e3 * preprocess_s_per_row,
        "model_inputs_bytes_per_row_float32": wire_bytes_per_row,
        "bare_images_per_s": spread([r["bare"]["images_per_s"] for r in repeats]),
        "variants": {},
        "repeats": repeats,
    }
    for name, _ in variants:
        runs = [r["variants"][name] for r in repeats]
        report["variants"][name] = {
            "same_generated_tokens_as_bare": all(v["large_job"]["generated_tokens"] == tokens_bare for v in runs),
            **{key: spread([v[key] for v in runs]) for key in (
                "images_per_s_difference", "images_per_s_between_shards", "ratio_difference", "ratio_between_shards",
                "actor_vs_bare_generation_per_row", "startup_s")},
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pipeline-cpu-{platform.machine().replace('_', '-').lower()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\npreprocessing {1e3 * preprocess_s_per_row:.0f} ms a row in-process; {wire_bytes_per_row / 2**20:.1f} MiB of "
          "model inputs a row (float32)")
    print(f"median [min-max] over {args.repeats} repeats; bare {fmt(report['bare_images_per_s'])} images/s")
    print(f"{'variant':14s}{'img/s (diff)':>22s}{'img/s (shards)':>22s}{'vs bare (diff)':>22s}{'vs bare (shards)':>22s}"
          f"{'actor gen/row':>22s}")
    for name, v in report["variants"].items():
        print(f"{name:14s}" + "".join(f"{fmt(v[key]):>22s}" for key in (
            "images_per_s_difference", "images_per_s_between_shards", "ratio_difference", "ratio_between_shards",
            "actor_vs_bare_generation_per_row")))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; written {path}")
    return 0


def fmt(s: dict) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
