"""Nightly runs over a changing dataset, at the level of planning and the driver's writes (no Ray):
a re-exported shard is redone, a removed one is named and not counted, two shards never share an
output file, a growing folder generates only its new files, storage settings that cannot work stop
the run at once naming what to set, a refused run leaves the output as it found it, and progress
is kept where an operator can read it. The same nights as jobs on S3: test_pipeline_e2e (Parquet),
test_webdataset (tars), test_folders (a folder)."""

import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.errors import InputError
from pipeline.io.formats import list_files
from pipeline.io.formats import webdataset as tars
from pipeline.io.location import Location
from pipeline.io.manifest import Manifest, read_manifest, write_manifest
from pipeline.io.outputs import Outputs
from pipeline.job.collect import ShardCollector
from pipeline.job.plan import plan
from pipeline.job.progress import Progress
from pipeline.job.run import tidy
from pipeline.report.data import load_output
from pipeline.settings import JobSettings
from pipeline.summary import summarize_output

from .data import encoded, write_shard
from .test_webdataset import write_tar

REPO = Path(__file__).resolve().parent.parent
RUN = dict(processed_rows=0, processed_generated_tokens=0, wall_s=1.0, extra={"run_id": "r"})


def settings_for(root, **overrides) -> JobSettings:
    return JobSettings(**{"task": "caption", "input": f"{root}/in", "output": f"{root}/out", "model": "m", **overrides})


def rows(prefix: str, count: int, seed: int = 0) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "image": encoded(8, 8 + i, seed=seed + i)} for i in range(count)]


def night(settings: JobSettings, text: str):
    """Plan, and write every pending shard as the job's driver does (each generated row's text is
    ``text``), without Ray; returns the plan."""
    planned = plan(settings)
    collector = ShardCollector(planned.pending, settings)
    for shard in planned.pending:
        if not shard.rows_to_generate:
            collector.flush(shard.uri)
            continue
        carried = {row for row, _, _ in shard.carried}
        generated = [row for row in range(shard.num_rows) if row not in carried]
        ids = [shard.plan[row] if shard.format == "folder" else f"{shard.name}/{row}" for row in generated]
        collector.add(pa.table({"id": ids, "text": [text] * len(generated), "run_id": [text] * len(generated),
                                "source_shard": [shard.uri] * len(generated), "row_index": generated}))
    assert not collector.incomplete()
    tidy(settings, planned, everything_written=True)
    write_manifest(settings.output, Manifest.of(settings.run_id or text, str(settings.input), planned.current))
    return planned


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("bucket")


def test_a_reexported_shard_is_redone_and_said_so(root, caplog):
    """Rewritten under the same name with as many rows but other pictures and ids: redone. The same
    bytes written again (a copy, a touch) are not."""
    write_shard(f"{root}/in/a.parquet", rows("a", 3))
    write_shard(f"{root}/in/b.parquet", rows("b", 3))
    settings = settings_for(root)
    assert len(night(settings, "night 1").pending) == 2
    write_shard(f"{root}/in/b.parquet", rows("b", 3))  # the same rows again
    again = plan(settings)
    assert not again.pending and [s.name for s in again.done] == ["a", "b"]

    write_shard(f"{root}/in/a.parquet", rows("other", 3, seed=50))
    with caplog.at_level(logging.INFO, logger="hired.pipeline"):
        changed = plan(settings)
    assert [s.name for s in changed.pending] == ["a"] and [s.name for s in changed.done] == ["b"]
    assert changed.why == {"a": "changed since its output was written"}
    assert "1 shard(s) redone (changed since its output was written): a" in caplog.text


def test_a_retarred_shard_is_redone_and_an_unchanged_one_is_not_read_again(tmp_path, monkeypatch):
    samples = lambda tag, n: [{"__key__": f"{tag}-{i}", "jpg": encoded(10, 10 + i)} for i in range(n)]  # noqa: E731
    write_tar(tmp_path / "in" / "a.tar", samples("a", 2))
    write_tar(tmp_path / "in" / "b.tar", samples("b", 3))
    settings = settings_for(tmp_path)
    night(settings, "night 1")
    counted = []
    count = tars.count_samples
    monkeypatch.setattr(tars, "count_samples", lambda where: counted.append(where.path) or count(where))
    time.sleep(0.01)  # another modification time, whatever the filesystem's resolution
    write_tar(tmp_path / "in" / "b.tar", samples("other", 3))
    planned = plan(settings)
    assert [s.name for s in planned.pending] == ["b"] and [s.name for s in planned.done] == ["a"]
    assert counted == [str(tmp_path / "in" / "b.tar")]  # a.tar's output records it as it is: no count pass
    assert planned.done[0].num_rows == 2


