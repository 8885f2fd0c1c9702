"""The driver's collector: one output row per input row whatever Ray delivers (retried blocks,
shards mixed in a block, any order, columns typed as Ray typed them), each shard written once,
in input order."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.columns import output_schema
from pipeline.io.outputs import Outputs
from pipeline.io.shard import Shard
from pipeline.job.collect import NO_RESULT, ShardCollector
from pipeline.settings import JobSettings


def shard(name: str, rows: int) -> Shard:
    return Shard(uri=f"s3://in/{name}.parquet", name=name, num_rows=rows, format="parquet", path=f"in/{name}.parquet",
                 plan=(rows,))


def block(s: Shard, indices, text=lambda i: f"caption {i}", **columns) -> pa.Table:
    """Result rows as Ray hands them: types inferred from Python values (int64, double, null)."""
    indices = list(indices)
    data = {
        "id": [f"{s.name}-{i}" for i in indices],
        "text": [text(i) for i in indices],
        "error_kind": [None] * len(indices),
        "error_detail": [None] * len(indices),
        "generated_tokens": [3] * len(indices),
        "ttft_ms": [1.5] * len(indices),
        "source_shard": [s.uri] * len(indices),
        "row_index": indices,
    }
    data.update({k: v(indices) if callable(v) else v for k, v in columns.items()})
    return pa.table(data)


@pytest.fixture
def writes(monkeypatch):
    """Every shard written (its name), besides writing."""
    calls = []
    real = Outputs.write

    def counting(outputs, s, table, settings):
        calls.append(s.name)
        return real(outputs, s, table, settings)

    monkeypatch.setattr(Outputs, "write", counting)
    return calls


def settings(tmp_path, task="caption") -> JobSettings:
    return JobSettings(task=task, input="s3://in", output=str(tmp_path / "out"), model="m")


def read(tmp_path, name):
    return pq.read_table(tmp_path / "out" / f"{name}.parquet")


def test_retried_blocks_give_exactly_one_row_per_input_row_in_order(tmp_path, writes):
    a, b, c = shard("a", 100), shard("b", 37), shard("c", 5)
    collector = ShardCollector([a, b, c], settings(tmp_path))
    first_try = block(a, range(40, 60))
    blocks = [
        block(a, range(60, 100)),
        first_try,
        block(a, range(40, 60), text=lambda i: "retried"),  # Ray retried the batch: the first result stays
        pa.concat_tables([block(b, range(0, 20)), block(c, range(0, 3))]),  # two shards in one block
        block(b, [20, 21, 21, 22]),  # a row twice in one block
        block(a, range(0, 40)),  # completes a
        block(a, range(10, 30)),  # a retry arriving after a was written
        block(b, range(23, 37)),  # completes b
        block(c, [4, 3]),  # out of order; completes c
    ]
    for piece in blocks:
        collector.add(piece)

    assert sorted(writes) == ["a", "b", "c"]  # each shard written exactly once
    assert collector.incomplete() == []
    assert collector.processed == 142 and collector.generated_tokens == 3 * 142  # duplicates not counted
    for s in (a, b, c):
        table = read(tmp_path, s.name)
        assert table.schema.remove_metadata() == output_schema("caption")
        assert table.column("row_index").to_pylist() == list(range(s.num_rows))
        assert table.column("id").to_pylist() == [f"{s.name}-{i}" for i in range(s.num_rows)]
    assert set(read(tmp_path, "a").column("text").to_pylist()[40:60]) == {f"caption {i}" for i in range(40, 60)}


def test_a_row_without_text_or_error_becomes_an_internal_error(tmp_path, writes):
    s = shard("s", 4)
    collector = ShardCollector([s], settings(tmp_path))
    collector.add(block(s, range(4), text=lambda i: None if i == 2 else "ok",
                        error_kind=lambda ix: ["undecodable image" if i == 0 else None for i in ix],
                        error_detail=lambda ix: ["x" if i == 0 else None for i in ix]))
    rows = read(tmp_path, "s").to_pylist()
    assert [r["error"] for r in rows] == ["undecodable image: x", None, NO_RESULT.text, None]
    assert [r["error_kind"] for r in rows] == ["undecodable image", None, "internal", None]
    assert [r["text"] for r in rows] == ["ok", "ok", None, "ok"]


def test_columns_typed_by_ray_are_conformed_to_the_output_schema(tmp_path, writes):
    """Null-typed columns (a block of all nulls), NaN for null (a numpy stage), int64 counts, and
    columns a block lacks all end as the output schema's types with nulls where nothing was."""
    s = shard("s", 6)
    collector = ShardCollector([s], settings(tmp_path))
    collector.add(block(s, range(0, 3), ttft_ms=[float("nan"), 2.0, 3.0], peak_gpu_mem_bytes=pa.nulls(3),
                        visual_tokens_kept=[576, 576, 576]))
    collector.add(block(s, range(3, 6), text=lambda i: None, error_kind=["internal"] * 3, error_detail=pa.nulls(3),
                        ttft_ms=pa.nulls(3),
                        generated_tokens=[float("nan")] * 3, peak_gpu_mem_bytes=[1.0e9, float("nan"), 2.0e9]))
    table = read(tmp_path, "s")
    assert table.schema.remove_metadata() == output_schema("caption")
    rows = table.to_pylist()
    assert [r["ttft_ms"] for r in rows] == [None, 2.0, 3.0, None, None, None]
    assert [r["generated_tokens"] for r in rows] == [3, 3, 3, None, None, None]
    assert [r["peak_gpu_mem_bytes"] for r in rows] == [None, None, None, 10**9, None, 2 * 10**9]
    assert [r["visual_tokens_kept"] for r in rows] == [576, 576, 576, None, None, None]
    assert all(r["model"] is None for r in rows)  # a column no block had
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())
    assert collector.generated_tokens == 9


def test_vqa_columns_are_kept(tmp_path, writes):
    s = shard("q", 2)
    collector = ShardCollector([s], settings(tmp_path, "vqa"))
    collector.add(block(s, range(2), question=["what?", "where?"], answers=[["a", "b"], None],
                        vqa_accuracy=[1.0, float("nan")], exact_match=[True, None]))
    table = read(tmp_path, "q")
    assert table.schema.remove_metadata() == output_schema("vqa")
    assert table.column("answers").to_pylist() == [["a", "b"], None]
    assert table.column("vqa_accuracy").to_pylist() == [1.0, None]


def test_incomplete_shards_are_reported_and_not_written(tmp_path, writes):
    s, empty = shard("s", 10), shard("empty", 0)
    collector = ShardCollector([s, empty], settings(tmp_path))
    collector.flush(empty.uri)  # what the run does with a shard without rows
    collector.add(block(s, range(7)))
    collector.add(block(s, range(5)))
    collector.add(block(shard("other", 3), range(3)))  # rows of a shard this run does not hold: dropped
    assert writes == ["empty"] and read(tmp_path, "empty").num_rows == 0
    (failure,) = collector.incomplete()
    assert failure.uri == s.uri and failure.reason == "incomplete: 7 of 10 rows came back"
    assert collector.processed == 7


def test_driver_benchmark_runs(tmp_path):
    """The benchmark feeds and writes every shard (its timings are its own business)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_driver.py"
    result = subprocess.run([sys.executable, str(script), "--rows", "3000", "--min-shard", "200", "--max-shard", "500",
                             "--baseline", "", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "driver-local-blocks-8-64.json").read_text())
    assert report["rows"] >= 3000 and report["shards"] >= 6 and report["rows_per_s"]["columnar"] > 0
