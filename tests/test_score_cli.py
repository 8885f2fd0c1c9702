"""``python -m pipeline.score`` end to end on small Parquet files in each benchmark's hub layout:
every input row and column comes back in order with a float64 ``score``, the last line of
standard output is the aggregates' JSON, and input that cannot be scored exits 2 in one line
with nothing written."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import score

from .benchmark_layouts import LAYOUTS


def run(capsys, *argv):
    code = score.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_hub_layout_end_to_end(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(score, "BATCH_ROWS", 2)  # several batches a file
    table, scores, aggregates = LAYOUTS[name]()
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=3)
    code, out, err = run(capsys, "--benchmark", name, tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "--json")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 1 and json.loads(out) == pytest.approx(aggregates, abs=1e-12)
    scored = pq.read_table(tmp_path / "out.parquet")
    assert scored.schema == table.schema.append(pa.field("score", pa.float64()))
    assert scored.drop_columns(["score"]).equals(table)  # every row and column, in order
    assert scored.column("score").to_pylist() == pytest.approx(scores, abs=1e-12)


def test_folders_renamed_columns_and_the_readable_summary(tmp_path, capsys):
    table, scores, aggregates = LAYOUTS["chartqa"]()
    table = table.rename_columns(["split" if c == "type" else "prediction" if c == "text" else c for c in table.column_names])
    (tmp_path / "in" / "part").mkdir(parents=True)
    pq.write_table(table.slice(0, 1), tmp_path / "in" / "a.parquet")
    pq.write_table(table.slice(1), tmp_path / "in" / "part" / "b.parquet")
    pq.write_table(table.slice(0, 1), tmp_path / "in" / "_hidden.parquet")  # not data
    code, out, _ = run(capsys, "--benchmark", "chartqa", tmp_path / "in", "-o", tmp_path / "out",
                       "--column", "type=split", "--text-column", "prediction")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("chartqa (chartqa): 4 rows scored") and "relaxed_overall: 0.7500" in out
    assert json.loads(lines[-1]) == aggregates
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == \
        ["a.parquet", "part", "part/b.parquet"]
    back = pa.concat_tables([pq.read_table(tmp_path / "out" / "a.parquet"), pq.read_table(tmp_path / "out" / "part" / "b.parquet")])
    assert back.column("score").to_pylist() == scores and back.drop_columns(["score"]).equals(table)


def test_an_input_score_column_is_replaced_where_it_stands(tmp_path, capsys):
    table, scores, _ = LAYOUTS["gqa"]()
    table = table.add_column(0, "score", pa.array(["stale"] * table.num_rows))
    pq.write_table(table, tmp_path / "in.parquet")
    code, _, _ = run(capsys, "--benchmark", "gqa", tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "--json")
    scored = pq.read_table(tmp_path / "out.parquet")
    assert code == 0 and scored.column_names == table.column_names and scored.column("score").to_pylist() == scores
    (tmp_path / "folder").mkdir()  # a file into an existing folder keeps its name there
    assert run(capsys, "--benchmark", "gqa", tmp_path / "in.parquet", "-o", tmp_path / "folder", "--json")[0] == 0
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["in.parquet"]


def test_bad_input_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys):
    table, _, _ = LAYOUTS["pope"]()
    pq.write_table(table.drop_columns(["answer"]), tmp_path / "no-answer.parquet")
    code, out, err = run(capsys, "--benchmark", "pope", tmp_path / "no-answer.parquet", "-o", tmp_path / "out.parquet")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert "needs a column 'answer'" in err and "--answers-column COLUMN" in err
    assert not (tmp_path / "out.parquet").exists()

    pq.write_table(table.rename_columns(["label" if c == "answer" else c for c in table.column_names]), tmp_path / "label.parquet")
    code, out, _ = run(capsys, "--benchmark", "pope", tmp_path / "label.parquet", "--answers-column", "label", "--json")
    assert code == 0 and json.loads(out)["accuracy"] == pytest.approx(2 / 6)
    # A value the benchmark cannot score, in the second file, stops everything before a file is moved in place.
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "1.parquet")
    bad = table.set_column(table.column_names.index("answer"), "answer", pa.array(["yes", "no", "maybe", "no", "no", "no"]))
    pq.write_table(bad, tmp_path / "in" / "2.parquet")
    code, _, err = run(capsys, "--benchmark", "pope", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 2 and "2.parquet row 2: `answer` is 'maybe'" in err and len(err.splitlines()) == 1
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))

    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    for argv in ([tmp_path / "junk.parquet"], [tmp_path / "missing"], [tmp_path / "in", "-o", tmp_path / "in" / "out"],
                 [tmp_path / "in", "--column", "type"], [tmp_path / "in", "--column", "nope=answer"]):
        code, _, err = run(capsys, "--benchmark", "pope", *argv)
        assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, (argv, err)
    assert run(capsys, "--benchmark", "pope", tmp_path / "missing")[2] == f"error: input {tmp_path / 'missing'} does not exist\n"

    mme, _, _ = LAYOUTS["mme"]()
    pq.write_table(mme.slice(0, 3), tmp_path / "unpaired.parquet")  # the second image has one question
    code, _, err = run(capsys, "--benchmark", "mme", tmp_path / "unpaired.parquet", "-o", tmp_path / "mme.parquet")
    assert code == 2 and "in pairs" in err and not (tmp_path / "mme.parquet").exists()


def test_empty_input_and_all_null_predictions(tmp_path, capsys):
    table, _, _ = LAYOUTS["gqa"]()
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    code, _, err = run(capsys, "--benchmark", "gqa", tmp_path / "empty.parquet")
    assert code == 2 and "holds no rows" in err
    nulls = table.set_column(table.column_names.index("text"), "text", pa.nulls(table.num_rows))  # Arrow type null
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    code, out, _ = run(capsys, "--benchmark", "gqa", tmp_path / "nulls.parquet", "--json")
    assert code == 0 and json.loads(out) == {"accuracy": 0.0}


def test_s3_in_and_out(bucket, capsys):
    import s3fs

    table, scores, aggregates = LAYOUTS["docvqa"]()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with fs.open(f"{bucket}/in/0.parquet", "wb") as f:
        pq.write_table(table, f)
    code, out, err = run(capsys, "--benchmark", "docvqa", f"{bucket}/in", "-o", f"{bucket}/out", "--json")
    assert code == 0, err
    assert json.loads(out) == pytest.approx(aggregates)
    with fs.open(f"{bucket}/out/0.parquet", "rb") as f:
        assert pq.read_table(f).column("score").to_pylist() == pytest.approx(scores)
    assert fs.ls(f"{bucket}/out") == [f"{bucket}/out/0.parquet".removeprefix("s3://")]


def test_runs_as_a_module(tmp_path):
    table, _, aggregates = LAYOUTS["scienceqa_img"]()
    pq.write_table(table, tmp_path / "in.parquet")
    done = subprocess.run([sys.executable, "-m", "pipeline.score", "--benchmark", "scienceqa_img", str(tmp_path / "in.parquet")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == aggregates


def test_hired_score_is_the_same_command(tmp_path, capsys):
    import pipeline.cli

    table, scores, aggregates = LAYOUTS["textvqa"]()
    pq.write_table(table, tmp_path / "in.parquet")
    assert pipeline.cli.main(["score", "--benchmark", "textvqa", str(tmp_path / "in.parquet"), "-o",
                              str(tmp_path / "out") + "/", "--json"]) == 0  # a trailing slash: into that folder
    assert json.loads(capsys.readouterr().out) == pytest.approx(aggregates)
    assert pq.read_table(tmp_path / "out" / "in.parquet").column("score").to_pylist() == pytest.approx(scores)
    with pytest.raises(SystemExit):
        pipeline.cli.main(["score", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: hired score") and "HIRED_IO_RETRY_SECONDS" in text and "4  the output" in text


class Flaky:
    """A local filesystem whose streams fail the way a store's connection does: the opens for
    reading numbered in ``read_opens`` (from 1, in order) and for writing in ``write_opens`` give
    files that break at their first read or write."""

    def __init__(self, read_opens=(), write_opens=()):
        import fsspec

        self.fs, self.breaking = fsspec.filesystem("file"), {"r": read_opens, "w": write_opens}
        self.opened, self.broken = {"r": 0, "w": 0}, 0

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open(self, path, mode="rb", **options):
        kind = "w" if "w" in mode else "r"
        self.opened[kind] += 1
        handle = self.fs.open(path, mode, **options)
        return _Breaking(handle, self) if self.opened[kind] in self.breaking[kind] else handle


class _Breaking:
    """Breaks at its ``calls``-th read or write: a write part-way through a file, after rows were scored."""

    def __init__(self, handle, owner, calls=3):
        self.handle, self.owner, self.calls = handle, owner, calls

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def read(self, *args):
        self._break()

    def write(self, data):
        self.calls -= 1
        if self.calls:
            return self.handle.write(data)
        self._break()

    def _break(self):
        self.owner.broken += 1
        raise ConnectionResetError("connection reset by peer")


class Always:
    def __contains__(self, item):
        return True


def test_storage_that_falters_is_retried_by_the_one_policy(tmp_path, monkeypatch):
    """Reads and writes go through the locations' retry policy: a footer or a stream of batches that
    breaks is read again, a scored file whose write breaks is scored and written again from its
    start, and what comes out is what an unbroken store gives; a store that stays down is
    StorageUnavailable (exit 4), with nothing written."""
    from pipeline.benchmarks import BENCHMARKS
    from pipeline.errors import StorageUnavailable
    from pipeline.io.location import Location
    from pipeline.io.retry import RetryPolicy

    table, scores, aggregates = LAYOUTS["pope"]()
    (tmp_path / "in").mkdir()
    for i in range(3):
        pq.write_table(table, tmp_path / "in" / f"{i}.parquet", row_group_size=2)
    fast = RetryPolicy(window_s=30, first_delay_s=0.01, max_delay_s=0.02)
    pope = BENCHMARKS["pope"]
    monkeypatch.setattr(score, "BATCH_ROWS", 2)  # three batches a file: a write breaks after rows were folded in
    # Reads: three footers, then each file's batches; a broken stream is opened again.
    for reads, writes in (({2}, ()), ({4, 6}, ()), ((), {1, 3}), ({5}, {2})):
        flaky = Flaky(reads, writes)
        out = tmp_path / f"out-{len(reads)}-{len(writes)}-{min(reads, default=0)}"
        result, rows = score.rescore(pope, Location(flaky, str(tmp_path / "in"), fast), Location(flaky, str(out), fast))
        assert flaky.broken == len(reads) + len(writes) and (result, rows) == (pytest.approx(aggregates), 18)
        for i in range(3):
            assert pq.read_table(out / f"{i}.parquet").column("score").to_pylist() == scores
        assert sorted(p.name for p in out.iterdir()) == ["0.parquet", "1.parquet", "2.parquet"]  # no partial file left
    down = Flaky(write_opens=Always())
    with pytest.raises(StorageUnavailable, match="connection reset by peer"):
        score.rescore(pope, Location(down, str(tmp_path / "in"), fast),
                      Location(down, str(tmp_path / "never"), RetryPolicy(window_s=0.05, first_delay_s=0.01)))
    assert not any(p.is_file() for p in (tmp_path / "never").rglob("*"))
