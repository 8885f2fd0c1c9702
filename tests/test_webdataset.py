"""WebDataset tar shards as the input: img2dataset's real output, hand-made tars with bad samples,
truncated and non-tar files; planning, reading in slices, the caption job locally and on S3."""


import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.errors import InputError
from pipeline.io.formats import webdataset as wd
from pipeline.settings import JobSettings
from pipeline.stages.read import read_rows, read_tasks

from .data import encoded, plan_input as inspect_shards, read_all
from .servers import free_port, wait_for_http
from .test_jobs import caption_cmd, job_env

PICTURES = 6  # served over HTTP for img2dataset; a dead link is added among their URLs

def write_tar(path, samples: list[dict]) -> str:
    """A tar of WebDataset samples ({"__key__": ..., "<kind>": bytes or str})."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)

def bad_samples() -> list[dict]:
    """Four samples: fine, no image member, corrupt picture bytes, fine (a png)."""
    return [
        {"__key__": "bad/ok-0", "jpg": encoded(40, 60, "JPEG", seed=1), "txt": "alt text"},
        {"__key__": "bad/no-image", "txt": "the picture went missing", "json": {"status": "failed"}},
        {"__key__": "bad/corrupt", "jpg": b"\xff\xd8\xff not really a jpeg"},
        {"__key__": "bad/ok-1", "png": encoded(30, 50, "PNG", seed=2)},
    ]

def truncated_copy(source: Path, target: Path) -> None:
    """The tar of bad_samples() cut in the middle of the 'bad/corrupt' sample's picture."""
    with tarfile.open(source) as tar:
        picture = tar.getmember("bad/corrupt.jpg")
    target.write_bytes(source.read_bytes()[: picture.offset_data + picture.size // 2])

# --- planning and reading, without Ray ---------------------------------------------------------

def test_member_names_split_into_key_and_kind():
    assert wd.split_member_name("000123.jpg") == ("000123", "jpg")
    assert wd.split_member_name("part/a.b/x.seg.PNG") == ("part/a.b/x", "seg.png")
    assert wd.split_member_name("noext") == ("noext", "")

def test_bad_samples_are_error_rows_and_nothing_is_lost(tmp_path):
    write_tar(tmp_path / "in" / "a.tar", bad_samples())
    (shard,), failed = inspect_shards(str(tmp_path / "in"), "caption")
    assert not failed and shard.format == "webdataset" and shard.num_rows == 4 and shard.name == "a"
    rows = read_all(shard)
    assert [r["id"] for r in rows] == ["bad/ok-0", "bad/no-image", "bad/corrupt", "bad/ok-1"]
    assert [r["row_index"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["image"] is None
    assert rows[1]["error"] == "missing image: the sample has no jpg/jpeg/png/webp member (members: json, txt)"
    assert rows[2]["error"] is None and rows[2]["image"].startswith(b"\xff\xd8")  # the decode stage rejects it
    assert rows[3]["image"][:4] == b"\x89PNG"
    assert {r["prompt"] for r in rows} == {None}  # the alt text is not a prompt: --prompt applies

def test_rows_come_in_bounded_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(wd, "SLICE_ROWS", 3)
    write_tar(tmp_path / "big.tar", [{"__key__": f"{i:04d}", "jpg": encoded(8, 8, "JPEG", seed=i)} for i in range(10)])
    (shard,), _ = inspect_shards(str(tmp_path / "big.tar"), "caption")
    settings = JobSettings(input=str(tmp_path / "big.tar"))
    batches = list(read_rows({"item": np.array(read_tasks([shard]), dtype=object)}, settings.input, settings))
    assert [len(b["id"]) for b in batches] == [3, 3, 3, 1]
    assert [int(i) for b in batches for i in b["row_index"]] == list(range(10))

def test_truncated_and_broken_tars(tmp_path):
    inputs = tmp_path / "in"
    write_tar(inputs / "whole.tar", bad_samples())
    truncated_copy(inputs / "whole.tar", inputs / "cut-in-data.tar")
    whole = (inputs / "whole.tar").read_bytes()
    with tarfile.open(inputs / "whole.tar") as tar:
        boundary = [m for m in tar.getmembers() if m.name.startswith("bad/corrupt")][0].offset
    (inputs / "cut-at-member.tar").write_bytes(whole[:boundary])  # no end-of-archive block
    garbled = bytearray(whole)  # the third sample's first header overwritten: tarfile alone would stop quietly
    garbled[boundary : boundary + 512] = (b"garbage!" * 64)
    (inputs / "bad-header.tar").write_bytes(bytes(garbled))
    (inputs / "not-a-tar.tar").write_bytes(b"these bytes are no tar" * 40)
    (inputs / "zero-bytes.tar").write_bytes(b"")
    with tarfile.open(inputs / "no-samples.tar", "w"):
        pass
    shards, failed = inspect_shards(str(inputs), "caption")
    assert {Path(f.uri).name: f.reason.split(":")[0] for f in failed} == {
        "not-a-tar.tar": "unreadable tar", "zero-bytes.tar": "unreadable tar"}
    by_name = {s.name: s for s in shards}
    assert {name: s.num_rows for name, s in by_name.items()} == {
        "whole": 4, "cut-in-data": 3, "cut-at-member": 2, "bad-header": 2, "no-samples": 0}
    assert read_tasks([by_name["no-samples"]]) and read_all(by_name["no-samples"]) == []

    bad_header = read_all(by_name["bad-header"])
    assert [r["id"] for r in bad_header] == ["bad/ok-0", "bad/no-image"]
    assert bad_header[1]["error"].startswith("unreadable shard: damaged tar: unreadable header (InvalidHeaderError")

    cut = read_all(by_name["cut-in-data"])  # the third sample's picture is cut: it is the last row, an error
    assert [r["id"] for r in cut] == ["bad/ok-0", "bad/no-image", "bad/corrupt"]
    assert cut[0]["error"] is None and cut[1]["error"].startswith("missing image")
    assert cut[2]["error"].startswith("unreadable shard: damaged tar in sample 'bad/corrupt'")

    at_member = read_all(by_name["cut-at-member"])
    assert [r["id"] for r in at_member] == ["bad/ok-0", "bad/no-image"]
    assert at_member[1]["error"].startswith("unreadable shard: truncated tar: it ends without its end-of-archive block")

def test_a_tar_that_changed_since_planning_still_gives_the_planned_rows(tmp_path):
    write_tar(tmp_path / "a.tar", bad_samples())
    (shard,), _ = inspect_shards(str(tmp_path), "caption")
    write_tar(tmp_path / "a.tar", bad_samples()[:2])
    rows = read_all(shard)
    assert len(rows) == 4 and [r["id"] for r in rows[2:]] == [None, None]
    assert rows[3]["error"] == ("unreadable shard: the shard ended after 2 of the 4 rows planned for this part "
                                "(changed since planning?)")
    (tmp_path / "a.tar").unlink()
    assert [r["error"].split(":")[0] for r in read_all(shard)] == ["unreadable shard"] * 4

def test_img2dataset_sidecars_are_not_shards_but_other_mixes_are_refused(tmp_path):
    write_tar(tmp_path / "00000.tar", bad_samples())
    pq.write_table(pa.table({"key": ["x"], "status": ["success"]}), tmp_path / "00000.parquet")
    (tmp_path / "00000_stats.json").write_text("{}")
    shards, _ = inspect_shards(str(tmp_path), "caption")
    assert [(s.name, s.format) for s in shards] == [("00000", "webdataset")]
    with pytest.raises(InputError, match="needs questions"):
        inspect_shards(str(tmp_path), "vqa")
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "other.parquet")
    (tmp_path / "loose.jpg").write_bytes(encoded(10, 10, "JPEG"))
    with pytest.raises(InputError, match=r"mixes kinds of input \(1 .parquet files, 1 .tar files, 1 image files\)"):
        inspect_shards(str(tmp_path), "caption")

# --- the caption job on real img2dataset output ------------------------------------------------

@pytest.fixture(scope="module")
def img2dataset_output(tmp_path_factory):
    """img2dataset downloading from an HTTP server on loopback (one dead link among the URLs),
    writing WebDataset shards of 4 samples (so 7 URLs give 2 tars and their sidecars)."""
    root = tmp_path_factory.mktemp("img2dataset")
    pictures = root / "pictures"
    pictures.mkdir()
    for i in range(PICTURES):
        (pictures / f"p{i}.jpg").write_bytes(encoded(40 + 10 * i, 60, "JPEG", seed=i))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=pictures, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=60)
        urls = [f"http://127.0.0.1:{port}/p{i}.jpg" for i in range(PICTURES)]
        urls.insert(2, f"http://127.0.0.1:{port}/dead-link.jpg")
        pq.write_table(pa.table({"url": urls, "caption": [f"alt text {i}" for i in range(len(urls))]}),
                       root / "urls.parquet")
        result = subprocess.run(
            [shutil.which("img2dataset") or "img2dataset", "--url_list", str(root / "urls.parquet"),
             "--input_format", "parquet", "--url_col", "url", "--caption_col", "caption",
             "--output_folder", str(root / "shards"), "--output_format", "webdataset",
             "--processes_count", "1", "--thread_count", "4", "--resize_mode", "no",
             "--number_sample_per_shard", "4", "--enable_wandb", "False"],
            capture_output=True, text=True, timeout=300,
            # No update check over the network from albumentations (an img2dataset dependency).
            env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    return root / "shards"

def tar_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return list(dict.fromkeys(wd.split_member_name(m.name)[0] for m in tar.getmembers()))

def test_caption_job_on_img2dataset_shards_and_broken_tars(img2dataset_output, tmp_path, tiny_next_path):
    """img2dataset's two tars (the dead link is absent from them: it never became a sample), plus a tar
    with a sample lacking its image and one with corrupt bytes, and a truncated tar: one run, then a rerun."""
    inputs = tmp_path / "in"
    shutil.copytree(img2dataset_output, inputs)
    write_tar(inputs / "extra" / "bad.tar", bad_samples())
    truncated_copy(inputs / "extra" / "bad.tar", inputs / "extra" / "cut.tar")
    downloaded = {name: tar_keys(inputs / f"{name}.tar") for name in ("00000", "00001")}
    assert sum(len(keys) for keys in downloaded.values()) == PICTURES  # 7 URLs, one dead

    out = tmp_path / "out"
    cmd = caption_cmd("--input", str(inputs), "--output", str(out), "--model", str(tiny_next_path),
                      "--num-gpus", "0", "--max-new-tokens", "2", "--prompt", "Say what you see.")
    first = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]

    tables = {p.stem: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}
    assert sorted(tables) == ["00000", "00001", "extra__bad", "extra__cut"]
    for name, keys in downloaded.items():
        rows = tables[name].to_pylist()
        assert [r["id"] for r in rows] == keys and [r["error"] for r in rows] == [None] * len(keys)
        assert all(r["source_shard"] == f"file://{inputs}/{name}.tar" for r in rows)
    bad = {r["id"]: r["error"] for r in tables["extra__bad"].to_pylist()}
    assert list(bad) == ["bad/ok-0", "bad/no-image", "bad/corrupt", "bad/ok-1"]
    assert bad["bad/ok-0"] is None and bad["bad/ok-1"] is None
    assert bad["bad/no-image"].startswith("missing image: the sample has no jpg/jpeg/png/webp member")
    assert bad["bad/corrupt"].startswith("undecodable image")
    cut = tables["extra__cut"].to_pylist()
    assert [(r["id"], (r["error"] or "").split(":")[0]) for r in cut] == [
        ("bad/ok-0", ""), ("bad/no-image", "missing image"), ("bad/corrupt", "unreadable shard")]
    summary = json.loads((out / "_summary.json").read_text())
    # The same keys in bad.tar and cut.tar: ids are unique per tar, as in the dataset they come from.
    assert summary["items"] == PICTURES + 4 + 3 and summary["errors"] == 4
    assert summary["shards"] == {"total": 4, "written_this_run": 4, "already_complete": 0, "failed": 0}

    again = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["shards"] == {"total": 4, "written_this_run": 0, "already_complete": 4, "failed": 0}
    assert summary["items"] == PICTURES + 7

def test_caption_job_on_tars_on_s3(ray_local, bucket, tiny_next_path, tmp_path, monkeypatch):
    """Tars on the S3 server: the good and bad samples, a truncated tar, a file that is no tar, and a
    plain tar. Night 2, after bad.tar is re-exported (as many samples, other ones), cut.tar deleted
    and new.tar added: exactly bad.tar and new.tar are redone, the plain tar is not even read again,
    cut.tar's output is named and left out, and the summary counts the input's samples."""
    import s3fs

    from pipeline.job.run import run_job
    from pipeline.settings import JobSettings

    local = tmp_path / "tars"
    write_tar(local / "bad.tar", bad_samples())
    truncated_copy(local / "bad.tar", local / "cut.tar")
    (local / "junk.tar").write_bytes(b"no tar here" * 100)
    write_tar(local / "plain.tar", [{"__key__": f"plain-{i}", "jpg": encoded(30, 40, "JPEG", seed=i)} for i in range(2)])
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(local) + "/", f"{bucket}/in/".removeprefix("s3://"), recursive=True)

    settings = JobSettings(task="caption", input=f"{bucket}/in", output=f"{bucket}/out", model=str(tiny_next_path),
                           num_gpus=0, max_new_tokens=2)
    summary = run_job(settings)
    assert summary["shards"] == {"total": 4, "written_this_run": 3, "already_complete": 0, "failed": 1}
    assert summary["failed_shards"][0]["shard"] == f"{bucket}/in/junk.tar"
    assert summary["failed_shards"][0]["reason"].startswith("unreadable tar")
    with fs.open(f"{bucket}/out/bad.parquet".removeprefix("s3://"), "rb") as f:
        rows = pq.read_table(f).to_pylist()
    assert [r["id"] for r in rows] == ["bad/ok-0", "bad/no-image", "bad/corrupt", "bad/ok-1"]
    assert [(r["error"] or "ok").split(":")[0] for r in rows] == ["ok", "missing image", "undecodable image", "ok"]
    assert all(r["source_shard"] == f"{bucket}/in/bad.tar" for r in rows)
    with fs.open(f"{bucket}/out/cut.parquet".removeprefix("s3://"), "rb") as f:
        cut = pq.read_table(f).to_pylist()
    assert [(r["id"], (r["error"] or "ok").split(":")[0]) for r in cut] == [
        ("bad/ok-0", "ok"), ("bad/no-image", "missing image"), ("bad/corrupt", "unreadable shard")]
    assert summary["items"] == 9 and summary["errors"] == 4

    reexported = [{"__key__": f"again-{i}", "png": encoded(20, 30 + i, "PNG", seed=40 + i)} for i in range(4)]
    fs.put(write_tar(local / "again.tar", reexported), f"{bucket}/in/bad.tar".removeprefix("s3://"))
    fs.rm(f"{bucket}/in/cut.tar".removeprefix("s3://"))
    fs.put(write_tar(local / "new.tar", bad_samples()[:1]), f"{bucket}/in/new.tar".removeprefix("s3://"))
    counted = []
    count = wd.count_samples
    monkeypatch.setattr(wd, "count_samples", lambda where: counted.append(where.name) or count(where))
    night2 = run_job(settings)
    assert night2["shards"] == {"total": 4, "written_this_run": 2, "already_complete": 1, "failed": 1}
    assert sorted(counted) == ["bad.tar", "junk.tar", "new.tar"]  # plain.tar's output vouches for it as it is
    assert night2["input_changes"]["redone_examples"] == ["bad"] and night2["input_changes"]["new_shards"] == 1
    assert night2["input_changes"]["removed_examples"] == ["cut"]
    with fs.open(f"{bucket}/out/bad.parquet".removeprefix("s3://"), "rb") as f:
        assert pq.read_table(f).column("id").to_pylist() == [f"again-{i}" for i in range(4)]
    assert night2["this_run"]["rows_processed"] == 5
    assert night2["items"] == 4 + 2 + 1 and night2["errors"] == 0

def test_a_mixed_input_exits_2_with_one_line(tmp_path, tiny_next_path):
    write_tar(tmp_path / "in" / "a.tar", bad_samples())
    (tmp_path / "in" / "loose.png").write_bytes(encoded(10, 10))
    result = subprocess.run(caption_cmd("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                        "--model", str(tiny_next_path)),
                            capture_output=True, text=True, env=job_env(), timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mixes kinds of input (1 .tar files, 1 image files); point --input at one kind" in result.stderr
