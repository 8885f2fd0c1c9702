"""The benchmark script runs and writes what it promises (its timings are its own business)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generation_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_generation.py"), "--mode", "cpu", "--configs", "stock,hired-20",
         "--batches", "1,auto", "--images", "2", "--new-tokens", "2", "--repeats", "1", "--loop-configs", "hired-20",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (report_path,) = tmp_path.glob("generation-cpu-*.json")
    report = json.loads(report_path.read_text())
    rows = {(r["config"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {("stock", "1"), ("hired-20", "1"), ("hired-20", "auto")}
    for r in rows.values():
        assert r["new_tokens"] == 2 * r["images"]  # exactly --new-tokens per image, EOS cannot cut it short
        assert r["tokens_per_s"] > 0 and r["ttft_ms"] > 0 and r["floor_ms_per_image"] > 0
    assert rows[("hired-20", "1")]["visual_tokens_llm"] == 576  # 20% of a 672x672 picture's 2880 grid tokens
    assert rows[("stock", "1")]["visual_tokens_llm"] == 2880 + 48
    assert report_path.with_suffix(".png").stat().st_size > 10_000
    assert "x base" in result.stdout
    (loops_path,) = tmp_path.glob("generation-loops-cpu-*.json")
    loops = {(r["config"], r["batch"], r["variant"]) for r in json.loads(loops_path.read_text())["results"]}
    assert loops == {("hired-20", batch, loop) for batch in ("1", "auto") for loop in ("generate", "dynamic", "static")}


def test_summary_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_summary.py"), "--rows", "300", "--small-rows", "30",
         "--files", "3", "--data", str(tmp_path / "data"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results_path,) = tmp_path.glob("summary-*-300-rows.json")
    results = json.loads(results_path.read_text())
    assert set(results["measured"]) == {"summary@30", "summary@300", "report@30", "report@300"}
    for figures in results["measured"].values():
        assert figures["wall_s"] > 0 and figures["peak_rss_mib"] > 10
    assert results["measured"]["summary@300"]["output_tail"].startswith("items 300  ok ")
    assert "summary peak RSS, 300 rows minus 30 rows" in result.stdout
