"""A soak: 2,000 small rows over 10 shards with a mix of faults, killed part-way and resumed.

Marked slow: `python -m pytest -m "not slow"` leaves it out; CI runs it (it fits the time budget).
A tiny-geometry LLaVA-Next (56 px tiles: 16 tokens a partition, the same anyres logic) keeps
2,000 generations inside about a minute on two cores (the suite's time budget holds it).
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
SHARDS, ROWS_PER_SHARD = 10, 200
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
def test_soak_thousands_of_rows_with_faults(tmp_path):
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
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             env=dict(env, HIRED_FAULTS=f"{faults};shard_written=kill@{interrupted_at}"))
    try:
        assert first.wait(timeout=600) == 137
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # and whatever of its Ray is left
    assert len(list(out.glob("shard-*.parquet"))) == interrupted_at

    # The rerun of the same command finishes the job.
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert second.returncode == 3, second.stderr[-3000:]  # 3: a shard failed (the corrupt one)
    assert (tmp_path / "killed").exists(), "the injected actor kill never happened"

    rows = [r for p in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert Counter(r["id"] for r in rows) == Counter(ids)  # exactly one output row per input row
    assert len({(r["source_shard"], r["row_index"]) for r in rows}) == ROWS
    reasons = Counter(r["error_kind"] for r in rows if r["error"])
    oom = reasons.pop("out of memory", 0)
    assert reasons == expected
    assert all(isinstance(r["text"], str) for r in rows if not r["error"])

    summary = json.loads((out / "_summary.json").read_text())
    assert summary["items"] == ROWS and summary["errors"] == sum(expected.values()) + oom
    assert summary["duplicate_ids"] == sum(1 for c in Counter(ids).values() if c > 1)
    assert summary["shards"]["total"] == SHARDS + 2 and summary["shards"]["failed"] == 1
    assert summary["shards"]["already_complete"] >= interrupted_at
    assert summary["failed_shards"][0]["shard"].endswith("shard-corrupt.parquet")