def test_removed_shards_are_named_left_out_and_pruned(tmp_path, caplog):
    """Three shards of three rows; then one deleted and one added: the removed one is named, the
    summary and the report count exactly the 9 rows the input holds, --prune sets it aside."""
    for name in ("a", "b", "c"):
        write_shard(str(tmp_path / "in" / f"{name}.parquet"), rows(name, 3))
    settings = settings_for(tmp_path, run_id="night-1")
    night(settings, "night 1")
    (tmp_path / "in" / "c.parquet").unlink()
    write_shard(str(tmp_path / "in" / "d.parquet"), rows("d", 3))
    out = Location.resolve(str(tmp_path / "out"))
    with caplog.at_level(logging.INFO, logger="hired.pipeline"):
        planned = night(settings_for(tmp_path, run_id="night-2"), "night 2")
    assert [s.name for s in planned.pending] == ["d"] and planned.removed == ["c"]
    assert "1 result file(s) have no shard in the input any more (removed since they were written): c.parquet" in caplog.text
    summary = summarize_output(out, manifest=read_manifest(out), **RUN)
    assert summary["items"] == 9 and summary["left_out_results"] == {
        "count": 1, "examples": ["c.parquet: its input shard is no longer in the input"]}
    assert summarize_output(out, **RUN)["items"] == 12  # the files as they lie, without the manifest
    report = load_output(str(out))
    assert report.rows == 9 and [Path(p).name for p in report.files] == ["a.parquet", "b.parquet", "d.parquet"]
    assert any("c.parquet: its input shard is no longer in the input" in note for note in report.notes)

    pruned = settings_for(tmp_path, run_id="night-3", prune=True)
    planned = plan(pruned)
    assert not planned.pending and planned.removed == ["c"]
    moved = tidy(pruned, planned, everything_written=True)
    assert moved == f"file://{tmp_path}/out/_removed/night-3"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["a.parquet", "b.parquet", "d.parquet"]
    assert pq.read_table(tmp_path / "out" / "_removed" / "night-3" / "c.parquet").column("id").to_pylist() == [
        "c/0", "c/1", "c/2"]
    assert not plan(pruned).removed


def test_two_shards_that_would_write_one_output_stop_the_run(tmp_path):
    write_shard(str(tmp_path / "in" / "sub" / "x.parquet"), rows("a", 1))
    write_shard(str(tmp_path / "in" / "sub__x.parquet"), rows("b", 1))
    with pytest.raises(InputError) as refused:
        plan(settings_for(tmp_path))
    assert str(refused.value) == (f"input shards file://{tmp_path}/in/sub/x.parquet and file://{tmp_path}/in/"
                                  "sub__x.parquet would both write sub__x.parquet (the output names a shard by its "
                                  "path with '/' as '__'): rename one of them")
    assert not (tmp_path / "out").exists()


