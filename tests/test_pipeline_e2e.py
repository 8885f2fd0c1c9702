"""The pipeline end to end: Parquet shards on a real S3 server -> Ray Data -> results on S3."""

import json
import logging
import math

import pyarrow.parquet as pq
import pytest
import s3fs

import hired
from hired.geometry import anyres_layout
from hired.tiny import LLAVA_NEXT_PINPOINTS
from pipeline.job.run import run_job
from pipeline.settings import JobSettings
from pipeline.columns import OUTPUT_SCHEMA, output_schema

from .data import encoded, truncated_jpeg, write_shard

SIZES = [(240, 320), (400, 200), (300, 900), (64, 64), (1, 400), (500, 500)]


def caption_rows(shard: int, count: int, bucket: str):
    rows = []
    for i in range(count):
        h, w = SIZES[(shard + i) % len(SIZES)]
        fmt = ["PNG", "JPEG", "WEBP"][(shard + i) % 3]
        rows.append({"id": f"s{shard}-{i:02d}", "image": encoded(h, w, fmt, seed=10 * shard + i),
                     "prompt": None if i % 2 else "describe the picture"})
    return rows


@pytest.fixture
def s3_input(bucket):
    """Three shards on S3: good pictures, a truncated JPEG, a row without an image, one fetched by URI."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{bucket}/pictures/by-uri.png".removeprefix("s3://"), encoded(200, 300, seed=99))
    shards = {s: caption_rows(s, 4, bucket) for s in range(3)}
    shards[1][1] = {"id": "s1-01", "image": truncated_jpeg()}
    shards[1][2] = {"id": "s1-02", "prompt": "no picture at all"}
    shards[2][3] = {"id": "s2-03", "image_uri": f"{bucket}/pictures/by-uri.png"}
    for s, rows in shards.items():
        write_shard(f"{bucket}/shards/part-{s}.parquet", rows, row_group_size=3)
    return f"{bucket}/shards", shards


def read_s3_table(uri):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with fs.open(uri.removeprefix("s3://"), "rb") as f:
        return pq.read_table(f)


def test_caption_job_on_s3(ray_local, s3_input, bucket, tiny_next_path, caplog, capsys):
    """Night 1 over three shards on S3; a rerun with nothing to do; then one shard re-exported (as
    many rows, other pictures and ids), one deleted, one added: night 2 with the same command redoes
    exactly the re-exported and the added shard, names the removed one, and counts the input's rows."""
    input_uri, shards = s3_input
    output_uri = f"{bucket}/captions"
    settings = JobSettings(task="caption", input=input_uri, output=output_uri, model=str(tiny_next_path),
                           num_gpus=0, batch_size=3, max_new_tokens=5)
    summary = run_job(settings)

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    files = sorted(p.rsplit("/", 1)[1] for p in fs.ls(output_uri.removeprefix("s3://")))
    assert files == ["_manifest.json", "_runs", "_summary.json", "part-0.parquet", "part-1.parquet", "part-2.parquet"]
    for s, rows in shards.items():
        table = read_s3_table(f"{output_uri}/part-{s}.parquet")
        assert table.schema.remove_metadata() == OUTPUT_SCHEMA
        out = table.to_pylist()
        assert [r["id"] for r in out] == [r["id"] for r in rows]  # one row per input row, in order
        assert [r["row_index"] for r in out] == list(range(len(rows)))
        assert all(r["source_shard"] == f"{input_uri}/part-{s}.parquet" for r in out)
        for r in out:
            assert r["run_id"] == summary["run_id"] and r["model"] == str(tiny_next_path)
            assert r["strategy"] == "hired" and r["budget_fraction"] == 0.2 and r["budget_tokens"] is None and r["alpha"] == 0.5 and r["device"] == "cpu"
            if r["error"] is not None:
                assert r["text"] is None and r["visual_tokens_kept"] is None
                continue
            assert isinstance(r["text"], str) and 1 <= r["generated_tokens"] <= 5
            assert r["ttft_ms"] > 0 and r["decode_ms"] >= 0 and r["tokens_per_s"] > 0
            assert 1 <= r["batch_size"] <= 3 and r["peak_gpu_mem_bytes"] is None
            assert r["prompt_tokens"] > r["visual_tokens_kept"]
    errors = {r["id"]: r["error"] for s in shards for r in read_s3_table(f"{output_uri}/part-{s}.parquet").to_pylist()}
    assert errors["s1-01"].startswith("undecodable image")
    assert errors["s1-02"] == "missing field: neither image nor image_uri is set"
    assert errors["s2-03"] is None  # fetched from S3 by its URI
    assert sum(e is not None for e in errors.values()) == 2

    # Token counts: exactly floor(0.2 N), N from the model's own geometry.
    by_id = {r["id"]: r for s in shards for r in read_s3_table(f"{output_uri}/part-{s}.parquet").to_pylist()}
    for s, rows in shards.items():
        for i, row in enumerate(rows):
            if "image" in row and row["id"] not in ("s1-01",):
                h, w = SIZES[(s + i) % len(SIZES)]
                n = anyres_layout((h, w), LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens
                assert by_id[row["id"]]["visual_tokens_full"] == n
                assert by_id[row["id"]]["visual_tokens_kept"] == math.floor(0.2 * n)

    saved = json.loads(fs.cat(f"{output_uri}/_summary.json".removeprefix("s3://")))
    assert saved["items"] == 12 and saved["errors"] == 2 and saved["ok"] == 10
    assert saved["errors_by_reason"] == {"undecodable image": 1, "missing field": 1}
    assert saved["shards"] == {"total": 3, "written_this_run": 3, "already_complete": 0, "failed": 0}
    assert saved["this_run"]["rows_processed"] == 12 and saved["this_run"]["images_per_s"] > 0
    assert 0.19 < saved["kept_fraction"] <= 0.2
    runs = fs.ls(f"{output_uri}/_runs".removeprefix("s3://"))
    assert [p.rsplit("/", 1)[1] for p in runs] == [f"{summary['run_id']}.json"]

    # A rerun of the same command finds everything complete and writes nothing.
    again = run_job(JobSettings(task="caption", input=input_uri, output=output_uri, model=str(tiny_next_path),
                                num_gpus=0, batch_size=3, max_new_tokens=5))
    assert again["shards"] == {"total": 3, "written_this_run": 0, "already_complete": 3, "failed": 0}
    assert again["items"] == 12 and again["this_run"]["rows_processed"] == 0
    table = read_s3_table(f"{output_uri}/part-0.parquet")
    assert set(table.column("run_id").to_pylist()) == {summary["run_id"]}

    reexported = [dict(row, id=f"new-{i}") for i, row in enumerate(caption_rows(5, 4, bucket))]
    write_shard(f"{input_uri}/part-1.parquet", reexported, row_group_size=3)
    fs.rm(f"{input_uri}/part-2.parquet".removeprefix("s3://"))
    write_shard(f"{input_uri}/part-3.parquet", caption_rows(3, 3, bucket))
    with caplog.at_level(logging.INFO, logger="hired.pipeline"):
        night2 = run_job(settings)
    assert night2["shards"] == {"total": 3, "written_this_run": 2, "already_complete": 1, "failed": 0}
    assert night2["this_run"]["rows_processed"] == 7
    assert night2["input_changes"] == {"redone_shards": 1, "redone_examples": ["part-1"], "new_shards": 1,
                                       "removed_results": 1, "removed_examples": ["part-2"], "moved_to": None}
    assert "1 shard(s) redone (changed since its output was written): part-1" in caplog.text
    assert "1 result file(s) have no shard in the input any more (removed since they were written): part-2.parquet" in caplog.text
    assert night2["items"] == 11 and night2["left_out_results"]["count"] == 1  # 4 + 4 + 3: the input as it is
    assert read_s3_table(f"{output_uri}/part-1.parquet").column("id").to_pylist() == [f"new-{i}" for i in range(4)]
    assert set(read_s3_table(f"{output_uri}/part-0.parquet").column("run_id").to_pylist()) == {summary["run_id"]}
    assert fs.exists(f"{output_uri}/part-2.parquet".removeprefix("s3://"))  # kept: --prune sets it aside
    fs.invalidate_cache()
    record = json.loads(fs.cat_file(f"{output_uri}/_runs/{night2['run_id']}.json".removeprefix("s3://")))
    assert record["state"] == "finished" and record["progress"]["rows_generated"] == 7
    assert (record["progress"]["shards_written"], record["progress"]["shards_to_write"]) == (2, 2)
    assert "progress: 2/2 shards written (1 already complete), 7/7 rows (100%)" in caplog.text
    from pipeline import cli

    capsys.readouterr()
    assert cli.main(["summary", output_uri, "--json"]) == 0
    offline = json.loads(capsys.readouterr().out)
    assert offline["items"] == 11 and offline["left_out_results"] == night2["left_out_results"]


def test_vqa_job_scores_answers(ray_local, bucket, tiny_next_path, monkeypatch):
    rows = [
        {"id": "q0", "image": encoded(100, 120, seed=1), "question": "is it red?", "answers": ["yes"] * 10},
        {"id": "q1", "image": encoded(100, 120, seed=2), "question": "how many?", "answers": []},
        {"id": "q2", "image": truncated_jpeg(), "question": "what?", "answers": ["cat"] * 10},
        {"id": "q3", "image": encoded(90, 60, seed=3), "question": None, "answers": ["dog"]},
    ]
    write_shard(f"{bucket}/vqa/in.parquet", rows)
    summary = run_job(JobSettings(task="vqa", input=f"{bucket}/vqa", output=f"{bucket}/vqa-out",
                                  model=str(tiny_next_path), num_gpus=0, max_new_tokens=3))
    table = read_s3_table(f"{bucket}/vqa-out/in.parquet")
    assert table.schema.remove_metadata() == output_schema("vqa")
    out = {r["id"]: r for r in table.to_pylist()}
    assert out["q0"]["error"] is None and out["q0"]["question"] == "is it red?"
    assert out["q0"]["vqa_accuracy"] in (0.0, 1.0) and out["q0"]["exact_match"] == (out["q0"]["vqa_accuracy"] == 1.0)
    assert out["q1"]["vqa_accuracy"] is None  # no references: not scorable
    assert out["q2"]["error"].startswith("undecodable image") and out["q2"]["vqa_accuracy"] is None
    assert out["q3"]["error"] == "missing field: the VQA row has no question"
    assert summary["vqa"]["scored"] == 1 and summary["vqa"]["accuracy"] == out["q0"]["vqa_accuracy"]


def test_other_settings_are_not_mixed_into_an_output(ray_local, bucket, tiny_next_path):
    """An output made at HiRED-20% refuses a run without HiRED; with --overwrite that run redoes it,
    at the stock token count."""
    from pipeline.errors import InputError

    write_shard(f"{bucket}/in/a.parquet", caption_rows(0, 3, bucket))
    common = dict(task="caption", input=f"{bucket}/in", output=f"{bucket}/out", model=str(tiny_next_path),
                  num_gpus=0, max_new_tokens=3)
    run_job(JobSettings(**common))
    assert {r["budget_fraction"] for r in read_s3_table(f"{bucket}/out/a.parquet").to_pylist()} == {0.2}
    with pytest.raises(InputError, match="hired differ"):
        run_job(JobSettings(**common, config=None))
    redone = run_job(JobSettings(**common, config=None, overwrite=True))
    assert redone["shards"]["written_this_run"] == 1
    rows = read_s3_table(f"{bucket}/out/a.parquet").to_pylist()
    assert [r["visual_tokens_kept"] for r in rows] == [r["visual_tokens_full"] for r in rows]
    assert {r["strategy"] for r in rows} == {"none"} and {(r["budget_fraction"], r["budget_tokens"]) for r in rows} == {(None, None)}
    assert redone["kept_fraction"] == 1.0
