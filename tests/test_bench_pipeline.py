"""The pipeline benchmark runs and writes what it promises; the generation actor's CPU threads.

Timings are the benchmark's business: nothing here checks a speed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.settings import JobSettings
from pipeline.stages.generate import Predictor, cpu_threads

REPO = Path(__file__).resolve().parent.parent


def test_cpu_threads_default_to_every_usable_core():
    assert cpu_threads(None) == len(os.sched_getaffinity(0))
    assert cpu_threads(3) == 3


@pytest.mark.parametrize("configured, expected", [(None, len(os.sched_getaffinity(0))), ("2", 2), ("1", 1)])
def test_cpu_predictor_undoes_rays_one_thread(tiny_next_path, configured, expected):
    # Ray starts a num_cpus=0.5 actor with OMP_NUM_THREADS=1; the CPU predictor takes every core
    # unless HIRED_CPU_THREADS says otherwise.
    from pipeline.settings import environment_settings

    before = torch.get_num_threads()
    knobs = environment_settings({} if configured is None else {"HIRED_CPU_THREADS": configured})
    torch.set_num_threads(1 if expected > 1 else 2)
    try:
        Predictor(JobSettings(model=str(tiny_next_path), dtype="float32", **knobs), device="cpu")
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # two small Ray jobs on a private Ray: about half a minute on 2 cores
def test_pipeline_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_pipeline.py"), "--rows", "4", "--shard-rows", "1",
         "--new-tokens", "2", "--repeats", "1", "--variants", "one-thread:HIRED_CPU_THREADS=1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (report_path,) = tmp_path.glob("pipeline-cpu-*.json")
    report = json.loads(report_path.read_text())
    assert set(report["variants"]) == {"one-thread"}
    (repeat,) = report["repeats"]
    for name, variant in repeat["variants"].items():
        bare = variant["bare"]  # the bare runs just before and just after the variant's jobs, as one
        assert bare["rows"] == 8 and bare["errors"] == 0 and bare["before_images_per_s"] > 0 and bare["after_images_per_s"] > 0
        assert variant["small_job"]["rows"] == 2 and variant["large_job"]["rows"] == 4
        assert variant["large_job"]["shards"] == 4 and variant["large_job"]["errors"] == 0
        assert report["variants"][name]["same_generated_tokens_as_bare"], name  # same rows, same model, same tokens
    assert "of bare" in result.stdout and "steady state (difference)" in result.stdout
