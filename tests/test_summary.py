"""The run summary from aggregates: the same numbers as counting every row in Python, file by
file; error reasons grouped by their fixed kind; `python -m pipeline.summary` on a location."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import pyarrow.parquet as pq

from pipeline.io.images import decode_image
from pipeline.io.location import Location
from pipeline.row_errors import ErrorKind, RowFailed
from pipeline.stages.preprocess import Preprocessor
from pipeline.summary import summarize, summarize_output as summarize_location
from pipeline.tally import DuplicateIds


from .test_faults import png_header_only
from .test_report import result_row, write_result_shards


def summarize_output(uri, **run):
    return summarize_location(Location.resolve(str(uri)), **run)


def read_outputs(uri) -> pa.Table:
    return pq.read_table(str(uri))

REPO = Path(__file__).resolve().parent.parent
RUN = dict(processed_rows=7, processed_generated_tokens=70, wall_s=3.5, extra={"run_id": "r"})


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def row_by_row(table: pa.Table) -> dict:
    """The summary's numbers as the pipeline computed them before: every row as a Python dict."""
    rows = table.to_pylist()
    ok = [r for r in rows if r["error"] is None]
    ids = collections.Counter(r["id"] for r in rows)
    duplicates = sorted(i for i, count in ids.items() if count > 1)
    peak = [r["peak_gpu_mem_bytes"] for r in ok if r.get("peak_gpu_mem_bytes") is not None]
    kept, full = _mean([r["visual_tokens_kept"] for r in ok]), _mean([r["visual_tokens_full"] for r in ok])
    expected = {
        "items": len(rows), "ok": len(ok), "errors": len(rows) - len(ok),
        "duplicate_ids": len(duplicates), "duplicate_id_examples": duplicates[:20],
        "mean_visual_tokens_kept": kept, "mean_visual_tokens_full": full,
        "kept_fraction": kept / full if kept is not None and full else None,
        "mean_generated_tokens": _mean([r["generated_tokens"] for r in ok]),
        "mean_ttft_ms": _mean([r["ttft_ms"] for r in ok]),
        "mean_tokens_per_s_per_item": _mean([r["tokens_per_s"] for r in ok]),
        "peak_gpu_mem_bytes": max(peak) if peak else None,
    }
    if rows and "vqa_accuracy" in rows[0]:
        scored = [r for r in ok if r["vqa_accuracy"] is not None]
        expected["vqa"] = {"scored": len(scored), "accuracy": _mean([r["vqa_accuracy"] for r in scored]),
                           "exact_match": _mean([float(r["exact_match"]) for r in scored])}
    return expected


