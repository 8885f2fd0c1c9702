"""Planning a run: check the output and the input before any model loads, and split the
shards into those to do and those a previous run already completed."""

from __future__ import annotations

import logging

from ..io.inputs import FailedShard, Shard, inspect_shards
from ..io.outputs import check_output_writable, completed_output, remove_stale_temporaries
from ..settings import JobSettings

log = logging.getLogger("hired.pipeline")


def plan(settings: JobSettings) -> tuple[list[Shard], list[Shard], list[FailedShard]]:
    """Check the input and output before any model loads; split shards into to-do and done."""
    check_output_writable(settings.output)
    if removed := remove_stale_temporaries(settings.output):
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed, settings.output)
    shards, failed = inspect_shards(settings.input, settings.task, settings.columns)
    wanted = settings.result_settings()
    if settings.overwrite:
        return shards, [], failed
    done = [s for s in shards if completed_output(settings.output, s, wanted)]
    done_uris = {s.uri for s in done}
    return [s for s in shards if s.uri not in done_uris], done, failed
