"""The built-in demo data: generated, deterministic, varied, with exactly one broken picture."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo_data import DEMO_SIZES, draw_scene, write_demo_shards
from pipeline.images import BadImage, decode_image
from pipeline.shards import inspect_shards


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo")
    return directory, write_demo_shards(directory)


def test_rows_schema_and_ids(demo):
    directory, written = demo
    tables = [pq.read_table(p) for p in written.paths]
    assert [p.rsplit("/", 1)[1] for p in written.paths] == [f"shard-0000{i}.parquet" for i in range(3)]
    assert [t.num_rows for t in tables] == [8, 8, 8] and written.num_rows == 24
    schema = tables[0].schema
    assert schema.field("id").type == pa.string() and schema.field("image").type == pa.binary()
    assert schema.field("answers").type == pa.list_(pa.string())
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert len(set(ids)) == 24 and ids == sorted(ids)
    assert all(len(a) == 10 for t in tables for a in t.column("answers").to_pylist())
    assert all(q.endswith("?") for t in tables for q in t.column("question").to_pylist())
    # The pipeline accepts them for both jobs.
    for task in ("caption", "vqa"):
        shards, failed = inspect_shards(str(directory), task)
        assert len(shards) == 3 and not failed


def test_pictures_vary_and_exactly_one_is_broken(demo):
    _, written = demo
    rows = [r for p in written.paths for r in pq.read_table(p).to_pylist()]
    formats, sizes, broken = set(), set(), []
    for row in rows:
        try:
            picture = decode_image(row["image"])
        except BadImage:
            broken.append(row["id"])
            continue
        formats.add(Image.open(io.BytesIO(row["image"])).format)
        sizes.add(picture.size)
    assert broken == list(written.corrupt_ids) == ["demo-0012"]
    assert formats == {"JPEG", "PNG", "WEBP"}
    assert sizes == set(DEMO_SIZES)


def test_deterministic(tmp_path):
    a = write_demo_shards(tmp_path / "a", num_shards=1, rows_per_shard=4, seed=3)
    b = write_demo_shards(tmp_path / "b", num_shards=1, rows_per_shard=4, seed=3)
    c = write_demo_shards(tmp_path / "c", num_shards=1, rows_per_shard=4, seed=4)
    read = lambda w: pq.read_table(w.paths[0]).column("image").to_pylist()  # noqa: E731
    assert read(a) == read(b) and read(a) != read(c)
    assert draw_scene(320, 240, seed=5).tobytes() == draw_scene(320, 240, seed=5).tobytes()


def test_without_the_broken_picture(tmp_path):
    written = write_demo_shards(tmp_path, num_shards=1, rows_per_shard=6, include_corrupt=False)
    assert written.corrupt_ids == ()
    for row in pq.read_table(written.paths[0]).to_pylist():
        decode_image(row["image"])