def varied_rows(count: int, shards: int, *, vqa: bool = False, seed: int = 0) -> dict[str, list[dict]]:
    """Rows with errors, duplicates across shards, a NaN, GPU memory and awkward float times."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        error = ("undecodable image: x" if i % 11 == 3 else "missing field: no image" if i % 13 == 5 else None)
        row = result_row(i, shard=f"/in/s{i % shards}.parquet", gpu=i % 2 == 0, error=error, vqa=vqa)
        if error is None:
            row["ttft_ms"] = float(rng.uniform(1, 1000))
            row["tokens_per_s"] = float(rng.uniform(0.1, 50))
        rows.append(row)
    rows[8]["tokens_per_s"] = float("nan")  # a NaN is skipped by the mean, like a null
    for i in (40, 41, 77):
        rows[i]["id"] = rows[i - 30]["id"]  # duplicates in another shard
    by_shard = collections.defaultdict(list)
    for row in rows:
        by_shard[row["source_shard"].split("/")[-1].removesuffix(".parquet")].append(row)
    return dict(by_shard)


@pytest.mark.parametrize("vqa", [False, True])
def test_the_numbers_are_the_row_by_row_ones(tmp_path, vqa):
    uri = write_result_shards(tmp_path / "out", varied_rows(120, 7, vqa=vqa), task="vqa" if vqa else "caption")
    summary = summarize_output(uri, **RUN)
    expected = row_by_row(read_outputs(uri))
    assert {k: summary[k] for k in expected} == expected  # ==, not approx: the same floats, bit for bit
    assert summary["errors_by_reason"] == {"undecodable image": 11, "missing field": 9}
    assert summary["duplicate_ids"] == 3 and summary["duplicate_id_examples"] == ["item-010", "item-011", "item-047"]
    assert summary["run_id"] == "r" and summary["this_run"]["images_per_s"] == 2.0
    assert ("vqa" in summary) is vqa
    # The same code over one in-memory table gives the same summary.
    assert summarize(read_outputs(uri), **RUN) == summary


def test_an_output_of_nothing_but_errors(tmp_path):
    uri = write_result_shards(tmp_path / "out", {"a": [result_row(i, shard="/in/a", error="empty image: e")
                                                       for i in range(5)]})
    summary = summarize_output(uri, **RUN)
    assert (summary["items"], summary["ok"], summary["errors"]) == (5, 0, 5)
    assert summary["mean_ttft_ms"] is None and summary["kept_fraction"] is None and summary["peak_gpu_mem_bytes"] is None
    assert summarize_output(str(tmp_path / "nothing-here"), **RUN)["items"] == 0


def test_duplicates_are_exact_across_buckets(tmp_path):
    ids = DuplicateIds(str(tmp_path), buckets=4)
    for part in range(10):
        ids.add(pa.array([f"id-{part * 1000 + i}" for i in range(1000)] + [None]))
    ids.add(pa.array(["id-5", "id-999", "id-999", "id-9999", None, None]))
    assert ids.result(examples=3) == (3, ["id-5", "id-999", "id-9999"])
    assert list(tmp_path.iterdir()) == []  # the spill files are gone


def test_a_shard_of_dead_links_is_one_group(tmp_path):
    reader = Preprocessor.__new__(Preprocessor)  # image_bytes needs no processor
    reader.retry = Location.resolve(str(tmp_path)).retry
    errors = []
    for i in range(300):
        with pytest.raises(RowFailed) as failure:
            reader.image_bytes(None, f"file://{tmp_path}/gone/picture-{i}.jpg")
        errors.append(failure.value.error)
    assert all(e.kind is ErrorKind.CANNOT_FETCH_IMAGE and f"picture-{i}.jpg" in e.detail for i, e in enumerate(errors))
    rows = [result_row(i, shard="/in/links", error=e.text) for i, e in enumerate(errors)]
    uri = write_result_shards(tmp_path / "out", {"links": rows})
    summary = summarize_output(uri, **RUN)
    assert summary["errors_by_reason"] == {"cannot fetch image_uri": 300}


def test_the_stages_errors_are_typed(tmp_path):
    """Each way a row can fail, raised by the stages' own code, carries a kind of the closed set, and
    its text is that kind, then the detail."""
    errors = []
    for data in (b"", b"\x00garbage" * 30, png_header_only(20_000, 20_000)):
        with pytest.raises(RowFailed) as failure:
            decode_image(data, max_pixels=1_000_000)
        errors.append(failure.value.error)
    reader = Preprocessor.__new__(Preprocessor)
    reader.task, reader.retry = "vqa", Location.resolve(str(tmp_path)).retry
    for call in (lambda: reader.image_bytes(None, None), lambda: reader.image_bytes(None, f"{tmp_path}/nope.png"),
                 lambda: reader.prompt_text(None, " ")):
        with pytest.raises(RowFailed) as failure:
            call()
        errors.append(failure.value.error)
    assert [e.kind.value for e in errors] == ["empty image", "undecodable image", "image too large", "missing field",
                                              "cannot fetch image_uri", "missing field"]
    assert all(e.text == f"{e.kind.value}: {e.detail}" and e.detail for e in errors)


def run_cli(*args: str) -> subprocess.CompletedProcess:  # python -m pipeline.summary is hired summary
    return subprocess.run([sys.executable, "-m", "pipeline.summary", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_command_line(tmp_path):
    uri = write_result_shards(tmp_path / "out", varied_rows(90, 3))
    done = run_cli(f"file://{uri}", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    expected = summarize_output(uri, **RUN)
    assert printed == {k: v for k, v in expected.items() if k not in ("this_run", "run_id")} | {"output": f"file://{uri}"}

    lines = run_cli(uri)
    assert lines.returncode == 0 and lines.stdout.startswith(f"items 90  ok {expected['ok']}  errors")
    assert "this run" not in lines.stdout  # only a job knows its wall time

    missing = run_cli(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
