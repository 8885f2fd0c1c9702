"""The caption job on a Ray cluster of two nodes, one of which is lost mid-run.

Two `ray start` nodes on loopback (tests/cluster.py); the job submitted with `ray job submit` as a user
would. The second node's processes alone carry failpoints that hold the first batch a preprocessing or
generation actor there takes, so the test knows that node is mid-batch when it kills it (every process
of the node at once, as a machine that dies). Ray must notice the node is gone, restart its actors on
the head and redo what was lost; the job must still write exactly one row per input row and exit 0.

Marked slow: about 3-4 minutes on a loaded 2-core machine (two Ray nodes, the job's start-up, a model
loaded again on the head after the kill).
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
from .test_jobs import REPO, small_shards

SHARDS, ROWS = 4, 3
HOLD_S = 300  # a held batch waits this long: far past the kill, which comes within seconds of the hold
# The head's checks of its nodes: every second, dead after 5 missed (Ray's defaults, 3 s, make it ~16 s).
# A killed node refuses connections at once; a slow but living one still has 5 x 10 s to answer.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
# Two `ray start`s took 20-45 s here; under heavy load Ray's own 30 s start-up limit can pass: started again.
CLUSTER_START_S = 300
STAGE_ACTORS = {"preprocess": "MapWorker(MapBatches(Preprocessor))", "generate": "MapWorker(MapBatches(Predictor))"}


@pytest.fixture
def two_nodes(tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    # One claim file per stage: the first batch of each stage that reaches node_b is held there.
    faults = ";".join(f"{stage}=sleep{HOLD_S}#{held / stage}" for stage in STAGE_ACTORS)
    started = time.monotonic()
    cluster = start_two_node_cluster(tmp_path, num_cpus=4, head_env=FAST_NODE_DEATH,
                                     worker_env={"HIRED_FAULTS": faults}, timeout=CLUSTER_START_S)
    try:
        yield cluster, held, time.monotonic() - started
    finally:
        cluster.stop()


def pipeline_actors(dashboard: str) -> dict[str, dict]:
    """actor id -> class, the node it is (or last was) on, state and restarts, for the job's stage actors."""
    from ray.util.state import list_actors

    names = node_names(dashboard)
    return {
        a.actor_id: {"class": a.class_name, "node": names.get(a.node_id), "state": a.state, "restarts": a.num_restarts}
        for a in list_actors(address=dashboard, detail=True, raise_on_missing_output=False, limit=10_000)
        if a.class_name in STAGE_ACTORS.values()
    }


def read_tasks_by_node(dashboard: str) -> Counter:
    from ray.util.state import list_tasks

    names = node_names(dashboard)
    tasks = list_tasks(address=dashboard, detail=True, raise_on_missing_output=False, limit=10_000)
    return Counter(names.get(t.node_id) for t in tasks if "read_rows" in t.name and t.node_id)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# Its own limit, the sum of what it waits for: the cluster's start (300 s), a held batch (420 s), the job
# after the kill (480 s), a job left running killed (60 s), each node's processes ending (2 x 2 x 60 s);
# the suite's 600 s would cut it short.
@pytest.mark.slow
@pytest.mark.timeout(1560)
def test_a_node_lost_mid_run_loses_no_row(two_nodes, tmp_path, tiny_next_path):
    cluster, held, cluster_start_s = two_nodes
    inputs = small_shards(tmp_path / "in", shards=SHARDS, rows=ROWS)
    out = tmp_path / "out"
    log = tmp_path / "submit.log"
    submit = ["ray", "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
              "--submission-id", f"two-nodes-{tmp_path.name}", "--",
              "python", "jobs/caption.py", "--input", str(inputs), "--output", str(out),
              "--model", str(tiny_next_path), "--num-gpus", "0", "--max-new-tokens", "3"]
    submitted = time.monotonic()
    with open(log, "wb") as sink:
        job = subprocess.Popen(submit, stdout=sink, stderr=subprocess.STDOUT, env=cluster_env(), cwd=REPO,
                               start_new_session=True)
    try:
        # Uploading the code, the driver's imports, the actors' imports and model loads: on a loaded 2-core
        # machine this took 60-120 s.
        wait_until(lambda: any(held.iterdir()) or job.poll() is not None, 420, "a batch held on node_b", every=0.5)
        held_stages = sorted(p.name for p in held.iterdir())
        assert held_stages, f"the job ended before node_b took a batch:\n{tail(log)}"
        held_after_s = time.monotonic() - submitted
        before = pipeline_actors(cluster.dashboard)
        killed = cluster.second.kill()
        killed_at = time.monotonic()
        # The head's detection of the death (~5 s), the lost actors restarted on the head (imports and a
        # model load again), the lost batches redone: 40 s here; room for a machine three times slower.
        returncode = job.wait(timeout=480)
        finished_after_kill_s = time.monotonic() - killed_at
        after = pipeline_actors(cluster.dashboard)
        reads = read_tasks_by_node(cluster.dashboard)
        node_states = dict(node_names(cluster.dashboard, with_state=True).values())
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
    print(f"\ncluster up in {cluster_start_s:.0f} s; batch held on node_b ({', '.join(held_stages)}) "
          f"{held_after_s:.0f} s after submitting; killed {len(killed)} processes; "
          f"job succeeded {finished_after_kill_s:.0f} s after the kill\nactors before the kill: {before}\n"
          f"after: {after}\nread tasks by node: {dict(reads)}")

    assert returncode == 0, tail(log)
    assert "succeeded" in tail(log, 20_000)
    assert node_states == {"node_a": "ALIVE", "node_b": "DEAD"}  # the head saw node_b die
    # Work ran on both nodes, and what node_b held was picked up by the head: for each held stage, an
    # actor of that stage that was on node_b is the same actor restarted on node_a (a retried actor task
    # waits for its own actor). Other actors lost with the node may have been retired instead.
    assert any(a["node"] == "node_a" for a in before.values()) or reads["node_a"], (before, reads)
    lost = [i for i, a in before.items() if a["node"] == "node_b"]
    for stage in held_stages:
        restarted = [i for i in lost if after[i]["class"] == STAGE_ACTORS[stage]
                     and after[i]["node"] == "node_a" and after[i]["restarts"] >= 1]
        assert restarted, (stage, before, after)
    # Exactly one row per input row: nothing lost, nothing twice.
    files = sorted(out.glob("*.parquet"))
    assert [p.name for p in files] == [f"shard-{s:02d}.parquet" for s in range(SHARDS)]
    ids = [i for path in files for i in pq.read_table(path).column("id").to_pylist()]
    assert Counter(ids) == Counter(f"{s}-{i}" for s in range(SHARDS) for i in range(ROWS))
    assert [e for path in files for e in pq.read_table(path).column("error").to_pylist() if e is not None] == []
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["items"] == SHARDS * ROWS and summary["errors"] == 0
    assert summary["shards"]["written_this_run"] == SHARDS and summary["shards"]["failed"] == 0
