"""Run a captioning or VQA job: plan the shards, stream them through Ray Data, write each
shard's results once it is complete, and summarise.

Ray Data does the scheduling and retries; the driver keeps the books:
it knows every shard's row count from its footer, gathers results per shard, and
writes a shard's output only when every one of its rows has a result (or an
error). A crash therefore leaves only whole outputs behind, and a rerun of the
same command skips them; a shard whose input changed since is redone. The
driver logs its progress (pipeline.job.progress) and keeps it beside the output.
"""

from __future__ import annotations

import logging
import time

import ray

from ..errors import InputError, RunAborted, StorageUnavailable
from ..io.manifest import Manifest, write_manifest
from ..io.outputs import Outputs
from ..io.shard import Shard
from ..settings import JobSettings, with_run_id
from ..stages.preprocess import Preprocessor
from ..stages.read import read_rows, read_tasks
from ..stages.score import score_benchmark, score_vqa
from ..summary import summarize, summarize_output, write_run_record, write_summary
from .collect import ShardCollector
from .plan import Plan, plan
from .progress import Progress, logged_every
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
    from ..memory import CPU_BATCH_SIZE, MAX_BATCH_SIZE
    from ..stages.generate import Predictor

    tasks = read_tasks(pending)
    gpus, per_model = settings.num_gpus, settings.gpus_per_model
    if gpus is None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus == 0 and per_model > 1:
            raise InputError(f"--gpus-per-model {per_model}: the cluster has no GPUs yet (pass --num-gpus N to wait "
                             "for N GPU workers)")
        if gpus == 0:
            log.warning("no GPUs in the cluster: generating on CPU (pass --num-gpus N to wait for N GPU workers)")
        elif gpus < per_model:
            raise InputError(f"--gpus-per-model {per_model}: the cluster has {gpus} GPUs (pass --num-gpus N to wait "
                             "for more)")
    actors = max(gpus // per_model, 1)
    # On a GPU node the actor finds CUDA; a node whose GPUs torch cannot use generates on its CPU and says so.
    device = "auto" if gpus > 0 else "cpu"
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # Half the CPUs: the generation actors, Ray and reads need the rest. The pool starts at one and
    # grows with the backlog.
    workers = settings.preprocess_workers or max(1, min(cpus // 2, 32))
    # Pixel values are the bulk of what crosses to the generation actors: ship them in the model's precision.
    pixel_dtype = "float32" if device == "cpu" or settings.dtype == "float32" else "float16"
    log.info(
        "%d shards, %d read tasks; %s generation actors; %d preprocessing actors",
        len(pending), len(tasks), (f"{actors} GPU" if per_model == 1 else f"{actors} {per_model}-GPU") if gpus else "1 CPU",
        workers,
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
        compute=ray.data.ActorPoolStrategy(size=actors),
        # Rows per actor call; the actor cuts them into micro-batches that fit its memory. On a GPU as many
        # as a micro-batch may hold: HiRED's batches hold 100 and more on large cards, and each call ends in a tail.
        batch_size=settings.batch_size or (MAX_BATCH_SIZE if gpus else CPU_BATCH_SIZE),
        num_gpus=per_model if gpus else 0,
        accelerator_type=settings.accelerator_type if gpus else None,
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


class RunRecords:
    """What a run writes beside its results: ``_manifest.json`` (the current input's shards) and
    ``_runs/<run_id>.json`` (its progress, rewritten at each shard write; its summary at the end).
    Nothing is written before the output exists: a run that writes no result creates no output."""

    def __init__(self, settings: JobSettings, manifest: Manifest, progress: Progress, output_exists: bool):
        self.settings, self.manifest, self.progress = settings, manifest, progress
        self.begun = False
        self.started_at = _now()
        if output_exists:
            self.begin()

    def begin(self) -> None:
        write_manifest(self.settings.output, self.manifest)
        self.begun = True
        self.update()

    def update(self) -> None:
        record = {"run_id": self.settings.run_id, "state": "running", "task": self.settings.task,
                  "input": str(self.settings.input), "output": str(self.settings.output),
                  "started_at": self.started_at, "updated_at": _now(), "progress": self.progress.figures()}
        write_run_record(self.settings.output, self.settings.run_id, record)

    def shard_written(self, shard: Shard) -> None:
        self.progress.shard_written()
        if self.begun:
            self.update()
        else:
            self.begin()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_job(settings: JobSettings) -> dict:
    """Run (or resume) a job; returns the summary, also written beside the output."""
    settings = with_run_id(settings)
    started = time.perf_counter()
    planned = plan(settings)
    pending, done, failed = planned.pending, planned.done, planned.failed
    log.info("run %s: %d shards to do (%d rows to generate), %d already complete, %d unreadable", settings.run_id,
             len(pending), planned.rows_to_generate, len(done), len(failed))
    for f in failed:
        log.error("shard failed: %s: %s", f.uri, f.reason)

    manifest = Manifest.of(settings.run_id, str(settings.input), planned.current)
    # Result rows: one per prompt of each input row with --prompts.
    progress = Progress(len(pending), planned.rows_to_generate * settings.outputs_per_row, already_complete=len(done))
    records = RunRecords(settings, manifest, progress, planned.output_existed)
    collector = ShardCollector(pending, settings, on_rows=progress.rows_arrived, on_written=records.shard_written)
    aborted = None
    with logged_every(progress, settings.progress_s, log):
        for shard in pending:
            if shard.rows_to_generate == 0:  # empty, or every row carried over: complete as it is
                collector.flush(shard.uri)
        to_generate = [s for s in pending if s.rows_to_generate]
        if to_generate:
            init_ray(settings.ray_address)
            try:
                for block in build_dataset(to_generate, settings).iter_batches(batch_size=None, batch_format="pyarrow"):
                    collector.add(block)
            except Exception as error:  # the run cannot go on; keep what is complete and say why
                aborted = abort_reason(error)
                log.error("run stopped: %s", aborted)
    unreadable = len(failed)
    failed += [] if aborted else collector.incomplete()
    changes = planned.changes()
    if not aborted:
        changes["moved_to"] = tidy(settings, planned, everything_written=not failed)
    wall_s = time.perf_counter() - started

    run = dict(
        processed_rows=collector.processed,
        processed_generated_tokens=collector.generated_tokens,
        wall_s=wall_s,
        extra={
            "run_id": settings.run_id,
            "state": "stopped" if aborted else "finished",
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
            "input_changes": changes,
            "progress": progress.figures(),
        },
    )
    try:  # file by file, a few columns at a time: the driver never holds the output's rows
        summary = summarize_output(settings.output, manifest=manifest, **run)
    except StorageUnavailable:
        if not aborted:
            raise
        summary = summarize(None, **run)  # storage is what stopped the run: the counts must wait for the rerun
    if aborted:
        summary["aborted"] = aborted
    if not (records.begun or settings.output.exists()):
        summary["summary_uri"] = "(not written: the run wrote no result, so the output was left as it was)"
    else:
        try:
            summary["summary_uri"] = write_summary(settings.output, summary)
        except Exception as error:
            if not aborted:
                raise
            summary["summary_uri"] = f"(not written: {type(error).__name__})"
    if aborted:
        raise RunAborted(aborted, summary)
    return summary


def tidy(settings: JobSettings, planned: Plan, everything_written: bool) -> str | None:
    """After a run that was not stopped: delete the folder chunk outputs this run's chunks replaced
    (once all of them are written), and with ``--prune`` set aside the results whose shard is gone.
    Returns where those went, if anywhere."""
    outputs = Outputs(settings.output)
    if planned.superseded and everything_written:
        outputs.remove(planned.superseded)
        log.info("removed %d folder chunk output(s) replaced by this run's chunks", len(planned.superseded))
    if not (settings.prune and planned.removed):
        return None
    moved_to = outputs.set_aside(planned.removed, settings.run_id)
    log.info("moved %d result file(s) whose shard is gone to %s", len(planned.removed), moved_to)
    return moved_to
