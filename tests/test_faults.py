"""Nothing lost under faults and bad input: every input row ends as exactly one output row (a result,
or an error with its reason), and a rerun finishes what a failure interrupted. Each fault is made
to happen for real: bad bytes, broken shards, killed workers, injected CUDA OOMs, an S3 server
stopped mid-run, read-only credentials."""

import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from hired.geometry import anyres_layout
from hired.tiny import LLAVA_NEXT_PINPOINTS
from pipeline.job.run import run_job
from pipeline.settings import JobSettings

from .data import INPUT_SCHEMA, encoded, truncated_jpeg, write_shard
from .servers import start_s3

REPO = Path(__file__).resolve().parent.parent


def n_tokens(height, width):
    return anyres_layout((height, width), LLAVA_NEXT_PINPOINTS, 336, 14).grid_tokens


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def saved(picture: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """A 60x20 (landscape) JPEG whose EXIF says: rotate 90 degrees to view (upright it is 20x60)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return saved(Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 60, 3), dtype=np.uint8)), "JPEG", exif=exif)


# id -> (row, expected error prefix or None, expected visual_tokens_full for good rows)
def bad_input_rows():
    long_prompt = " ".join(["sky"] * 5000)  # the tiny model's context is 4096 positions
    cases = [
        ({"image": truncated_jpeg()}, "undecodable image", None),
        ({"image": np.random.default_rng(0).bytes(3000)}, "undecodable image", None),
        ({"image": b""}, "empty image", None),
        ({"image": b"%PDF-1.4 not a picture\n" * 20}, "undecodable image", None),
        ({"image": png_header_only(100_000, 100_000)}, "image too large: 10000000000 pixels, over the limit of 64000000", None),
        ({}, "missing field: neither image nor image_uri is set", None),
        ({"image": encoded(1, 1)}, None, n_tokens(1, 1)),
        ({"image": encoded(1, 4000)}, None, n_tokens(1, 4000)),
        ({"image": encoded(4000, 1)}, None, n_tokens(4000, 1)),
        ({"image": saved(Image.new("L", (64, 48), 90), "PNG")}, None, n_tokens(48, 64)),
        ({"image": saved(Image.new("CMYK", (64, 48), (10, 200, 30, 0)), "JPEG")}, None, n_tokens(48, 64)),
        ({"image": saved(Image.new("RGBA", (64, 48), (255, 0, 0, 0)), "PNG")}, None, n_tokens(48, 64)),
        ({"image": saved(Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)), "PNG")}, None, n_tokens(48, 64)),
        ({"image": saved(Image.new("P", (64, 48), 3), "GIF")}, None, n_tokens(48, 64)),
        ({"image": rotated_jpeg()}, None, n_tokens(60, 20)),  # upright: 60 high, 20 wide
        ({"image": encoded(100, 100), "prompt": long_prompt}, "prompt too long", None),
        ({"image": encoded(80, 120, "WEBP")}, None, n_tokens(80, 120)),
    ]
    rows, expected = [], {}
    for k, (row, error, tokens) in enumerate(cases):
        rows.append({"id": f"case-{k:02d}", **row})
        expected[f"case-{k:02d}"] = (error, tokens)
    rows.append({"id": "case-00", "image": encoded(50, 50)})  # a duplicate id: kept and reported, not merged
    rows.append({"id": None, "image": encoded(50, 50)})  # a null id
    return rows, expected


def test_bad_input_and_bad_shards(ray_local, bucket, tiny_next_path):
    rows, expected = bad_input_rows()
    write_shard(f"{bucket}/in/mixed.parquet", rows, row_group_size=7)
    write_shard(f"{bucket}/in/empty.parquet", [])
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{bucket}/in/broken.parquet".removeprefix("s3://"), b"PAR1" + b"\x00" * 300 + b"PAR1")
    summary = run_job(JobSettings(task="caption", input=f"{bucket}/in", output=f"{bucket}/out",
                                  model=str(tiny_next_path), num_gpus=0, max_new_tokens=3))

    with fs.open(f"{bucket}/out/mixed.parquet".removeprefix("s3://"), "rb") as f:
        out = pq.read_table(f).to_pylist()
    assert len(out) == len(rows)  # one output row per input row, duplicates and nulls included
    assert [r["row_index"] for r in out] == list(range(len(rows)))
    for row in out[: len(expected)]:
        error, tokens = expected[row["id"]]
        if error is None:
            assert row["error"] is None, (row["id"], row["error"])
            assert row["visual_tokens_full"] == tokens and isinstance(row["text"], str)
        else:
            assert row["error"] is not None and row["error"].startswith(error), (row["id"], row["error"])
            assert row["text"] is None
    assert out[-2]["id"] == "case-00" and out[-2]["error"] is None
    assert out[-1]["id"] is None and out[-1]["error"] == "missing field: id is null"
    with fs.open(f"{bucket}/out/empty.parquet".removeprefix("s3://"), "rb") as f:
        assert pq.read_table(f).num_rows == 0  # an empty shard completes, with no rows
    assert not fs.exists(f"{bucket}/out/broken.parquet".removeprefix("s3://"))

    assert summary["duplicate_ids"] == 1 and summary["duplicate_id_examples"] == ["case-00"]
    assert summary["shards"] == {"total": 3, "written_this_run": 2, "already_complete": 0, "failed": 1}
    (failure,) = summary["failed_shards"]
    assert failure["shard"].endswith("/in/broken.parquet") and "unreadable Parquet file" in failure["reason"]
    assert summary["items"] == len(rows) and summary["errors"] == sum(e is not None for e, _ in expected.values()) + 1


def job_env(**extra):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def caption(*args, env, timeout=600, check=True):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py"), *args], capture_output=True,
                            text=True, env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def shard_dir(root: Path, shards: int, rows: int) -> Path:
    for s in range(shards):
        write_shard(str(root / f"part-{s}.parquet"),
                    [{"id": f"{s}-{i}", "image": encoded(40 + 5 * i, 70, seed=10 * s + i)} for i in range(rows)])
    return root


def ids_in(out: Path) -> list:
    return sorted(i for p in out.glob("*.parquet") for i in pq.read_table(p).column("id").to_pylist())


def test_a_killed_generation_actor_and_injected_cuda_oom_lose_nothing(tmp_path, tiny_next_path):
    """The generation actor dies in its first call (Ray restarts it and redoes the batch); the new actor
    then runs out of memory in its 2nd, 5th and 6th calls, so it splits batches, lowers its batch size
    and turns one item that fails alone into an error row with the reason. Every row is accounted for,
    exactly once, and the batch sizes in the rows show the back-off."""
    inputs, out = shard_dir(tmp_path / "in", 3, 4), tmp_path / "out"
    killed, oomed = tmp_path / "killed", tmp_path / "oomed"
    # Claimed through files, the kill and the first OOM each happen exactly once in the whole job, and
    # the OOM only after the restart (the first actor dies at its 1st call and never makes a 2nd). Each
    # shard is one 4-row batch, so the restarted actor sees 3 batches of 4 in some order:
    #   call 1: 4 rows run | call 2: 4 rows OOM -> calls 3, 4: 2 + 2 run; the batch size drops to 2
    #   call 5: 2 rows OOM -> call 6: 1 row OOM alone (error row), call 7: 1 row runs; the size drops to 1
    #   calls 8, 9: 1 row each
    env = job_env(HIRED_FAULTS=f"generate=kill@1#{killed};generate=oom@2#{oomed};generate=oom@5;generate=oom@6")
    caption("--input", str(inputs), "--output", str(out), "--model", str(tiny_next_path),
            "--num-gpus", "0", "--batch-size", "4", "--max-new-tokens", "2", env=env)
    assert killed.exists() and oomed.exists()
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sorted(r["id"] for r in rows) == sorted(f"{s}-{i}" for s in range(3) for i in range(4))
    (error,) = [r["error"] for r in rows if r["error"]]
    assert error.startswith("out of memory: the item alone in its batch") and "OutOfMemoryError" in error
    assert all(isinstance(r["text"], str) for r in rows if not r["error"])
    assert Counter(r["batch_size"] for r in rows if not r["error"]) == {4: 4, 2: 4, 1: 3}


@pytest.fixture
def own_s3(tmp_path):
    """An S3 server of this test's own, free to be stopped and restarted."""
    server = start_s3(tmp_path / "s3")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=server.endpoint,
                           key=server.env["AWS_ACCESS_KEY_ID"], secret=server.env["AWS_SECRET_ACCESS_KEY"])
    fs.mkdir("flaky")
    yield server, fs
    server.stop()


