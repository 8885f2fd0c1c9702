"""Parallel planning gives what the one-by-one loop gave: the same to-do / done / failed split,
the same errors (the first in input order, input errors before output errors)."""

import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.columns import OUTPUT_SCHEMA
from pipeline.errors import InputError, StorageUnavailable
from pipeline.io.formats import parquet as parquet_format
from pipeline.io.formats.parquet import FOOTER_READ_BYTES, inspect_shard, read_footer
from pipeline.io.location import Location, in_threads
from pipeline.io.outputs import Outputs
from pipeline.io.shard import Shard
from pipeline.job.plan import plan
from pipeline.settings import JobSettings

from .data import encoded, write_shard

SHARDS = 60
ROWS = [{"id": f"r{i}", "image": encoded(8, 8, seed=i)} for i in range(3)]


def settings_for(root: str, **overrides) -> JobSettings:
    return JobSettings(**{"task": "caption", "input": f"{root}/in", "output": f"{root}/out", "model": "m", **overrides})


def input_shard(root: str, name: str, stem: str, rows: int = len(ROWS), groups=(2, 1)) -> Shard:
    """The shard as planning finds it (its fingerprint included), or, with other ``rows``, one made up."""
    where = Location.resolve(f"{root}/in/{name}.parquet")
    if rows == len(ROWS):
        info = where.fs.info(where.path)
        planned = inspect_shard(where, stem, JobSettings(), size=info["size"], info=info)
        if isinstance(planned, Shard):
            return planned
    return Shard(uri=where.uri, name=stem, num_rows=rows, format="parquet", path=where.path, plan=groups)


def write_output(root: str, shard: Shard, table: pa.Table, settings: dict) -> None:
    Outputs(Location.resolve(f"{root}/out")).write(shard, table, settings)


def results_for(shard: Shard, rows: int | None = None) -> pa.Table:
    rows = shard.num_rows if rows is None else rows
    return pa.Table.from_pylist([{"id": f"r{i}", "text": "x", "source_shard": shard.uri, "row_index": i}
                                 for i in range(rows)], schema=OUTPUT_SCHEMA)


