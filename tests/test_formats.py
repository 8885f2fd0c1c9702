"""The Parquet shapes users already have, made by the tools that make them in real life:
Hugging Face `datasets` (Image() columns, with and without an id; VQAv2 as on the hub) and
img2dataset (downloading from a web server on loopback). Column mapping, id types, reference
shapes, relative image paths and bounded reads, then the real jobs on them."""

import io
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image as Picture

from pipeline.columns import output_schema
from pipeline.errors import InputError

from pipeline.io.formats import parquet as parquet_format
from pipeline.settings import ColumnMap, JobSettings
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded, plan_input as inspect_shards, read_all
from .servers import free_port
from .test_jobs import job_env

REPO = Path(__file__).resolve().parent.parent
# img2dataset's command, installed beside this Python (the dev extra)
IMG2DATASET = shutil.which("img2dataset") or str(Path(sys.executable).parent / "img2dataset")


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
    rows = read_all(shard, task, columns)
    return {k: [r[k] for r in rows] for k in rows[0]}


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


def test_a_wrong_reference_type_exits_2_before_any_model_loads(tmp_path, tiny_next_path):
    pq.write_table(pa.table({"question_id": [1], "image": [b"x"], "question": ["q"],
                             "answers": pa.array([[1]], pa.list_(pa.int64()))}), tmp_path / "v.parquet")
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "vqa.py"), "--input", str(tmp_path), "--output", str(tmp_path / "out"),
         "--model", str(tiny_next_path), "--id-column", "question_id"],
        capture_output=True, text=True, env=job_env(), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "column 'answers' has type list<element: int64>" in result.stderr and "--answers-column" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_input_of_mixed_kinds_is_refused(tmp_path):
    hf_caption_parquet(tmp_path / "a.parquet", [1])
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "b.jpg").write_bytes(encoded(10, 10, "JPEG"))
    assert [s.name for s in inspect_shards(str(tmp_path))[0]] == ["a"]  # pictures beside shards are not shards
    (tmp_path / "c.tar").write_bytes(b"")
    with pytest.raises(InputError, match=r"mixes kinds of input \(1 .parquet files, 1 .tar files, 1 image files\)"):
        inspect_shards(str(tmp_path))


def test_one_big_row_group_is_read_in_bounded_slices(tmp_path, monkeypatch):
    """A pandas-style shard (one row group) comes out in slices of about SLICE_BYTES, in order."""
    rows = 1000
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(10_000) for _ in range(rows)]  # 10 kB a row (incompressible), 10 MB in one row group
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)], "image": blobs}), tmp_path / "one.parquet",
                   row_group_size=rows)
    monkeypatch.setattr(parquet_format, "SLICE_BYTES", 2**20)  # 1 MB slices: about 100 rows each
    (shard,), _ = inspect_shards(str(tmp_path), "caption")
    assert shard.plan == (rows,)
    (task,) = read_tasks([shard])
    settings = JobSettings(input=str(tmp_path))
    slices = list(read_rows({"item": np.array([task], dtype=object)}, settings.input, settings))
    sizes = [len(s["id"]) for s in slices]
    assert sum(sizes) == rows and len(slices) >= 9 and max(sizes) <= 105
    assert [i for s in slices for i in s["row_index"]] == list(range(rows))
    assert [b for s in slices for b in s["image"]] == blobs


# ---------------------------------------------------------------- the real jobs on them


@pytest.fixture(scope="module")
def img2dataset_shard(tmp_path_factory):
    """img2dataset's own Parquet output, downloaded from a web server on loopback; one dead link."""
    root = tmp_path_factory.mktemp("img2dataset")
    (root / "site").mkdir()
    for i in range(3):
        (root / "site" / f"p{i}.jpg").write_bytes(encoded(60 + 10 * i, 80, "JPEG", seed=i))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=root / "site", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        names = ["p0.jpg", "gone.jpg", "p1.jpg", "p2.jpg"]
        (root / "urls.tsv").write_text("url\tcaption\n" + "".join(
            f"http://127.0.0.1:{port}/{n}\talt text {n}\n" for n in names))
        result = subprocess.run(
            [IMG2DATASET, "--url_list", str(root / "urls.tsv"), "--input_format", "tsv", "--url_col", "url",
             "--caption_col", "caption", "--output_format", "parquet", "--output_folder", str(root / "out"),
             "--processes_count", "1", "--thread_count", "2", "--resize_mode", "no", "--timeout", "5",
             "--retries", "0", "--enable_wandb", "False"],
            capture_output=True, text=True, timeout=300, env=job_env({"NO_ALBUMENTATIONS_UPDATE": "1"}))
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        server.kill()
        server.wait()
    (shard,) = sorted((root / "out").glob("*.parquet"))
    return shard


