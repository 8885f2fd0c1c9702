"""Run a captioning or VQA job: plan the shards, stream them through Ray Data, write each
shard's results once it is complete, and summarise.

Ray Data does the scheduling, retries and progress; the driver keeps the books:
it knows every shard's row count from its footer, gathers results per shard, and
writes a shard's output only when every one of its rows has a result (or an
error). A crash therefore leaves only whole outputs behind, and a rerun of the
same command skips them.
"""

from __future__ import annotations

import logging
import time

import ray

from ..errors import RunAborted, StorageUnavailable
from ..io.shard import Shard
from ..settings import JobSettings, with_run_id
from ..stages.preprocess import Preprocessor
from ..stages.read import read_rows, read_tasks
from ..stages.score import score_benchmark, score_vqa
from ..summary import summarize, summarize_output, write_summary
from .collect import ShardCollector
from .plan import plan
from .ray_setup import init_ray

log = logging.getLogger("hired.pipeline")


# Rows per preprocessing call. It also sets the blocks the generation stage and the driver see:
# small blocks keep memory low (pixel values travel in them) and let results, and so complete
# shards, arrive steadily.
PREPROCESS_BATCH_ROWS = 8


def build_dataset(pending: list[Shard], settings: JobSettings):
    """read row groups -> preprocess (CPU actors) -> generate (GPU actors) [-> VQA or benchmark scoring]."""
    # torch and transformers load here, once the run is certain to start: a command that fails its
    # checks exits in a second, without the seconds they take to import.
    from ..memory import CPU_BATCH_SIZE
    from ..stages.generate import Predictor

    tasks = read_tasks(pending)
    gpus = settings.num_gpus
    if gpus is None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus == 0:
            log.warning("no GPUs in the cluster: generating on CPU (pass --num-gpus N to wait for N GPU workers)")
    device = "cuda" if gpus > 0 else "cpu"
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # Half the CPUs: the generation actors, Ray and reads need the rest. The pool starts at one and
    # grows with the backlog.
    workers = settings.preprocess_workers or max(1, min(cpus // 2, 32))
    # Pixel values are the bulk of what crosses to the generation actors: ship them in the model's precision.
    pixel_dtype = "float32" if device == "cpu" or settings.dtype == "float32" else "float16"
    log.info(
        "%d shards, %d read tasks; %s generation actors; %d preprocessing actors",
        len(pending), len(tasks), f"{gpus} GPU" if gpus else "1 CPU", workers,
    )

    dataset = ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks)))
    # A generator: each read task's rows come out in bounded slices (see pipeline.stages.read).
    dataset = dataset.map_batches(read_rows, batch_size=1, num_cpus=0.25,
                                  fn_kwargs={"input": settings.input, "settings": settings})
    dataset = dataset.map_batches(
        Preprocessor,
        fn_constructor_kwargs={"settings": settings, "pixel_dtype": pixel_dtype, "beside_cpu_generation": device == "cpu"},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        batch_size=PREPROCESS_BATCH_ROWS,
        num_cpus=1,
    )
    dataset = dataset.map_batches(
        Predictor,
        fn_constructor_kwargs={"settings": settings, "device": device},
        compute=ray.data.ActorPoolStrategy(size=max(gpus, 1)),
        # Rows per actor call; the actor cuts them into micro-batches that fit its memory.
        batch_size=settings.batch_size or (64 if gpus else CPU_BATCH_SIZE),
        num_gpus=1 if gpus else 0,
        # A fraction: the actor's real work is on the GPU, and whole CPUs reserved by idle
        # actors starve the read and preprocessing stages on small nodes.
        num_cpus=0.5,
    )
    if settings.scoring is not None:
        dataset = dataset.map_batches(score_benchmark, fn_kwargs={"benchmark": settings.benchmark}, batch_size=256,
                                      num_cpus=0.25)
    elif settings.task == "vqa":
        dataset = dataset.map_batches(score_vqa, batch_size=256, num_cpus=0.25)
    return dataset


def abort_reason(error: BaseException) -> str:
    """One readable line from an exception Ray may have wrapped in pages of traceback."""
    text = str(error)
    for line in text.splitlines():
        if "storage unavailable" in line:
            return line.strip().split("StorageUnavailable: ", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def run_job(settings: JobSettings) -> dict:
    """Run (or resume) a job; returns the summary, also written beside the output."""
    settings = with_run_id(settings)
    started = time.perf_counter()
    pending, done, failed = plan(settings)
    log.info("run %s: %d shards to do, %d already complete, %d unreadable", settings.run_id, len(pending), len(done), len(failed))
    for f in failed:
        log.error("shard failed: %s: %s", f.uri, f.reason)

    collector = ShardCollector(pending, settings)
    for shard in pending:
        if shard.num_rows == 0:  # an empty shard is complete as it is
            collector.flush(shard.uri)
    aborted = None
    if any(s.num_rows for s in pending):
        init_ray(settings.ray_address)
        try:
            for block in build_dataset([s for s in pending if s.num_rows], settings).iter_batches(
                batch_size=None, batch_format="pyarrow"
            ):
                collector.add(block)
        except Exception as error:  # the run cannot go on; keep what is complete and say why
            aborted = abort_reason(error)
            log.error("run stopped: %s", aborted)
    unreadable = len(failed)
    failed += [] if aborted else collector.incomplete()
    wall_s = time.perf_counter() - started

    run = dict(
        processed_rows=collector.processed,
        processed_generated_tokens=collector.generated_tokens,
        wall_s=wall_s,
        extra={
            "run_id": settings.run_id,
            "task": settings.task,
            "input": str(settings.input),
            "output": str(settings.output),
            "settings": settings.result_settings(),
            "batch_size": settings.batch_size,
            "shards": {
                "total": len(pending) + len(done) + unreadable,
                "written_this_run": len(collector.written),
                "already_complete": len(done),
                "failed": len(failed),
            },
            "failed_shards": [{"shard": f.uri, "reason": f.reason} for f in failed],
        },
    )
    try:  # file by file, a few columns at a time: the driver never holds the output's rows
        summary = summarize_output(settings.output, **run)
    except StorageUnavailable:
        if not aborted:
            raise
        summary = summarize(None, **run)  # storage is what stopped the run: the counts must wait for the rerun
    if aborted:
        summary["aborted"] = aborted
    try:
        summary["summary_uri"] = write_summary(settings.output, summary)
    except Exception as error:
        if not aborted:
            raise
        summary["summary_uri"] = f"(not written: {type(error).__name__})"
    if aborted:
        raise RunAborted(aborted, summary)
    return summary