def build(root: str, shards: int = SHARDS) -> dict:
    """``shards`` input shards (some in a sub-folder), one of them unreadable; complete outputs for
    every third shard, a truncated output and one made for a shard of another size.
    Returns the split a plan must find, by output stem."""
    names = [f"part-{i:03d}" if i % 7 else f"sub/part-{i:03d}" for i in range(shards)]
    for name in names:
        write_shard(f"{root}/in/{name}.parquet", ROWS, row_group_size=2)
    broken = Location.resolve(f"{root}/in/part-001.parquet")
    with broken.open("wb") as f:
        f.write(b"PAR1" + b"\x00" * 300 + b"PAR1")
    stems = [name.replace("/", "__") for name in names]
    wanted = settings_for(root).result_settings()
    done = set()
    for i, (name, stem) in enumerate(zip(names, stems)):
        shard = input_shard(root, name, stem)
        if i % 3 == 0:
            write_output(root, shard, results_for(shard), wanted)
            done.add(stem)
        elif i == 2:  # written for a shard of 2 rows: this one has 3, so it is redone
            write_output(root, input_shard(root, name, stem, 2, (2,)), results_for(shard, 2), wanted)
        elif i == 4:  # truncated (a copy cut short): redone
            write_output(root, shard, results_for(shard), wanted)
            where = Outputs(Location.resolve(f"{root}/out")).file_of(shard)
            data = where.read_bytes()
            with where.open("wb") as f:
                f.write(data[: len(data) // 2])
    return {"done": done, "failed": {"part-001"}, "todo": set(stems) - done - {"part-001"}}


def split_of(planned) -> dict:
    todo, done, failed = planned.pending, planned.done, planned.failed
    return {"todo": {s.name for s in todo}, "done": {s.name for s in done},
            "failed": {f.uri.rsplit("/", 1)[1].removesuffix(".parquet") for f in failed}}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("bucket")


def test_many_shards_split_as_one_by_one(root):
    expected = build(root)
    parallel = plan(settings_for(root))
    assert split_of(parallel) == expected
    assert split_of(plan(settings_for(root), threads=1)) == expected
    todo, done, failed = parallel.pending, parallel.done, parallel.failed
    assert [s.name for s in todo] == sorted((s.name for s in todo), key=lambda n: n.replace("sub__", "sub/"))  # input order
    assert all(s.num_rows == 3 and s.plan == (2, 1) for s in todo + done)
    (failure,) = failed
    assert failure.reason.startswith("unreadable Parquet file")
    assert split_of(plan(settings_for(root, overwrite=True))) == {**expected, "todo": expected["todo"] | expected["done"], "done": set()}


def test_a_foreign_output_among_many_stops_the_run(tmp_path):
    root = str(tmp_path)
    build(root, shards=40)
    foreign = input_shard(root, "part-025", "part-025")
    write_output(root, foreign, results_for(foreign), settings_for(root, model="other").result_settings())
    with pytest.raises(InputError, match="part-025.parquet was produced with other settings \\(model differ"):
        plan(settings_for(root))


def test_input_errors_come_before_output_errors(tmp_path):
    root = str(tmp_path)
    build(root, shards=40)
    foreign = input_shard(root, "part-002", "part-002")
    write_output(root, foreign, results_for(foreign), settings_for(root, model="other").result_settings())
    pq.write_table(pa.table({"id": [1, 2]}), tmp_path / "in" / "part-039.parquet")  # the last shard, wrong columns
    with pytest.raises(InputError, match="part-039.parquet does not match the input schema"):
        plan(settings_for(root))


def test_storage_down_while_planning_stops_the_run(tmp_path, monkeypatch):
    root = str(tmp_path)
    build(root, shards=20)

    def inspect(where, name, settings, size=None, info=None):
        if name == "part-010":
            raise StorageUnavailable("reading the footer: storage unavailable after 5 attempts")
        return inspect_shard(where, name, settings, size=size, info=info)

    monkeypatch.setattr(parquet_format, "inspect_shard", inspect)
    with pytest.raises(StorageUnavailable, match="storage unavailable"):
        plan(settings_for(root))


def test_a_footer_larger_than_one_read(tmp_path):
    path = tmp_path / "many-groups.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(3000)], "image": [b"x"] * 3000}), path, row_group_size=1)
    metadata = pq.read_metadata(path)
    assert metadata.serialized_size > FOOTER_READ_BYTES  # two reads needed
    size = path.stat().st_size
    for known in (size, None):
        footer = read_footer(Location.resolve(str(path)), known)
        assert footer.num_rows == 3000 and footer.num_row_groups == 3000
    shard = inspect_shard(Location.resolve(str(path)), "many-groups", JobSettings(), size=size)
    assert shard.num_rows == 3000 and shard.plan == (1,) * 3000


def test_in_threads_raises_the_earliest_items_error_and_drops_the_rest():
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 0:
            time.sleep(0.3)  # fails last in time, first in order
            raise ValueError("item 0")
        if i == 3:
            raise KeyError("item 3")
        time.sleep(0.05)
        return i * i

    with pytest.raises(ValueError, match="item 0"):
        in_threads(work, list(range(200)), threads=4)
    assert len(started) < 200  # calls not yet started when it failed were dropped
    assert in_threads(lambda i: i * i, list(range(50)), threads=8) == [i * i for i in range(50)]


def test_plan_benchmark_runs(tmp_path):
    """The benchmark builds its shards, plans them and writes its report (its timings are its own business)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "bench_plan.py"
    result = subprocess.run([sys.executable, str(script), "--shards", "12", "--baseline", "", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "plan-s3-loopback-12.json").read_text())
    assert {tuple(r["split"]) for rs in report["runs"].values() for r in rs} == {(6, 6, 0)}
    assert set(report["seconds"]) == {"parallel", "one-thread"} and "of the" in result.stdout
