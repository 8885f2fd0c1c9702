"""The Parquet shapes users already have, made by the tools that make them in real life:
Hugging Face `datasets` (Image() columns, with and without an id; VQAv2 as on the hub) and
img2dataset (downloading from a web server on loopback). Column mapping, id types, reference
shapes, relative image paths and bounded reads, then the real jobs on them."""

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as Picture

from pipeline.columns import ColumnMap, output_schema
from pipeline.errors import InputError
from pipeline.io import inputs
from pipeline.io.inputs import inspect_shards, list_shards
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded
from .servers import free_port
from .test_jobs import caption_cmd, job_env

REPO = Path(__file__).resolve().parent.parent


def picture(seed: int, height: int = 60, width: int = 80) -> Picture.Image:
    return Picture.open(io.BytesIO(encoded(height, width, seed=seed)))


def hf_caption_parquet(path: Path, seeds: list[int], ids: list[str] | None = None) -> Path:
    """A captioning set as `datasets` saves it: image (Image() struct) + text, and maybe an id."""
    from datasets import Dataset, Image

    columns = {"image": [picture(s) for s in seeds], "text": [f"picture {s}" for s in seeds]}
    if ids is not None:
        columns["id"] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns).cast_column("image", Image()).to_parquet(str(path))
    return path


def hub_vqav2_parquet(path: Path, rows: list[dict]) -> Path:
    """VQAv2 in the hub's layout: int64 question_id, Image() struct, answers as {answer, ...} structs."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features({
        "question_id": Value("int64"), "question": Value("string"), "image": Image(),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "multiple_choice_answer": Value("string"),
    })
    columns = {
        "question_id": [r["question_id"] for r in rows],
        "question": [r["question"] for r in rows],
        "image": [r["image"] for r in rows],
        "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(r["answers"])]
                    for r in rows],
        "multiple_choice_answer": [r["answers"][0] for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def read_shard(shard, columns=ColumnMap(), task="caption") -> dict[str, list]:
    """Every row of a shard through the read stage, as lists."""
    slices = [s for t in read_tasks([shard]) for s in read_rows({k: np.array([v]) for k, v in t.items()}, columns, task)]
    return {k: [v for s in slices for v in s[k]] for k in slices[0]}


# ---------------------------------------------------------------- reading each shape (no Ray, no model)


def test_hf_image_parquet_with_and_without_ids(tmp_path):
    hf_caption_parquet(tmp_path / "in" / "named.parquet", [1, 2], ids=["cat", "dog"])
    hf_caption_parquet(tmp_path / "in" / "anonymous.parquet", [3, 4, 5])
    shards, failed = inspect_shards(str(tmp_path / "in"), "caption")
    assert not failed and [(s.name, s.num_rows, s.id_type) for s in shards] == [
        ("anonymous", 3, "string"), ("named", 2, "string")]
    anonymous, named = (read_shard(s) for s in shards)
    assert named["id"] == ["cat", "dog"]
    assert anonymous["id"] == ["anonymous/0", "anonymous/1", "anonymous/2"]  # the row's place
    for rows in (named, anonymous):
        assert all(isinstance(b, bytes) and b[:4] == b"\x89PNG" for b in rows["image"])
        assert rows["error"] == [None] * len(rows["id"])


def test_image_paths_are_taken_from_the_shards_folder(tmp_path):
    """A struct with only a path, and a string column of relative, absolute and file:// URIs."""
    (tmp_path / "in" / "pics").mkdir(parents=True)
    (tmp_path / "in" / "pics" / "a.png").write_bytes(encoded(20, 30, seed=1))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": None, "path": "pics/a.png"}, {"bytes": b"raw", "path": "x.png"}, None], struct),
    })
    pq.write_table(table, tmp_path / "in" / "hf.parquet")
    pq.write_table(pa.table({"id": ["r", "abs", "file", "none"], "pic": [
        "pics/a.png", str(tmp_path / "in" / "pics" / "a.png"), f"file://{tmp_path}/in/pics/a.png", None]}),
        tmp_path / "in" / "uris.parquet")
    (hf,), _ = inspect_shards(str(tmp_path / "in" / "hf.parquet"), "caption")
    rows = read_shard(hf)
    assert rows["image_uri"][0] == f"file://{tmp_path}/in/pics/a.png" and rows["image"][0] is None
    assert rows["image"][1] == b"raw"
    assert rows["error"] == [None, None, "missing image: column 'image' is null"]
    (uris,), _ = inspect_shards(str(tmp_path / "in" / "uris.parquet"), "caption", ColumnMap(image="pic"))
    rows = read_shard(uris, ColumnMap(image="pic"))
    assert rows["image_uri"][:3] == [f"file://{tmp_path}/in/pics/a.png", str(tmp_path / "in" / "pics" / "a.png"),
                                     f"file://{tmp_path}/in/pics/a.png"]
    assert rows["error"] == [None, None, None, "missing image: column 'pic' is null"]