def test_caption_job_on_img2dataset_parquet(img2dataset_shard, ray_local, tmp_path, tiny_next_path):
    """What a user of img2dataset runs (--id-column key --image-column jpg): the dead link is an error row."""
    from pipeline.job.run import run_job
    from pipeline.settings import JobSettings

    source = pq.read_table(img2dataset_shard)
    assert source.column("jpg").null_count == 1  # what img2dataset wrote for the dead link
    out = tmp_path / "out"
    summary = run_job(JobSettings(task="caption", input=str(img2dataset_shard.parent), output=str(out),
                                  model=str(tiny_next_path), num_gpus=0, max_new_tokens=3,
                                  columns=ColumnMap(id="key", image="jpg")))
    assert summary["items"] == 4 and summary["errors"] == 1
    table = pq.read_table(out / f"{img2dataset_shard.stem}.parquet")
    assert table.schema.field("id").type == pa.string()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == source.column("key").to_pylist()  # in the shard's order (img2dataset's)
    assert sorted(r["id"] for r in rows) == [f"00000000{i}" for i in range(4)]
    errors = {r["id"]: r["error"] for r in rows}
    assert errors == {"000000000": None, "000000001": "missing image: column 'jpg' is null",
                      "000000002": None, "000000003": None}
    assert all(isinstance(r["text"], str) for r in rows if r["error"] is None)


def test_caption_job_on_hf_datasets_parquet(ray_local, tmp_path, tiny_next_path):
    """Hub-style caption sets (Image() column, with and without ids) and relative image paths, in one input."""
    from pipeline.job.run import run_job
    from pipeline.settings import JobSettings

    hf_caption_parquet(tmp_path / "in" / "named.parquet", [1, 2], ids=["cat", "dog"])
    hf_caption_parquet(tmp_path / "in" / "hub" / "train-00000.parquet", [3, 4])
    (tmp_path / "in" / "pics").mkdir()
    (tmp_path / "in" / "pics" / "a.png").write_bytes(encoded(50, 70, seed=9))
    pq.write_table(pa.table({"id": ["rel", "nowhere"], "image_uri": ["pics/a.png", "pics/none.png"]}),
                   tmp_path / "in" / "by-path.parquet")
    summary = run_job(JobSettings(task="caption", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                  model=str(tiny_next_path), num_gpus=0, max_new_tokens=3))
    assert summary["shards"]["written_this_run"] == 3 and summary["items"] == 6
    out = {p.stem: pq.read_table(p).to_pylist() for p in (tmp_path / "out").glob("*.parquet")}
    assert [r["id"] for r in out["named"]] == ["cat", "dog"]
    assert [r["id"] for r in out["hub__train-00000"]] == ["hub__train-00000/0", "hub__train-00000/1"]
    assert [r["id"] for r in out["by-path"]] == ["rel", "nowhere"]
    errors = {r["id"]: r["error"] for rows in out.values() for r in rows}
    assert errors.pop("nowhere").startswith("cannot fetch image_uri")
    assert set(errors.values()) == {None}  # the relative path was found beside the shard


def expected_answers(model_path: Path, shard: Path, max_new_tokens: int) -> list[str]:
    """What the tiny model answers to each row, generated in this process, one row at a time."""
    from pipeline.stages.generate import Predictor
    from pipeline.stages.preprocess import Preprocessor

    (parsed,), _ = inspect_shards(str(shard), "vqa", ColumnMap(id="question_id"))
    rows = read_shard(parsed, ColumnMap(id="question_id"), "vqa")
    settings = JobSettings(task="vqa", model=str(model_path), config=None, max_new_tokens=max_new_tokens, batch_size=1)
    batch = Preprocessor(settings)({k: np.array(v, dtype=object) for k, v in rows.items()})
    out = Predictor(settings)(batch)
    return list(out["text"])


