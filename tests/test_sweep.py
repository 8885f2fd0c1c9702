"""`jobs/vqa.py --strategy A,B --budget x,y`: every setting into its own folder, one table comparing them."""

import json
import math

import pyarrow.parquet as pq
import pytest

import pipeline.cli
from pipeline.job.sweep import sweep_points

from .data import encoded, write_shard


def test_sweep_points():
    names = [p.name for p in sweep_points(["hired", "uniform", "none"], [0.1, 640], 0.5)]
    assert names == ["hired-0.1", "hired-640", "uniform-0.1", "uniform-640", "none"]
    with pytest.raises(ValueError, match="budget"):
        sweep_points(["hired"], [1.5], 0.5)


def test_vqa_sweep(ray_local, tmp_path, tiny_next_path, capsys):
    sizes = [(480, 640), (300, 900), (336, 336)]
    write_shard(str(tmp_path / "in" / "q.parquet"), [
        {"id": f"q{i}", "image": encoded(h, w, seed=i), "question": "is it red?", "answers": ["yes"] * 7 + ["no"] * 3}
        for i, (h, w) in enumerate(sizes)
    ])
    out = tmp_path / "sweep"
    argv = ["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(tiny_next_path), "--num-gpus", "0",
            "--max-new-tokens", "2", "--strategy", "hired", "--budget", "0.1,0.4"]  # with none too: test_benchmark_jobs
    assert pipeline.cli.main(["vqa", *argv]) == 0
    printed = capsys.readouterr().out
    names = ["hired-0.1", "hired-0.4"]
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0].startswith("| setting | VQA acc % | exact % | kept tokens | of |")
    assert [line.split("|")[1].strip() for line in table[2:]] == names
    assert "\n".join(table) in printed

    summaries = json.loads((out / "sweep.json").read_text())
    assert [s["sweep_point"]["name"] for s in summaries] == names
    from hired.geometry import anyres_layout
    from hired.tiny import LLAVA_NEXT_PINPOINTS

    full = [anyres_layout(size, LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens for size in sizes]
    for summary in summaries:
        point = summary["sweep_point"]
        rows = pq.read_table(out / point["name"] / "q.parquet").to_pylist()
        assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
        assert {r["strategy"] for r in rows} == {point["strategy"]}
        assert [r["visual_tokens_kept"] for r in rows] == [math.floor(point["budget"] * n) for n in full]
        assert {(r["budget_fraction"], r["budget_tokens"]) for r in rows} == {(point["budget"], None)}
        assert all(r["vqa_accuracy"] in (0.0, 1.0) for r in rows)  # 7 of 10 said yes: 1.0 or 0.0 (a wrong answer)
        assert summary["vqa"]["scored"] == 3 and summary["items"] == 3

    # A rerun resumes every setting: nothing is redone.
    assert pipeline.cli.main(["vqa", *argv]) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert all(s["shards"]["already_complete"] == 1 and s["shards"]["written_this_run"] == 0 for s in again)
