"""Shard discovery, early input errors, completeness of outputs, atomic writes."""

import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.columns import OUTPUT_SCHEMA
from pipeline.errors import InputError
from pipeline.io.location import Location
from pipeline.io.outputs import Outputs

from .data import encoded, plan_input as inspect_shards, write_shard


def outputs_at(path) -> Outputs:
    return Outputs(Location.resolve(str(path)))

ROWS = [{"id": f"r{i}", "image": encoded(20, 30, seed=i)} for i in range(5)]


def test_lists_shards_recursively_in_order(tmp_path):
    for name in ["b.parquet", "a.parquet", "sub/c.parquet"]:
        write_shard(str(tmp_path / name), ROWS)
    (tmp_path / "notes.txt").write_text("not a shard")
    (tmp_path / "_SUCCESS.parquet").write_text("marker")
    shards, failed = inspect_shards(str(tmp_path), "caption")
    assert [s.uri.rsplit("/", 1)[1] for s in shards] == ["a.parquet", "b.parquet", "c.parquet"]
    assert all(s.uri.startswith("file://") for s in shards)
    assert [s.name for s in shards] == ["a", "b", "sub__c"] and not failed


def test_a_single_file_is_an_input(tmp_path):
    write_shard(str(tmp_path / "one.parquet"), ROWS, row_group_size=2)
    shards, _ = inspect_shards(f"file://{tmp_path}/one.parquet", "caption")
    assert len(shards) == 1 and shards[0].num_rows == 5 and shards[0].plan == (2, 2, 1)


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="holds no .parquet shards"):
        inspect_shards(str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        inspect_shards(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "schema, task, message",
    [
        (pa.schema([("id", pa.string()), ("prompt", pa.string())]), "caption", "neither 'image' nor 'image_uri'"),
        (pa.schema([("id", pa.string()), ("image", pa.int32())]), "caption",
         r"column 'image' has type int32; the image column \(--image-column\)"),
        (pa.schema([("id", pa.float64()), ("image", pa.binary())]), "caption",
         r"column 'id' has type double; the id column \(--id-column\)"),
        (pa.schema([("id", pa.string()), ("image", pa.binary())]), "vqa", "no 'question' column"),
    ],
)
def test_schema_mismatch_is_refused_before_any_model_loads(tmp_path, schema, task, message):
    write_shard(str(tmp_path / "good.parquet"), ROWS)
    pq.write_table(pa.Table.from_pylist([], schema=schema), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=message):
        inspect_shards(str(tmp_path), task)


def test_corrupt_shard_is_reported_and_the_others_go_on(tmp_path):
    write_shard(str(tmp_path / "good.parquet"), ROWS)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    shards, failed = inspect_shards(str(tmp_path), "caption")
    assert [s.name for s in shards] == ["good"]
    assert len(failed) == 1 and failed[0].uri.endswith("broken.parquet")
    assert "unreadable Parquet file" in failed[0].reason


def results_for(shard):
    rows = [{"id": f"r{i}", "text": "x", "source_shard": shard.uri, "row_index": i} for i in range(shard.num_rows)]
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)


def test_outputs_are_complete_or_absent(tmp_path):
    write_shard(str(tmp_path / "in" / "s.parquet"), ROWS)
    (shard,), _ = inspect_shards(str(tmp_path / "in"), "caption")
    out = outputs_at(tmp_path / "out")
    settings = {"model": "m", "budget": 0.2}
    assert not out.is_complete(shard, settings) and out.held() == {}
    written = out.write(shard, results_for(shard), settings)
    assert written.endswith("/out/s.parquet")
    assert out.is_complete(shard, settings) and list(out.held()) == ["s.parquet"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s.parquet"]  # no temporary files left
    # Other settings: refuse rather than mix results made differently.
    with pytest.raises(InputError, match="budget differ"):
        out.is_complete(shard, {"model": "m", "budget": 0.4})
    # A truncated output (e.g. copied by hand) is not complete.
    path = out.file_of(shard).path
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert not out.is_complete(shard, settings)


def test_a_partial_result_is_never_written(tmp_path):
    write_shard(str(tmp_path / "in" / "s.parquet"), ROWS)
    (shard,), _ = inspect_shards(str(tmp_path / "in"), "caption")
    with pytest.raises(AssertionError, match="4 results for 5 rows"):
        outputs_at(tmp_path / "out").write(shard, results_for(shard).slice(0, 4), {})
    assert not (tmp_path / "out" / "s.parquet").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_output_is_refused(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(InputError, match="cannot write to the output"):
        outputs_at(out).check_writable()


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".part-1.0a1b.tmp").write_bytes(b"half a parquet file")
    (tmp_path / "part-2.parquet").write_bytes(b"kept")
    (tmp_path / "notes.tmp").write_bytes(b"not ours: kept")
    assert outputs_at(tmp_path).remove_stale_temporaries() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "part-2.parquet"]
    assert outputs_at(tmp_path / "missing").remove_stale_temporaries() == 0