def test_vqa_job_on_hub_vqav2_on_s3(ray_local, bucket, tmp_path, tiny_next_path):
    """VQAv2 as on the hub, on S3: integer question ids kept as integers, struct references scored (not a silent 0)."""
    import s3fs

    from pipeline.job.run import run_job
    from pipeline.settings import JobSettings

    questions = [(4500, "how many?", 1), (4501, "what color?", 2), (4502, "is it red?", 3)]
    draft = hub_vqav2_parquet(tmp_path / "draft.parquet", [
        {"question_id": q, "question": text, "image": picture(seed), "answers": ["x"]} for q, text, seed in questions])
    said = expected_answers(tiny_next_path, draft, max_new_tokens=3)
    assert all(said)
    # References: the model's answer by 10 annotators for the first two, another answer for the third.
    local = hub_vqav2_parquet(tmp_path / "vqa" / "val.parquet", [
        {"question_id": q, "question": text, "image": picture(seed), "answers": [said[i]] * 10 if i < 2 else ["zebra"] * 10}
        for i, (q, text, seed) in enumerate(questions)])
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(local), f"{bucket}/vqa/val.parquet".removeprefix("s3://"))
    summary = run_job(JobSettings(task="vqa", input=f"{bucket}/vqa", output=f"{bucket}/vqa-out", model=str(tiny_next_path),
                                  config=None, num_gpus=0, batch_size=1, max_new_tokens=3,
                                  columns=ColumnMap(id="question_id")))
    with s3fs.S3FileSystem(skip_instance_cache=True).open(f"{bucket}/vqa-out/val.parquet".removeprefix("s3://")) as f:
        table = pq.read_table(f)
    assert table.schema.field("id").type == pa.int64()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [4500, 4501, 4502]
    assert [r["text"] for r in rows] == said
    assert [r["answers"] for r in rows] == [[said[0]] * 10, [said[1]] * 10, ["zebra"] * 10]
    assert [r["vqa_accuracy"] for r in rows[:2]] == [1.0, 1.0]
    assert summary["vqa"]["scored"] == 3 and summary["vqa"]["accuracy"] > 0.6


def test_help_shows_the_column_flags_with_examples():
    from pipeline.cli import build_parser
    from pipeline.cli.base import settings_from_args

    def command_help(task):
        parser = build_parser()
        return next(a for a in parser._actions if a.dest == "command").choices[task].format_help()

    caption, vqa = command_help("caption"), command_help("vqa")
    assert "--id-column key --image-column jpg" in " ".join(caption.split())
    assert "--id-column question_id" in " ".join(vqa.split())
    for flag in ("--id-column", "--image-column", "--prompt-column"):
        assert flag in caption
    for flag in ("--id-column", "--image-column", "--question-column", "--answers-column"):
        assert flag in vqa
    args = build_parser().parse_args(["caption", "--input", "x", "--id-column", "key", "--image-column", "jpg"])
    assert settings_from_args(args, "caption", {}).columns == ColumnMap(id="key", image="jpg")
    args = build_parser().parse_args(["vqa", "--id-column", "question_id", "--answers-column", "refs"])
    assert settings_from_args(args, "vqa", {}).columns == ColumnMap(id="question_id", answers="refs")


def test_storage_failing_mid_row_group_resumes_after_the_rows_already_read(tmp_path, monkeypatch):
    """A dropped connection after the first slice: the row group is reopened and read on from
    the first row not yet handed out, so no row is lost or repeated."""
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(600)], "image": [b"x" * 10] * 600}), tmp_path / "a.parquet")
    (shard,), _ = inspect_shards(str(tmp_path), "caption")
    original, failures = parquet_format._open_slices, []

    def flaky(where, group, settings, skip):
        for n, item in enumerate(original(where, group, settings, skip)):
            if n == 1 and not failures:
                failures.append(n)
                raise ConnectionError("connection reset by peer")
            yield item

    monkeypatch.setattr(parquet_format, "_open_slices", flaky)
    monkeypatch.setattr(parquet_format, "SLICE_ROWS", 256)
    monkeypatch.setattr("pipeline.io.retry.time.sleep", lambda s: None)
    rows = read_shard(shard)
    assert failures and rows["id"] == [f"r{i}" for i in range(600)] and rows["row_index"] == list(range(600))
    assert rows["error"] == [None] * 600
