"""bench/device_probe.py --smoke: every phase runs and lands in the JSON, on a toy model on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_probe_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "device_probe.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "device_probe.json").read_text())
    assert report["phases_done"] == ["env", "ceilings", "build", "runs", "summary"]
    assert report["ceilings"]["matmul_flops_per_s"] > 0 and report["build"]["weights_bytes"] > 0
    runs = {(r["config"], r["batch"]): r for r in report["runs"]}
    assert set(runs) == {(c, b) for c in ("full", "hired-20") for b in (1, 2, 4)}
    for (config, batch), run in runs.items():
        assert run["prompt_tokens"] > run["visual_tokens_llm"] > 0
        for loop in ("dynamic", "static"):
            measured = run["loops"][loop]
            assert measured["steps"] == 4 and measured["step_ms"] > 0 and measured["rows_computed"] == batch
        assert "skipped" in run["loops"]["static-compiled"]
    assert runs[("hired-20", 1)]["visual_tokens_llm"] < runs[("full", 1)]["visual_tokens_llm"]
    assert {(s["config"], s["batch"]) for s in report["summary"]} == set(runs)
    assert "of floor" in done.stdout and "hired-20" in done.stdout
