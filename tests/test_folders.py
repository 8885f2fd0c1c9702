"""A folder (or S3 prefix) of image files as the input: deterministic shards, ids, fingerprints that
make a changed shard be redone, unreadable files as error rows; the caption job on S3, rerun and resumed."""

import os

import pyarrow.parquet as pq
import pytest

import numpy as np

from pipeline.errors import InputError
from pipeline.io.formats import folder as folders
from pipeline.settings import JobSettings
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded, plan_input as inspect_shards, read_all

def make_folder(root, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded(20 + i, 30, "PNG" if name.endswith(".png") else "JPEG", seed=i))

NAMES = ["b.jpg", "a.png", "sub/c.jpeg", "sub/deeper/d.JPG", "e.webp", "f.jpg", "g.jpg"]

def test_files_are_cut_into_chunks_of_sorted_files(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "FILES_PER_SHARD", 3)
    make_folder(tmp_path, [n for n in NAMES if not n.endswith(".webp")] + ["e.png"])
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "_staging").mkdir()
    (tmp_path / "_staging" / "half.jpg").write_bytes(b"x")  # under a hidden folder: no input either
    shards, failed = inspect_shards(str(tmp_path), "caption")
    assert not failed and {s.format for s in shards} == {"folder"}
    assert [m for s in shards for m in s.plan] == ["a.png", "b.jpg", "e.png", "f.jpg", "g.jpg", "sub/c.jpeg",
                                                  "sub/deeper/d.JPG"]  # every file once, in sorted order
    assert len(shards) > 1 and [s.num_rows for s in shards] == [len(s.plan) for s in shards]
    assert len({s.name for s in shards}) == len(shards) and all(s.name.startswith("images-") for s in shards)
    assert all(s.uri == f"file://{tmp_path}#{s.name}" for s in shards)
    assert all(len(s.versions) == s.num_rows for s in shards)
    assert inspect_shards(str(tmp_path), "caption")[0] == shards  # the same folder, the same chunks


def chunk_sets(root) -> dict[str, tuple]:
    return {s.name: s.plan for s in inspect_shards(str(root), "caption")[0]}


@pytest.mark.parametrize("name", ["0-first.jpg", "m-middle.jpg", "zz-last.jpg"])
def test_a_file_added_anywhere_changes_only_the_chunk_it_sorts_into(tmp_path, monkeypatch, name):
    """With chunks of 10 files on average over 300 files: adding a file, wherever it sorts, leaves
    every other chunk as it was (same name, same files); so does removing one; rewriting one changes
    only its own chunk's name."""
    monkeypatch.setattr(folders, "FILES_PER_SHARD", 10)
    for i in range(300):
        (tmp_path / f"{chr(97 + i % 26)}-{i:03d}.jpg").write_bytes(b"x" * (i % 7 + 1))
    before = chunk_sets(tmp_path)
    assert 15 <= len(before) <= 60  # about 300 / 10
    (tmp_path / name).write_bytes(b"new")
    after = chunk_sets(tmp_path)
    gone, came = set(before) - set(after), set(after) - set(before)
    # Its chunk, perhaps split in two at the new file (or, past the last chunk's end, a chunk of its own).
    assert len(gone) <= 1 and 1 <= len(came) <= 2
    assert sorted(m for c in came for m in after[c]) == sorted([m for c in gone for m in before[c]] + [name])

    (tmp_path / name).unlink()
    assert chunk_sets(tmp_path) == before
    chunk = sorted(before)[len(before) // 2]
    (tmp_path / before[chunk][0]).write_bytes(b"rewritten, another size")
    rewritten = chunk_sets(tmp_path)
    assert set(before) - set(rewritten) == {chunk} and sorted(rewritten.values()) == sorted(before.values())


def test_a_rewritten_file_changes_its_shards_identity(tmp_path):
    make_folder(tmp_path, ["a.jpg", "b.jpg"])
    (before,), _ = inspect_shards(str(tmp_path), "caption")
    (tmp_path / "b.jpg").write_bytes(encoded(70, 70, "JPEG", seed=5))
    (after,), _ = inspect_shards(str(tmp_path), "caption")
    assert before.plan == after.plan and before.uri != after.uri and before.fingerprint != after.fingerprint
    assert before.versions[0] == after.versions[0] and before.versions[1] != after.versions[1]

def test_rows_ids_and_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "FILES_PER_TASK", 3)
    monkeypatch.setattr(folders, "FILES_PER_SLICE", 2)
    make_folder(tmp_path, NAMES)
    (tmp_path / "junk.jpg").write_bytes(b"not a picture")
    (shard,), _ = inspect_shards(str(tmp_path), "caption")
    assert [t.first_row for t in read_tasks([shard])] == [0, 3, 6]
    (tmp_path / "f.jpg").unlink()  # gone between planning and reading
    rows = read_all(shard)
    assert [r["id"] for r in rows] == ["a.png", "b.jpg", "e.webp", "f.jpg", "g.jpg", "junk.jpg",
                                       "sub/c.jpeg", "sub/deeper/d.JPG"]
    assert [r["row_index"] for r in rows] == list(range(8))
    assert rows[3]["image"] is None and rows[3]["error"].startswith("unreadable file: FileNotFoundError")
    assert [r["error"] for i, r in enumerate(rows) if i != 3] == [None] * 7
    assert rows[5]["image"] == b"not a picture"  # the decode stage makes it an undecodable-image row
    settings = JobSettings(input=str(tmp_path))
    batches = list(read_rows({"item": np.array(read_tasks([shard])[1:2], dtype=object)}, settings.input, settings))
    assert [list(b["row_index"]) for b in batches] == [[3, 4], [5]]