def test_a_growing_folder_generates_only_its_new_and_changed_files(tmp_path, caplog):
    """10,000 photos captioned; then 10 added at random places, 2 rewritten, 3 removed: the next
    night generates those 12 (0.12%), carries the other results over, and counts 10,007 items."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = random.Random(0)
    names = sorted({f"{rng.choice('abcdefghij')}{rng.randrange(10**6):06d}.jpg" for _ in range(10_300)})[:10_000]
    for name in names:
        (folder / name).write_bytes(name.encode())
    settings = settings_for(tmp_path)
    first = night(settings, "night 1")
    assert 5 <= len(first.pending) <= 20 and first.rows_to_generate == 10_000
    assert not plan(settings).pending

    added = [name.replace(".jpg", "-added.jpg") for name in rng.sample(names, 10)]
    rewritten, removed = rng.sample(names, 2), rng.sample(names, 3)
    for name in added:
        (folder / name).write_bytes(b"a new photo")
    for name in rewritten:
        (folder / name).write_bytes(b"the same photo, edited")
    for name in removed:
        if name not in rewritten:
            (folder / name).unlink()
    current = sorted(set(names) - set(removed) | set(rewritten) | set(added))
    with caplog.at_level(logging.INFO, logger="hired.pipeline"):
        second = night(settings, "night 2")
    assert second.rows_to_generate == 10 + len(rewritten) <= 0.02 * len(current)
    assert second.files == {"new": 10, "changed": 2, "removed": len(set(removed) - set(rewritten)),
                            "carried_over": sum(s.num_rows for s in second.pending) - 12}
    assert len(second.pending) <= 15 and len(second.done) >= len(first.pending) - 15
    assert "folder: 10 new and 2 changed file(s) to generate" in caplog.text

    results = {}
    for path in sorted((tmp_path / "out").glob("*.parquet")):
        table = pq.read_table(path)
        assert table.column("row_index").to_pylist() == list(range(table.num_rows))
        results.update(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    assert sorted(results) == current  # every current file once: replaced chunks' outputs are gone
    fresh = set(added) | set(rewritten)
    assert {name for name, text in results.items() if text == "night 2"} == fresh
    third = plan(settings)
    assert not third.pending and not third.removed and not third.superseded
    summary = summarize_output(settings.output, manifest=read_manifest(settings.output), **RUN)
    assert summary["items"] == len(current) and summary["duplicate_ids"] == 0


def without_credentials(monkeypatch, tmp_path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for


def s3_location(uri: str, **credentials) -> Location:
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **credentials)
    return Location(fs, uri.removeprefix("s3://"))


def test_storage_settings_that_cannot_work_are_named_at_once(s3_server, bucket, tmp_path, monkeypatch):
    """Wrong credentials, a bucket that does not exist, no credentials at all: InputError naming
    what to set, on the input side and the output side, with no retry."""
    write_shard(f"{bucket}/in/a.parquet", rows("a", 1))
    wrong = dict(key=s3_server.env["AWS_ACCESS_KEY_ID"], secret="not-the-secret")
    with pytest.raises(InputError, match="listing the input .*: the store refused these credentials .*check "
                                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        list_files(s3_location(f"{bucket}/in", **wrong))
    with pytest.raises(InputError, match="listing the input s3://no-such-bucket-hired/in: the bucket "
                                         "no-such-bucket-hired does not exist"):
        list_files(s3_location("s3://no-such-bucket-hired/in"))
    without_credentials(monkeypatch, tmp_path)
    started = time.monotonic()
    for check in (lambda: list_files(s3_location(f"{bucket}/in")),
                  lambda: Outputs(s3_location(f"{bucket}/out")).check_writable()):
        with pytest.raises(InputError, match="no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"):
            check()
    assert time.monotonic() - started < 60  # far inside the 120 s a transient failure is retried for


def test_no_credentials_exit_2_in_one_line_and_leave_no_output(s3_server, bucket, tmp_path, tiny_next_path):
    write_shard(f"{bucket}/in/a.parquet", rows("a", 1))
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    out = tmp_path / "nightly" / "out"
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "caption.py"), "--input", f"{bucket}/in",
                             "--output", str(out), "--model", str(tiny_next_path), "--num-gpus", "0"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert lines == [f"error: listing the input {bucket}/in: no AWS credentials found: set AWS_ACCESS_KEY_ID "
                     "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials), or run where an "
                     "instance role provides them"]
    assert not (tmp_path / "nightly").exists()  # the output's folders were not made


def test_checking_the_output_creates_nothing(tmp_path):
    deep = tmp_path / "a" / "b" / "out"
    Outputs(Location.resolve(str(deep))).check_writable()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(InputError, match="is under a file"):
        Outputs(Location.resolve(str(tmp_path / "a-file" / "out"))).check_writable()


def test_progress_over_the_last_minute_and_the_time_left():
    now = [1000.0]
    progress = Progress(shards_total=4, rows_total=600, already_complete=6, clock=lambda: now[0])
    for _ in range(12):  # 2 minutes at 1 row/s, then 1 minute at 3 rows/s
        now[0] += 10
        progress.rows_arrived(10)
    for _ in range(6):
        now[0] += 10
        progress.rows_arrived(30)
    progress.shard_written()
    assert progress.images_per_s() == pytest.approx(3.0)
    assert progress.eta_s() == pytest.approx((600 - 300) / 3.0)
    assert progress.line() == ("1/4 shards written (6 already complete), 300/600 rows (50%), 3.00 images/s over "
                               "the last minute, ETA 1 min 40 s, elapsed 3 min 00 s")
    fresh = Progress(shards_total=1, rows_total=10, clock=lambda: now[0])
    assert fresh.eta_s() is None and "n/a images/s" in fresh.line()  # nothing to go by yet


def test_summary_of_a_running_output_says_where_the_run_stands(tmp_path, capsys):
    from pipeline import cli

    write_shard(str(tmp_path / "in" / "a.parquet"), rows("a", 2))
    write_shard(str(tmp_path / "in" / "b.parquet"), rows("b", 2))
    settings = settings_for(tmp_path, run_id="tonight")
    planned = night(settings, "tonight")
    out = tmp_path / "out"
    (out / "b.parquet").unlink()  # not written yet
    progress = Progress(2, 4)
    progress.rows_arrived(2)
    progress.shard_written()
    (out / "_runs").mkdir()
    (out / "_runs" / "tonight.json").write_text(json.dumps(
        {"run_id": "tonight", "state": "running", "started_at": "2026-12-01T22:00:00Z",
         "updated_at": "2026-12-01T22:05:00Z", "progress": progress.figures()}))
    assert len(planned.current) == 2
    assert cli.main(["summary", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("run tonight is running (as of 2026-12-01T22:05:00Z): 1/2 shards written "
                                 "(0 already complete), 2/4 rows (50%)")
    assert printed[1].startswith("items 2  ok 2  errors 0")