# botocore retries every call itself for seconds before an error surfaces; one attempt each lets
# the pipeline's own backoff (what is under test) do the retrying, and keeps the test short.
FAIL_FAST = {"AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}


def wait_for_outputs(fs, prefix: str, count: int, process, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        fs.invalidate_cache()
        done = [p for p in fs.ls(prefix) if p.endswith(".parquet")] if fs.exists(prefix) else []
        if len(done) >= count:
            return done
        assert process.poll() is None, "the job ended before storage could be failed"
        assert time.monotonic() < deadline, "no output appeared in time"
        time.sleep(0.1)


@contextmanager
def background_caption(*args, env):
    """The caption job running while the test breaks things around it; killed, with its children, if left running."""
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "caption.py"), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        yield job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)


def flaky_input(fs, model) -> tuple[list[str], list[str]]:
    """Four 2-row shards on the test's own S3 server: the job's arguments (output left to the test) and every id."""
    for s in range(4):
        with fs.open(f"flaky/in/part-{s}.parquet", "wb") as f:
            rows = [{"id": f"{s}-{i}", "image": encoded(40, 60, seed=s * 3 + i)} for i in range(2)]
            pq.write_table(pa.Table.from_pylist(rows, schema=INPUT_SCHEMA), f)
    args = ["--input", "s3://flaky/in", "--model", str(model), "--num-gpus", "0", "--batch-size", "1", "--max-new-tokens", "2"]
    return args, sorted(f"{s}-{i}" for s in range(4) for i in range(2))


