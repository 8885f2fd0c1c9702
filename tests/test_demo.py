"""The README's main command: `python jobs/caption.py` with no arguments runs the built-in demo."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_quietly_and_resumes(tmp_path):
    """The demo as a user runs it: Ray's token auth left on, HOME and the temp dir private to the
    test, so anything written outside the working directory and the temp dir shows."""
    home = tmp_path / "home"
    home.mkdir()
    # Short: Ray's socket paths under the temp dir must stay within AF_UNIX's 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="demo-"))
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", HOME=str(home), TMPDIR=str(temp))
    for key in ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)  # a local demo, whatever the test session set up
    env.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))  # the real one: not HOME's
    work = tmp_path / "work"
    work.mkdir()
    try:
        first = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py")], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert first.returncode == 0, first.stderr[-3000:]
    noisy = [line for line in first.stderr.splitlines() if " ERROR " in line or line.startswith("[") and " E " in line]
    # Ray's core worker logs one known line at error level for every actor pool whose constructor
    # arguments live in the object store (ray-project/ray#53727): Ray Data's own doing, harmless here.
    noisy = [line for line in noisy if "issues/53727" not in line]
    assert noisy == [], noisy
    assert not list(home.rglob("*")), f"written outside the output and temp dir: {list(home.rglob('*'))}"
    output = work / "demo_output" / "caption"
    assert f"output in {output}" in first.stdout
    assert "items 24  ok 23  errors 1  (undecodable image: 1)" in first.stdout
    rows = [r for p in sorted(output.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert [r["id"] for r in rows if r["error"]] == ["demo-0012"]
    assert all(r["visual_tokens_kept"] == r["visual_tokens_full"] // 5 for r in rows if not r["error"])
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["items"] == 24 and summary["shards"]["written_this_run"] == 3

    again = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py")], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert json.loads((output / "_summary.json").read_text())["shards"]["already_complete"] == 3
