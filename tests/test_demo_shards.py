"""The demo shards as the pipeline sees them (their generation is tested in test_demo_data.py)."""

import pyarrow.parquet as pq

from pipeline.demo.data import write_demo_shards
from pipeline.io.images import decode_image
from pipeline.row_errors import RowFailed as BadImage
from .data import plan_input as inspect_shards


def test_the_pipeline_accepts_the_demo_and_rejects_exactly_its_broken_picture(tmp_path):
    paths = write_demo_shards(tmp_path)
    for task in ("caption", "vqa"):
        shards, failed = inspect_shards(str(tmp_path), task)
        assert [s.num_rows for s in shards] == [8, 8, 8] and not failed
    broken = []
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            try:
                decode_image(row["image"])
            except BadImage as e:
                broken.append((row["id"], str(e).split(":")[0]))
    assert broken == [("demo-0012", "undecodable image")]
