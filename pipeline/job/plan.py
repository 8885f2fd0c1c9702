"""Planning a run: check the output and the input before any model loads, and split the
shards into those to do and those a previous run already completed for the input as it is now.

A shard is done when its output records its source and fingerprint as planned (what its input
was: pipeline.io.formats) and these settings; one whose input changed since is redone, and said
so. Result files whose shard is no longer in the input are named, left out of the summary, and
set aside by ``--prune``. Folder chunks carry over the results of unchanged files (pipeline.job.carry).
Planning writes nothing: a refused run leaves the output as it found it.

Planning is a request or two per shard (its footer; its output's footer, if it has one), and a
request waits mostly on the store: against object storage one after another it takes minutes
for ten thousand shards. So the input and the output are each listed once (a shard whose output
is not in the listing costs no request), and the footers are read by a pool of threads.
Results and errors are those of the one-by-one loop: shards stay in input order, and when
shards raise, the first of them in input order decides (input errors before output errors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..io.formats import inspect_input
from ..io.location import in_threads
from ..io.outputs import Outputs, Recorded, result_name
from ..io.shard import FailedShard, Shard
from ..settings import JobSettings
from .carry import carry_results

log = logging.getLogger("hired.pipeline")

# Footer reads in flight at once. They wait mostly on the store (s3fs sends at most 10 requests at
# once per filesystem; the rest of the pool queues for them); bench/bench_plan.py measures it.
PLAN_THREADS = 32
EXAMPLES = 5  # names shown when a log line or the summary names a set of shards


@dataclass
class Plan:
    pending: list[Shard]  # to write this run, in input order
    done: list[Shard]  # complete for the input as it is
    failed: list[FailedShard]  # unreadable
    why: dict[str, str] = field(default_factory=dict)  # pending shard name -> why it is (re)done
    removed: list[str] = field(default_factory=list)  # result names whose input shard is gone
    superseded: list[str] = field(default_factory=list)  # folder chunk outputs this run's chunks replace
    files: dict | None = None  # folder inputs: files new, changed, removed; results carried over
    output_existed: bool = False

    @property
    def current(self) -> list[Shard]:
        return self.done + self.pending

    @property
    def rows_to_generate(self) -> int:
        return sum(s.rows_to_generate for s in self.pending)

    def changes(self) -> dict:
        """What the input's changes make this run do, for the summary."""
        changed = [name for name, why in self.why.items() if why != "new"]
        return {"redone_shards": len(changed), "redone_examples": changed[:EXAMPLES],
                "new_shards": sum(why == "new" for why in self.why.values()),
                "removed_results": len(self.removed), "removed_examples": self.removed[:EXAMPLES],
                **({"files": self.files} if self.files is not None else {})}


class _Records:
    """The output's footers by result name, each read once, when first asked for."""

    def __init__(self, outputs: Outputs, held: dict[str, int]):
        self.outputs = outputs
        self.sizes = {result_name(name): size for name, size in held.items()}
        self.read: dict[str, Recorded] = {}

    def get(self, name: str) -> Recorded | None:
        if name not in self.sizes:
            return None
        if name not in self.read:
            self.read[name] = self.outputs.record(name, self.sizes[name])
        return self.read[name]


def plan(settings: JobSettings, threads: int = PLAN_THREADS, tidy: bool = True) -> Plan:
    """Check the input and output before any model loads; split shards into to-do and done.
    ``tidy=False`` (a dry run) leaves the temporary files a killed run left."""
    outputs = Outputs(settings.output)
    outputs.check_writable()
    if tidy and (removed := outputs.remove_stale_temporaries()):
        log.info("removed %d temporary file(s) an interrupted run left in %s", removed, settings.output.uri)
    held = outputs.held()
    records = _Records(outputs, held)
    shards, failed = inspect_input(settings.input, settings, threads, records=None if settings.overwrite else records.get)
    wanted = settings.result_settings()
    if settings.overwrite:
        why = ["overwrite"] * len(shards)
    else:
        why = in_threads(lambda s: outputs.status(s, records.get(s.name), wanted), shards, threads)
    found = Plan(pending=[s for s, w in zip(shards, why) if w is not None],
                 done=[s for s, w in zip(shards, why) if w is None], failed=failed,
                 why={s.name: w for s, w in zip(shards, why) if w is not None},
                 output_existed=bool(held) or settings.output.exists())
    in_input = {s.name for s in shards} | {f.name for f in failed}
    not_current = sorted(name for name in records.sizes if name not in in_input)
    if shards and shards[0].format == "folder" and not settings.overwrite:
        carried = carry_results(outputs, shards, found.pending, in_threads(records.get, not_current, threads),
                                wanted, threads)
        found.pending, found.removed, found.superseded = carried.pending, carried.removed, carried.superseded
        found.files = {"new": carried.new_files, "changed": carried.changed_files, "removed": carried.removed_files,
                       "carried_over": carried.carried_rows}
    else:
        found.removed = not_current
    _log(found, settings)
    return found


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


def _log(found: Plan, settings: JobSettings) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, why in found.why.items():
        if why not in ("new", "overwrite"):
            by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
        log.info("%d shard(s) redone (%s): %s", len(names), why, _some(names))
    if found.files is not None and (found.pending or found.superseded):
        files = found.files
        log.info("folder: %d new and %d changed file(s) to generate, %d removed; %d result(s) carried over into "
                 "%d rewritten chunk(s)", files["new"], files["changed"], files["removed"], files["carried_over"],
                 len(found.pending))
    if found.removed:
        action = ("--prune moves them under _removed/<run_id>/ at the end of the run" if settings.prune
                  else "pass --prune to move them under _removed/<run_id>/")
        log.warning("%d result file(s) have no shard in the input any more (removed since they were written): %s; "
                    "left out of the summary and report; %s", len(found.removed),
                    _some([f"{name}.parquet" for name in found.removed]), action)