def test_one_image_file_is_an_input_and_vqa_is_refused(tmp_path):
    make_folder(tmp_path, ["one.jpg", "two.jpg"])
    (shard,), _ = inspect_shards(str(tmp_path / "two.jpg"), "caption")
    assert shard.plan == ("two.jpg",) and shard.uri.startswith(f"file://{tmp_path}#")
    with pytest.raises(InputError, match="the VQA job needs questions"):
        inspect_shards(str(tmp_path), "vqa")

def test_two_nights_over_a_changing_s3_prefix(ray_local, bucket, tiny_next_path, monkeypatch):
    """Seven files on S3 in chunks of three on average, one undecodable: night 1 captions them; a
    rerun has nothing to do; then a photo is added, one rewritten and one removed: night 2 generates
    exactly the added and the rewritten photo, carries the other results of their chunk over, keeps
    the untouched chunks' outputs, names the output whose photos are all gone, and counts the 7
    photos the prefix holds."""
    import s3fs

    from pipeline.job.run import run_job
    from pipeline.settings import JobSettings

    monkeypatch.setattr(folders, "FILES_PER_SHARD", 3)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    prefix = f"{bucket}/pictures".removeprefix("s3://")
    for i, name in enumerate(["a.jpg", "b.png", "c/d.jpg", "c/e.jpg", "f.webp", "g.jpg"]):
        fs.pipe(f"{prefix}/{name}", encoded(30 + i, 40, {"png": "PNG", "webp": "WEBP"}.get(name[-3:], "JPEG"), seed=i))
    fs.pipe(f"{prefix}/bad.jpg", b"these bytes are no picture")

    def run() -> dict:
        return run_job(JobSettings(task="caption", input=f"{bucket}/pictures", output=f"{bucket}/out",
                                   model=str(tiny_next_path), num_gpus=0, max_new_tokens=2))

    def outputs() -> dict[str, dict[str, dict]]:
        tables = {}
        fs.invalidate_cache()  # outputs were replaced since the last look: no stale sizes or ETags
        for path in sorted(fs.ls(f"{bucket}/out".removeprefix("s3://"))):
            if path.endswith(".parquet"):
                with fs.open(path, "rb") as f:
                    tables[path.rsplit("/", 1)[1]] = {r["id"]: r for r in pq.read_table(f).to_pylist()}
        return tables

    first = run()
    assert first["shards"] == {"total": 4, "written_this_run": 4, "already_complete": 0, "failed": 0}
    night1 = outputs()
    assert sorted(list(rows) for rows in night1.values()) == [["a.jpg"], ["b.png"], ["bad.jpg"],
                                                              ["c/d.jpg", "c/e.jpg", "f.webp", "g.jpg"]]
    errors = {i: r["error"] for rows in night1.values() for i, r in rows.items()}
    assert errors.pop("bad.jpg").startswith("undecodable image") and set(errors.values()) == {None}
    assert first["items"] == 7 and first["errors"] == 1

    again = run()
    assert again["shards"] == {"total": 4, "written_this_run": 0, "already_complete": 4, "failed": 0}
    assert again["this_run"]["rows_processed"] == 0

    fs.pipe(f"{prefix}/h.jpg", encoded(33, 44, "JPEG", seed=7))  # added
    fs.pipe(f"{prefix}/c/e.jpg", encoded(50, 20, "JPEG", seed=8))  # rewritten
    fs.rm(f"{prefix}/b.png")  # removed: its chunk had no other photo
    second = run()
    assert second["this_run"]["rows_processed"] == 2
    assert second["shards"] == {"total": 3, "written_this_run": 1, "already_complete": 2, "failed": 0}
    (gone,) = [name for name, rows in night1.items() if "b.png" in rows]
    changes = second["input_changes"]
    assert changes["removed_results"] == 1 and changes["removed_examples"] == [gone.removesuffix(".parquet")]
    assert changes["files"] == {"new": 1, "changed": 1, "removed": 1, "carried_over": 3}
    night2 = outputs()
    (tail,) = set(night2) - set(night1)
    assert list(night2[tail]) == ["c/d.jpg", "c/e.jpg", "f.webp", "g.jpg", "h.jpg"]
    run_ids = {i: r["run_id"] for i, r in night2[tail].items()}
    assert run_ids == {"c/d.jpg": first["run_id"], "c/e.jpg": second["run_id"], "f.webp": first["run_id"],
                       "g.jpg": first["run_id"], "h.jpg": second["run_id"]}
    assert night2[tail]["f.webp"] == {**night1[[n for n in night1 if "f.webp" in night1[n]][0]]["f.webp"],
                                     "source_shard": night2[tail]["f.webp"]["source_shard"], "row_index": 2}
    assert set(night2) == set(night1) - {n for n in night1 if "g.jpg" in night1[n]} | {tail}  # b.png's output kept
    assert night2[gone] == night1[gone] and gone in second["left_out_results"]["examples"][0]
    assert second["items"] == 7 and second["duplicate_ids"] == 0
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "") not in str(second)
