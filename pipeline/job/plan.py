"""Planning a run: check the output and the input before any model loads, and split the
shards into those to do and those a previous run already completed.

Planning is a request or two per shard (its footer; its output's footer, if it has one), and a
request waits mostly on the store: against object storage one after another it takes minutes
for ten thousand shards. So the input and the output are each listed once (a shard whose output
is not in the listing costs no request), and the footers are read by a pool of threads.
Results and errors are those of the one-by-one loop: shards stay in input order, and when
shards raise, the first of them in input order decides (input errors before output errors).
"""

from __future__ import annotations

import logging

from ..io.formats import inspect_input
from ..io.location import in_threads
from ..io.outputs import Outputs
from ..io.shard import FailedShard, Shard
from ..settings import JobSettings

log = logging.getLogger("hired.pipeline")

# Footer reads in flight at once. They wait mostly on the store (s3fs sends at most 10 requests at
# once per filesystem; the rest of the pool queues for them); bench/bench_plan.py measures it.
PLAN_THREADS = 32


def plan(settings: JobSettings, threads: int = PLAN_THREADS, tidy: bool = True) -> tuple[list[Shard], list[Shard], list[FailedShard]]:
    """Check the input and output before any model loads; split shards into to-do and done.
    ``tidy=False`` (a dry run) leaves the temporary files a killed run left."""
    outputs = Outputs(settings.output)
    outputs.check_writable()
    if tidy and (removed := outputs.remove_stale_temporaries()):
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed, settings.output.uri)
    shards, failed = inspect_input(settings.input, settings, threads)
    if settings.overwrite:
        return shards, [], failed
    complete = outputs_complete(outputs, shards, settings.result_settings(), threads)
    done = [s for s, is_complete in zip(shards, complete) if is_complete]
    return [s for s, is_complete in zip(shards, complete) if not is_complete], done, failed


def outputs_complete(outputs: Outputs, shards: list[Shard], settings: dict, threads: int = PLAN_THREADS) -> list[bool]:
    """Whether each shard's output is complete; only outputs the listing holds are read."""
    held = outputs.held()
    sizes = [held.get(f"{shard.name}.parquet") for shard in shards]
    to_check = [i for i, size in enumerate(sizes) if size is not None]
    checked = in_threads(lambda i: outputs.is_complete(shards[i], settings, size=sizes[i]), to_check, threads)
    complete = [False] * len(shards)
    for i, is_complete in zip(to_check, checked):
        complete[i] = is_complete
    return complete
