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
from collections.abc import Sequence

from ..io.inputs import FailedShard, Shard, inspect_shards
from ..io.outputs import check_output_writable, completed_output, listed_outputs, output_path, remove_stale_temporaries
from ..io.storage import Storage, in_threads
from ..settings import JobSettings

log = logging.getLogger("hired.pipeline")

# Footer reads in flight at once. They wait mostly on the store: on a busy 2-core machine against
# a loopback S3, 2,000 footers took about 3x longer with 8 threads than with 32; 64 were no faster.
# (s3fs sends at most 10 requests at once per filesystem; the rest of the pool queues for them.)
PLAN_THREADS = 32


def plan(settings: JobSettings, threads: int = PLAN_THREADS) -> tuple[list[Shard], list[Shard], list[FailedShard]]:
    """Check the input and output before any model loads; split shards into to-do and done."""
    check_output_writable(settings.output)
    if removed := remove_stale_temporaries(settings.output):
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed, settings.output)
    shards, failed = inspect_shards(settings.input, settings.task, settings.columns, threads)
    if settings.overwrite:
        return shards, [], failed
    complete = outputs_complete(settings.output, shards, settings.result_settings(), threads)
    done = [s for s, is_complete in zip(shards, complete) if is_complete]
    return [s for s, is_complete in zip(shards, complete) if not is_complete], done, failed


def outputs_complete(output_uri: str, shards: Sequence[Shard], settings: dict, threads: int = PLAN_THREADS) -> list[bool]:
    """Whether each shard's output is complete; only outputs the listing holds are read."""
    sizes = listed_outputs(output_uri)
    output_sizes = [sizes.get(Storage.at(output_path(output_uri, shard)).path) for shard in shards]
    to_check = [i for i, size in enumerate(output_sizes) if size is not None]
    checked = in_threads(lambda i: completed_output(output_uri, shards[i], settings, size=output_sizes[i]), to_check, threads)
    complete = [False] * len(shards)
    for i, is_complete in zip(to_check, checked):
        complete[i] = is_complete
    return complete
