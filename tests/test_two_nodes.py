"""The caption job on a Ray cluster of two nodes, one of which is lost mid-run.

Two `ray start` nodes on loopback (tests/cluster.py); the job submitted with `ray job submit` as a user
would. The second node's processes alone carry failpoints that hold the first batch a preprocessing or
generation actor there takes, so the test knows that node is mid-batch when it kills it (every process
of the node at once, as a machine that dies). Ray must notice the node is gone, restart its actors on
the head and redo what was lost; the job must still write exactly one row per input row and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .cluster import cluster_env, node_names, start_two_node_cluster, wait_until
from .test_jobs import REPO, outputs, small_shards

SHARDS, ROWS = 4, 3
HOLD_S = 300  # a held batch waits this long: far past the kill, which comes within seconds of the hold
# The head's checks of its nodes: every second, dead after 5 missed (Ray's defaults, 3 s, make it ~16 s).
# A killed node refuses connections at once; a slow but living one still has 5 x 10 s to answer.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
STAGES = ("preprocess", "generate")


@pytest.fixture
def two_nodes(tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    # One claim file per stage: the first batch of each stage reaching node_b is held there.
    faults = ";".join(f"{stage}=sleep{HOLD_S}#{held / stage}" for stage in STAGES)
    cluster = start_two_node_cluster(tmp_path, num_cpus=4, head_env=FAST_NODE_DEATH, worker_env={"HIRED_FAULTS": faults})
    try:
        yield cluster, held
    finally:
        cluster.stop()


def pipeline_work_by_node(dashboard: str) -> dict[str, Counter]:
    """node name -> how many of the job's actors and tasks (read, preprocess, generate) Ray placed there."""
    from ray.util.state import list_actors, list_tasks

    names = node_names(dashboard)
    placed: dict[str, Counter] = {}
    for actor in list_actors(address=dashboard, detail=True, raise_on_missing_output=False, limit=10_000):
        if "MapBatches(" in actor.class_name and actor.node_id:
            placed.setdefault(names.get(actor.node_id, "?"), Counter())[f"actor {actor.class_name}"] += 1
    for task in list_tasks(address=dashboard, detail=True, raise_on_missing_output=False, limit=10_000):
        if "read_rows" in task.name and task.node_id:
            placed.setdefault(names.get(task.node_id, "?"), Counter())[f"task {task.name}"] += 1
    return placed


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def test_a_node_lost_mid_run_loses_no_row(two_nodes, tmp_path, tiny_next_path):
    cluster, held = two_nodes
    inputs = small_shards(tmp_path / "in", shards=SHARDS, rows=ROWS)
    out = tmp_path / "out"
    log = tmp_path / "submit.log"
    submit = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
              "--submission-id", f"two-nodes-{tmp_path.name}", "--",
              "python", "jobs/caption.py", "--input", str(inputs), "--output", str(out),
              "--model", str(tiny_next_path), "--num-gpus", "0", "--max-new-tokens", "3"]
    with open(log, "wb") as sink:
        job = subprocess.Popen(submit, stdout=sink, stderr=subprocess.STDOUT, env=cluster_env(), cwd=REPO,
                               start_new_session=True)
    try:
        # Uploading the code, the driver's imports and the actors' model loads, on a loaded 2-core machine.
        wait_until(lambda: any(held.iterdir()) or job.poll() is not None, 420, "a batch held on node_b", every=0.5)
        held_stages = sorted(p.name for p in held.iterdir())
        assert held_stages, f"the job ended before node_b took a batch:\n{tail(log)}"
        before_kill = pipeline_work_by_node(cluster.dashboard)
        killed = cluster.second.kill()
        killed_at = time.monotonic()
        # Ray's node-death detection, actors restarted on the head (a model load), lost batches redone.
        returncode = job.wait(timeout=480)
        recovered_s = time.monotonic() - killed_at
        after = pipeline_work_by_node(cluster.dashboard)
        node_states = {name: state for name, state in node_names(cluster.dashboard, with_state=True).values()}
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
    print(f"held on node_b: {held_stages}; killed {len(killed)} processes; job done {recovered_s:.0f} s after the kill")
    print(f"work by node before the kill: {before_kill}; at the end: {after}")

    assert returncode == 0, tail(log)
    assert "succeeded" in tail(log, 20_000)
    # Work ran on both nodes: node_b held a batch in flight, the head finished the job.
    assert "node_b" in before_kill and "node_a" in after, (before_kill, after)
    assert node_states == {"node_a": "ALIVE", "node_b": "DEAD"}  # the head saw node_b die
    # Exactly one row per input row: nothing lost, nothing twice.
    files = outputs(out)
    assert [p.name for p in files] == [f"shard-{s:02d}.parquet" for s in range(SHARDS)]
    ids = [i for path in files for i in pq.read_table(path).column("id").to_pylist()]
    assert Counter(ids) == Counter(f"{s}-{i}" for s in range(SHARDS) for i in range(ROWS))
    errors = [e for path in files for e in pq.read_table(path).column("error").to_pylist() if e is not None]
    assert errors == []
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["items"] == SHARDS * ROWS and summary["errors"] == 0
    assert summary["shards"]["written_this_run"] == SHARDS and summary["shards"]["failed"] == 0