def held_after_first_shard(release: Path) -> dict:
    """The driver stands still after writing its first shard until ``release`` exists: S3 goes down then."""
    return {"HIRED_FAULTS": f"shard_written=until:{release}@1"}


def test_a_long_s3_outage_stops_the_run_clearly_and_a_rerun_rides_out_a_short_one(own_s3, tiny_next_path, tmp_path):
    """S3 down for longer than the retries last: the run stops with a clear message, writing nothing
    partial. Once S3 is back the same command is rerun, and S3 goes down again for a few seconds
    after its first shard: retries carry it through, and the job ends with each row exactly once."""
    server, fs = own_s3
    args, all_ids = flaky_input(fs, tiny_next_path)
    args += ["--output", "s3://flaky/out"]
    held = held_after_first_shard(tmp_path / "go-1")
    with background_caption(*args, env=job_env(**server.env, **FAIL_FAST, **held, HIRED_IO_RETRY_SECONDS="6")) as job:
        written = wait_for_outputs(fs, "flaky/out", 1, job)
        server.stop()
        (tmp_path / "go-1").touch()
        log, _ = job.communicate(timeout=600)
    assert job.returncode == 4, log[-4000:]
    assert "storage unavailable" in log and "rerun the same command" in log
    assert "shard(s) were completed and written" in log
    assert "Traceback" not in log.split("error: ")[-1]

    server.start()
    held = held_after_first_shard(tmp_path / "go-2")
    with background_caption(*args, env=job_env(**server.env, **FAIL_FAST, **held, HIRED_IO_RETRY_SECONDS="120")) as job:
        wait_for_outputs(fs, "flaky/out", len(written) + 1, job)
        server.stop()
        (tmp_path / "go-2").touch()
        time.sleep(8)  # the driver's next reads and writes meet the outage
        server.start()
        log, _ = job.communicate(timeout=600)
    assert job.returncode == 0, log[-4000:]
    assert "retrying in" in log  # it did meet the outage
    assert "items 8  ok 8  errors 0" in log
    fs.invalidate_cache()
    rows = [r for p in fs.ls("flaky/out") if p.endswith(".parquet")
            for r in pq.read_table(fs.open(p, "rb")).to_pylist()]
    assert sorted(r["id"] for r in rows) == all_ids and all(r["error"] is None for r in rows)  # exactly once each
    summary = json.loads(fs.cat("flaky/out/_summary.json"))
    assert summary["shards"]["already_complete"] == len(written) and summary["errors"] == 0