def test_vqav2_as_on_the_hub(tmp_path):
    hub_vqav2_parquet(tmp_path / "vqa.parquet", [
        {"question_id": 4500, "question": "how many?", "image": picture(1), "answers": ["2"] * 9 + ["two"]},
        {"question_id": 4501, "question": "red?", "image": picture(2), "answers": ["yes", "no", "yes"]},
    ])
    (shard,), _ = inspect_shards(str(tmp_path / "vqa.parquet"), "vqa", ColumnMap(id="question_id"))
    assert shard.id_type == "int64"
    rows = read_shard(shard, ColumnMap(id="question_id"), "vqa")
    assert rows["id"] == ["4500", "4501"]  # strings between stages; the output turns them back (see the job test)
    assert rows["answers"] == [["2"] * 9 + ["two"], ["yes", "no", "yes"]]
    assert rows["question"] == ["how many?", "red?"]
    assert output_schema("vqa", shard.id_type).field("id").type == pa.int64()


def test_one_reference_string_is_a_list_of_one(tmp_path):
    pq.write_table(pa.table({"id": [7, 8], "image": [encoded(10, 10), encoded(10, 12)], "question": ["q", "r"],
                             "answers": ["cat", None]}), tmp_path / "a.parquet")
    (shard,), _ = inspect_shards(str(tmp_path), "vqa")
    assert shard.id_type == "int64"
    assert read_shard(shard, task="vqa")["answers"] == [["cat"], None]


@pytest.mark.parametrize("table, task, columns, message", [
    (pa.table({"id": ["a"], "image": [b"x"], "question": ["q"], "answers": pa.array([[1, 2]], pa.list_(pa.int64()))}),
     "vqa", ColumnMap(), r"column 'answers' has type list<element: int64>; the answers column \(--answers-column\)"),
    (pa.table({"id": ["a"], "image": [b"x"], "question": ["q"],
               "answers": pa.array([[{"text": "x"}]], pa.list_(pa.struct([("text", pa.string())])))}),
     "vqa", ColumnMap(), r"column 'answers' has type list<element: struct<text: string>>"),
    (pa.table({"key": ["a"], "jpg": [b"x"]}), "caption", ColumnMap(id="key", image="jpeg"),
     r"no column 'jpeg' \(given with --image-column\)"),
    (pa.table({"key": ["a"], "jpg": [b"x"]}), "caption", ColumnMap(), r"name your image column with --image-column"),
    (pa.table({"id": [1.5], "image": [b"x"]}), "caption", ColumnMap(), r"column 'id' has type double"),
    (pa.table({"id": ["a"], "image": [b"x"], "q": [3]}), "vqa", ColumnMap(question="q"),
     r"column 'q' has type int64; the question column \(--question-column\)"),
])
def test_unusable_columns_are_refused_naming_column_type_and_flag(tmp_path, table, task, columns, message):
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=message):
        inspect_shards(str(tmp_path), task, columns)


def test_a_wrong_reference_type_exits_2_before_any_model_loads(tmp_path):
    pq.write_table(pa.table({"question_id": [1], "image": [b"x"], "question": ["q"],
                             "answers": pa.array([[1]], pa.list_(pa.int64()))}), tmp_path / "v.parquet")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "vqa.py"), "--input", str(tmp_path), "--output", str(tmp_path / "out"),
         "--model", "/nonexistent/model", "--id-column", "question_id"],
        capture_output=True, text=True, env=job_env(), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "column 'answers' has type list<element: int64>" in result.stderr and "--answers-column" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 120


def test_an_input_of_mixed_kinds_is_refused(tmp_path):
    hf_caption_parquet(tmp_path / "a.parquet", [1])
    (tmp_path / "b.jpg").write_bytes(encoded(10, 10, "JPEG"))
    with pytest.raises(InputError, match=r"mixes kinds of input \(1 folder, 1 parquet files\)"):
        list_shards(str(tmp_path))


def test_one_big_row_group_is_read_in_bounded_slices(tmp_path, monkeypatch):
    """A pandas-style shard (one row group) comes out in slices of about SLICE_BYTES, in order."""
    rows = 1000
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(10_000) for _ in range(rows)]  # 10 kB a row (incompressible), 10 MB in one row group
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "image": blobs}), tmp_path / "one.parquet",
                   row_group_size=rows)
    monkeypatch.setattr(inputs, "SLICE_BYTES", 2**20)  # 1 MB slices: about 100 rows each
    (shard,), _ = inspect_shards(str(tmp_path), "caption")
    assert shard.row_groups == (rows,)
    (task,) = read_tasks([shard])
    slices = list(read_rows({k: np.array([v]) for k, v in task.items()}))
    sizes = [len(s["id"]) for s in slices]
    assert sum(sizes) == rows and len(slices) >= 9 and max(sizes) <= 105
    assert [i for s in slices for i in s["row_index"]] == list(range(rows))
    assert [b for s in slices for b in s["image"]] == blobs
