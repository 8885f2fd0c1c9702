"""The README's main command: `python jobs/caption.py` with no arguments runs the built-in demo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_and_resumes(tmp_path):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    for key in ("RAY_ADDRESS", "AWS_ENDPOINT_URL"):  # a local demo, whatever the test session set up
        env.pop(key, None)
    first = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    output = tmp_path / "demo_output" / "caption"
    assert f"output in {output}" in first.stdout
    assert "items 24  ok 23  errors 1  (undecodable image: 1)" in first.stdout
    rows = [r for p in sorted(output.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert [r["id"] for r in rows if r["error"]] == ["demo-0012"]
    assert all(r["visual_tokens_kept"] == r["visual_tokens_full"] // 5 for r in rows if not r["error"])
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["items"] == 24 and summary["shards"]["written_this_run"] == 3

    again = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert json.loads((output / "_summary.json").read_text())["shards"]["already_complete"] == 3