def test_unwritable_outputs_are_refused_at_the_start(s3_server, bucket, tiny_next_path):
    write_shard(f"{bucket}/in/a.parquet", [{"id": "a", "image": encoded(40, 40)}])
    reader = caption("--input", f"{bucket}/in", "--output", f"{bucket}/out", "--model", str(tiny_next_path),
                     "--num-gpus", "0", env=job_env(**s3_server.reader_env), check=False, timeout=120)
    assert reader.returncode == 2 and "cannot write to the output" in reader.stderr
    missing = caption("--input", f"{bucket}/in", "--output", "s3://no-such-bucket-hired/out", "--model",
                      str(tiny_next_path), "--num-gpus", "0", env=job_env(**s3_server.env), check=False, timeout=120)
    assert missing.returncode == 2 and "the output bucket no-such-bucket-hired does not exist" in missing.stderr
    for result in (reader, missing):
        assert "Traceback" not in result.stderr and "loaded" not in result.stdout + result.stderr


def test_credentials_never_leak(s3_server, bucket, tiny_next_path, tmp_path):
    """The S3 keys appear nowhere: not in what the job prints, Ray's logs, the rows, the summary."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{bucket}/pics/ok.png".removeprefix("s3://"), encoded(50, 70))
    write_shard(f"{bucket}/in/a.parquet", [
        {"id": "fetched", "image_uri": f"{bucket}/pics/ok.png"},
        {"id": "missing", "image_uri": f"{bucket}/pics/nope.png"},
        {"id": "broken", "image": truncated_jpeg()},
    ])
    ray_tmp = Path(f"/tmp/rl{os.getpid()}")  # Ray's socket paths must stay short
    try:
        result = caption("--input", f"{bucket}/in", "--output", f"{bucket}/out", "--model", str(tiny_next_path),
                         "--num-gpus", "0", "--max-new-tokens", "2", env=job_env(**s3_server.env, RAY_TMPDIR=str(ray_tmp)))
        texts = {"stdout": result.stdout, "stderr": result.stderr}
        logs = [p for p in ray_tmp.rglob("*") if p.is_file()]
        assert any(p.suffix in (".log", ".out", ".err") for p in logs), "Ray's logs were not where expected"
        for p in logs:
            texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
        for p in fs.find(f"{bucket}/out".removeprefix("s3://")):
            texts[p] = fs.cat(p).decode("utf-8", "replace")
        errors = {r["id"]: r["error"] for r in pq.read_table(fs.open(f"{bucket}/out/a.parquet".removeprefix("s3://"), "rb")).to_pylist()}
        assert errors["fetched"] is None and errors["missing"].startswith("cannot fetch image_uri")
        for secret in (s3_server.env["AWS_SECRET_ACCESS_KEY"], s3_server.env["AWS_ACCESS_KEY_ID"]):
            leaks = [where for where, text in texts.items() if secret in text]
            assert not leaks, f"a credential appears in {leaks[:5]}"
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def test_failpoints_are_inert_unless_asked(monkeypatch, tmp_path):
    from pipeline import faults

    monkeypatch.delenv(faults.ENV, raising=False)
    faults.failpoint("generate")  # nothing happens
    assert faults.parse("generate=kill@2#/tmp/x;shard_written=sleep0.5@1%3") == [
        faults.Fault("generate", "kill", 2, None, "/tmp/x"), faults.Fault("shard_written", "sleep0.5", 1, 3, None)]
    with pytest.raises(ValueError, match="bad HIRED_FAULTS entry"):
        faults.parse("generate=explode")
    monkeypatch.setenv(faults.ENV, f"probe=raise@2%2#{tmp_path / 'once'}")
    faults._passes.clear()
    faults.failpoint("probe")  # 1st pass: not due
    with pytest.raises(RuntimeError, match="injected failure at failpoint probe"):
        faults.failpoint("probe")  # 2nd: due, and this process claims the once-file
    faults.failpoint("probe")  # 3rd: not due
    faults.failpoint("probe")  # 4th: due, but the once-file is taken: only one failure in the whole job
    monkeypatch.setenv(faults.ENV, "pause=sleep0.2")
    started = time.monotonic()
    faults.failpoint("pause")  # holds the process, raises nothing
    assert time.monotonic() - started >= 0.2
    release = tmp_path / "go"
    monkeypatch.setenv(faults.ENV, f"hold=until:{release}")
    started = time.monotonic()
    threading.Timer(0.3, release.touch).start()
    faults.failpoint("hold")  # held until the file appears
    assert release.exists() and time.monotonic() - started >= 0.3
    with pytest.raises(ValueError, match="bad HIRED_FAULTS entry"):
        faults.parse("hold=until:")
