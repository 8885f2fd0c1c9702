"""The VQA job with ``--benchmark`` end to end on CPU, over a small shard of each benchmark's hub
layout: the benchmark's columns come through to the output as the input holds them, every row has
its ``score`` (error rows 0), ground truth that cannot be scored is an error row without a score,
and the summary's aggregates are ``pipeline.score``'s over the job's own output. The tiny model
answers with random words, so the scores are checked against the benchmark's rule applied to the
input's own rows, not against expected values."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.cli
from pipeline import score
from pipeline.benchmarks import BENCHMARKS
from pipeline.columns import output_schema
from pipeline.job.run import run_job
from pipeline.settings import ColumnMap, JobSettings

from .benchmark_layouts import LAYOUTS, job_input

# How some layouts are run, to cover the column flags: VQAv2 keyed by its question_id (an int64
# id), ChartQA with its split column under another name.
COLUMNS = {"vqav2": ColumnMap(id="question_id"), "chartqa": ColumnMap(benchmark=(("type", "split"),))}
RENAMED = {"chartqa": {"type": "split"}}


def write_inputs(name, root):
    good, bad = job_input(name)
    renamed = RENAMED.get(name, {})
    for table, file in ((good, "a.parquet"), (bad, "b.parquet")):
        table = table.rename_columns([renamed.get(c, c) for c in table.column_names])
        pq.write_table(table, root / "in" / file, row_group_size=3)
    return good, bad


def benchmark_rows(benchmark, table):
    """The input's rows under the benchmark's column names."""
    return [{c.name: row[c.name] for c in benchmark.columns} for row in table.to_pylist()]


def check_output(name, good, bad, out, summary, capsys):
    benchmark = BENCHMARKS[name]
    kept = pa.schema([good.schema.field(c.name) for c in benchmark.columns])
    id_type = "int64" if name == "vqav2" else "string"
    scored = pq.read_table(out / "a.parquet")
    assert scored.schema.remove_metadata() == output_schema("vqa", id_type, kept)
    # The benchmark's columns as the input has them, values and types, under the benchmark's names.
    assert scored.select(kept.names).equals(good.select(kept.names))
    rows = scored.to_pylist()
    assert rows[0]["error"].startswith("undecodable image") and rows[0]["text"] is None
    for row, truth in zip(rows, benchmark_rows(benchmark, good)):
        assert row["error"] is None or row["error"].startswith("undecodable image")
        assert row["generated_tokens"] is None or 1 <= row["generated_tokens"] <= 2
        assert row["score"] == benchmark.score(row["text"], truth)  # the error row scores 0, as a null answer does
    unscorable = pq.read_table(out / "b.parquet").to_pylist()
    assert all(r["error"].startswith(f"bad ground truth: {name}: ") and r["score"] is None and r["text"] is not None
               for r in unscorable), unscorable

    result = summary["benchmark"]
    assert (result["name"], result["task"], result["error"]) == (name, benchmark.task, None)
    assert (result["scored"], result["unscored"]) == (good.num_rows, bad.num_rows)
    assert summary["errors_by_reason"] == {"undecodable image": 1, "bad ground truth": bad.num_rows}
    assert list(result["aggregates"]) == list(benchmark.keys)
    # pipeline.score over the job's own output (the scorable file) gives the same aggregates, bit for bit.
    assert score.main(["--benchmark", name, str(out / "a.parquet"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result["aggregates"]
    assert json.loads((out / "_summary.json").read_text())["benchmark"] == result


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "pope"])
def test_each_layout_end_to_end(name, ray_local, tmp_path, tiny_next_path, capsys):
    (tmp_path / "in").mkdir()
    good, bad = write_inputs(name, tmp_path)
    out = tmp_path / "out"
    summary = run_job(JobSettings(task="vqa", benchmark=name, input=str(tmp_path / "in"), output=str(out),
                                  model=str(tiny_next_path), num_gpus=0, max_new_tokens=2, preprocess_workers=1,
                                  columns=COLUMNS.get(name, ColumnMap())))
    check_output(name, good, bad, out, summary, capsys)
    if name == "mme":  # sums of category scores, shown as they are
        assert pipeline.cli.main(["summary", str(out)]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("mme ")]
        assert line == [f"mme (lmms-eval mme) over 8 scored rows (2 without a score): "
                        f"perception {summary['benchmark']['aggregates']['perception']:.1f}, "
                        f"cognition {summary['benchmark']['aggregates']['cognition']:.1f}"]
    if name == "docvqa":  # the report states the aggregates under their keys
        assert pipeline.cli.main(["report", str(out), "-o", str(tmp_path / "report.html"), "--sample-rows", "0"]) == 0
        page = (tmp_path / "report.html").read_text()
        anls = summary["benchmark"]["aggregates"]["anls"]
        assert f'<span id="benchmark-anls">{100 * anls:.1f}%</span>' in page
        assert '<span id="benchmark-scored">3</span> (1 without a score' in page


def test_a_benchmark_sweep(ray_local, tmp_path, tiny_next_path, capsys):
    """``hired vqa --benchmark pope --budget 0.2 --strategy hired,none``: every setting scored, and
    sweep.md in the paper's shape with its LLaVA-Next-7B POPE numbers beside ours (the table's
    shape for more settings: tests/test_benchmark_stages.py)."""
    (tmp_path / "in").mkdir()
    good, bad = write_inputs("pope", tmp_path)
    out = tmp_path / "sweep"
    argv = ["vqa", "--benchmark", "pope", "--input", str(tmp_path / "in"), "--output", str(out), "--model",
            str(tiny_next_path), "--num-gpus", "0", "--max-new-tokens", "2", "--preprocess-workers", "1",
            "--strategy", "hired,none", "--budget", "0.2"]
    assert pipeline.cli.main(argv) == 0
    printed = capsys.readouterr().out
    summaries = json.loads((out / "sweep.json").read_text())
    assert [s["sweep_point"]["name"] for s in summaries] == ["hired-0.2", "none"]
    assert [s["sweep_point"]["paper"]["value"] for s in summaries] == [0.870, 0.876]
    for summary in summaries:
        check_output("pope", good, bad, out / summary["sweep_point"]["name"], summary, capsys)
    table = (out / "sweep.md").read_text().splitlines()
    assert "\n".join(table) in printed
    assert table[0] == "| benchmark | aggregate | hired-0.2 | paper | none | paper |"
    f1 = [f"{100 * s['benchmark']['aggregates']['f1']:.1f}" for s in summaries]
    assert table[5] == f"| pope | f1 | {f1[0]} | 87.0 | {f1[1]} | 87.6 |"
    assert table[10].startswith("| setting | accuracy % | precision % | recall % | f1 % | yes_ratio % | kept tokens |")
