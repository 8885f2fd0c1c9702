"""A soak: 1,000 small rows over 10 shards with a mix of faults; the driver killed part-way, the
output read while it stands half-done, and the same command rerun to finish it.

Marked slow: `python -m pytest -m "not slow"` leaves it out; CI runs it.
A tiny-geometry LLaVA-Next (56 px tiles: 16 tokens a partition, the same anyres logic) keeps
the generations to seconds; the time is the two jobs' start-up.
"""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hired.tiny import build_tiny_llava_next


from .data import encoded, truncated_jpeg, write_shard
from .test_faults import png_header_only

REPO = Path(__file__).resolve().parent.parent
SHARDS, ROWS_PER_SHARD = 10, 100
ROWS = SHARDS * ROWS_PER_SHARD


def soak_input(root: Path) -> tuple[list[str], Counter]:
    """The rows' ids (duplicates included) and the error reasons expected, by kind."""
    pictures = [encoded(20 + 7 * (k % 9), 30 + 11 * (k % 7), ["PNG", "JPEG", "WEBP"][k % 3], seed=k) for k in range(60)]
    bad = [(truncated_jpeg(), "undecodable image"), (b"\x00garbage" * 40, "undecodable image"),
           (b"", "empty image"), (png_header_only(50_000, 50_000), "image too large")]
    ids, expected = [], Counter()
    for s in range(SHARDS):
        rows = []
        for i in range(ROWS_PER_SHARD):
            k = s * ROWS_PER_SHARD + i
            row = {"id": f"r{k:05d}", "image": pictures[k % len(pictures)], "prompt": None if k % 3 else "describe"}
            if k % 97 == 5:  # ~1% bad bytes of four kinds
                row["image"], reason = bad[(k // 97) % len(bad)]
                expected[reason] += 1
            elif k % 211 == 7:  # ~0.5% with no image at all
                row["image"] = None
                expected["missing field"] += 1
            elif k % 499 == 11:  # a few duplicate ids, reported and kept
                row["id"] = f"r{k - 1:05d}"
            rows.append(row)
            ids.append(row["id"])
        write_shard(str(root / f"shard-{s:03d}.parquet"), rows, row_group_size=50)
    write_shard(str(root / "shard-empty.parquet"), [])
    (root / "shard-corrupt.parquet").write_bytes(b"PAR1" + b"\x13" * 500 + b"PAR1")
    return ids, expected


@pytest.mark.slow
def test_soak_a_thousand_rows_with_faults_killed_and_resumed(tmp_path):
    model = build_tiny_llava_next(tmp_path / "model", tile=56)
    inputs, out = tmp_path / "in", tmp_path / "out"
    ids, expected = soak_input(inputs)
    assert len(ids) == ROWS
    # one generation actor dies once; every 40th generation call runs out of memory
    faults = f"generate=kill@6#{tmp_path / 'killed'};generate=oom@9%40"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1", HIRED_FAULTS=faults)
    cmd = [sys.executable, str(REPO / "jobs" / "caption.py"), "--input", str(inputs), "--output", str(out),
           "--model", str(model), "--num-gpus", "0", "--batch-size", "32", "--max-new-tokens", "2"]

    # First run: the driver dies right after writing a fifth of the shards.
    interrupted_at = SHARDS // 5
    first = subprocess.Popen(cmd + ["--run-id", "first"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True,
                             env=dict(env, HIRED_FAULTS=f"{faults};shard_written=kill@{interrupted_at}"))
    try:
        assert first.wait(timeout=600) == 137  # killed by the failpoint, not finished
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # and whatever of its Ray is left
    survivors = sorted(out.glob("shard-*.parquet"))
    assert len(survivors) == interrupted_at
    for path in survivors:  # what a crash leaves behind is whole
        assert pq.read_metadata(path).num_rows == pq.read_metadata(inputs / path.name).num_rows
    # The run record, kept at each shard write, says where the killed run stood; `hired summary` reads it.
    progress = json.loads((out / "_runs" / "first.json").read_text())["progress"]
    assert progress["shards_written"] == interrupted_at and progress["already_complete"] == 0
    assert progress["shards_to_write"] == SHARDS + 1 and progress["rows_to_generate"] == ROWS  # the corrupt one unread
    survived_rows = sum(pq.read_metadata(p).num_rows for p in survivors)
    assert survived_rows <= progress["rows_generated"] < ROWS
    status = subprocess.run([sys.executable, "-m", "pipeline.summary", str(out)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert status.returncode == 0, status.stderr
    line = status.stdout.splitlines()[0]
    assert line.startswith("run first is running (as of ")
    assert (f": {interrupted_at}/{SHARDS + 1} shards written (0 already complete), "
            f"{progress['rows_generated']:,}/{ROWS:,} rows") in line

    # The rerun of the same command finishes the job.
    second = subprocess.run(cmd + ["--run-id", "second"], capture_output=True, text=True, env=env, timeout=1200)
    assert second.returncode == 3, second.stderr[-3000:]  # 3: a shard failed (the corrupt one)
    assert (tmp_path / "killed").exists(), "the injected actor kill never happened"
    left = SHARDS + 1 - interrupted_at
    left_rows = ROWS - survived_rows
    assert (f"progress: {left}/{left} shards written ({interrupted_at} already complete), "
            f"{left_rows:,}/{left_rows:,} rows (100%)") in second.stderr

    final = sorted(out.glob("shard-*.parquet"))
    assert len(final) == SHARDS + 1
    rows = [r for p in final for r in pq.read_table(p).to_pylist()]
    assert Counter(r["id"] for r in rows) == Counter(ids)  # exactly one output row per input row
    assert len({(r["source_shard"], r["row_index"]) for r in rows}) == ROWS
    runs = {p.name: set(pq.read_table(p).column("run_id").to_pylist()) for p in final}
    assert all(runs[p.name] <= {"first"} for p in survivors)  # complete shards were not redone
    assert {r["run_id"] for r in rows} == {"first", "second"}
    reasons = Counter(r["error_kind"] for r in rows if r["error"])
    oom = reasons.pop("out of memory", 0)
    assert reasons == expected
    assert all(isinstance(r["text"], str) for r in rows if not r["error"])
    assert not list(out.glob(".*.tmp")), "temporary files left behind"

    summary = json.loads((out / "_summary.json").read_text())
    assert summary["items"] == ROWS and summary["errors"] == sum(expected.values()) + oom
    assert summary["duplicate_ids"] == sum(1 for c in Counter(ids).values() if c > 1)
    assert summary["shards"] == {"total": SHARDS + 2, "written_this_run": left, "already_complete": interrupted_at,
                                 "failed": 1}
    assert summary["failed_shards"][0]["shard"].endswith("shard-corrupt.parquet")
