"""``--benchmark`` without Ray: the knob and its checks, the columns at plan time (one line naming
the column and the flag), the read stage carrying the benchmark's columns, the benchmark's prompt
reaching the processor, the scoring stage, the summary's aggregates and the sweep's table."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.cli as cli
from pipeline.benchmarks import BENCHMARKS, Aggregator
from pipeline.columns import carried
from pipeline.errors import InputError
from pipeline.io.outputs import META_SETTINGS
from pipeline.job.sweep import sweep_table
from pipeline.settings import ColumnMap, JobSettings
from pipeline.stages.preprocess import Preprocessor, chat_prompt
from pipeline.stages.read import read_rows, read_tasks
from pipeline.stages.score import BenchmarkScoring
from pipeline.summary import summarize
from pipeline.wire import decode_inputs

from .benchmark_layouts import LAYOUTS, job_input
from .data import error_texts, plan_input


def test_the_knob_sets_the_generation_length_and_is_recorded():
    assert JobSettings(task="vqa", benchmark="textvqa").max_new_tokens == 1024  # lmms-eval's default for llava_hf
    assert JobSettings(task="vqa", benchmark="pope").max_new_tokens == 128
    assert JobSettings(task="vqa", benchmark="pope", max_new_tokens=5).max_new_tokens == 5
    assert JobSettings(task="vqa").max_new_tokens == 16 and JobSettings(task="vqa").scoring is None
    settings = JobSettings(task="vqa", benchmark="chartqa", columns=ColumnMap(answers="label", benchmark=(("type", "split"),)))
    assert settings.benchmark_columns == {"answer": "label", "type": "split"}
    recorded = settings.result_settings()
    assert recorded["benchmark"] == "chartqa" and recorded["columns"]["benchmark"] == {"type": "split"}
    assert json.loads(json.dumps(recorded)) == recorded  # as a footer holds it: a resume compares equal
    assert JobSettings(task="caption").result_settings()["benchmark"] is None


@pytest.mark.parametrize("given, message", [
    (dict(task="caption", benchmark="pope"), "--benchmark pope: a benchmark scores answers; run it with the vqa job"),
    (dict(task="vqa", benchmark="nope"), "unknown benchmark 'nope'; choose one of vqav2, textvqa"),
    (dict(task="vqa", columns=ColumnMap(benchmark=(("type", "split"),))),
     "--column type=split: --column names a benchmark's columns; give --benchmark NAME too"),
    (dict(task="vqa", benchmark="pope", columns=ColumnMap(benchmark=(("type", "split"),))),
     "--column type=split: pope reads no column 'type' (its columns: question, answer, text)"),
])
def test_settings_that_cannot_work_are_refused(given, message):
    with pytest.raises(InputError) as refused:
        JobSettings(**given)
    assert str(refused.value).startswith(message)


def test_the_flags(tmp_path, capsys):
    from pipeline.cli.base import settings_from_args

    argv = ["vqa", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--benchmark", "chartqa",
            "--column", "type=split", "--column", " answer = label ", "--question-column", "q"]
    settings = settings_from_args(cli.build_parser().parse_args(argv), "vqa", {})
    assert settings.benchmark == "chartqa" and settings.columns.benchmark == (("type", "split"), ("answer", "label"))
    assert settings.benchmark_columns == {"question": "q", "type": "split", "answer": "label"}  # --column wins
    for wrong in (["--column", "type"], ["--benchmark", "nope"]):
        with pytest.raises(SystemExit) as refused:
            cli.build_parser().parse_args(argv[:5] + wrong)
        assert refused.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["vqa", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--benchmark NAME answer and score as lmms-eval does this benchmark (vqav2, textvqa," in shown
    assert "--column NAME=COLUMN with --benchmark: read the benchmark's column NAME from the input's COLUMN" in shown


def write(table, path):
    pq.write_table(table, path)
    return path


def test_columns_that_do_not_fit_exit_2_in_one_line_naming_column_and_flag(tmp_path, tiny_next_path, capsys, monkeypatch):
    from pipeline.job import run

    monkeypatch.setattr(run, "init_ray", lambda *a: pytest.fail("Ray was started"))
    pope, _ = job_input("pope")
    chartqa, _ = job_input("chartqa")
    scienceqa, _ = job_input("scienceqa_img")
    cases = [
        (pope.drop_columns(["answer"]), ["pope"], "pope needs a column 'answer' (the answer (\"yes\" or \"no\"), string) "
         "and the input has none: name the column that holds it with --answers-column COLUMN"),
        (pope, ["pope", "--answers-column", "label"], "--answers-column label: the input has no column 'label'"),
        (chartqa.drop_columns(["type"]), ["chartqa"], "name the column that holds it with --column type=COLUMN"),
        (chartqa, ["chartqa", "--column", "nope=type"], "--column nope=type: chartqa reads no column 'nope'"),
        (scienceqa.set_column(scienceqa.column_names.index("answer"), "answer", pa.array(["B"] * scienceqa.num_rows)),
         ["scienceqa_img"], "column 'answer' is string, but scienceqa_img reads the right choice's index as integer: "
         "name another column with --answers-column COLUMN"),
        (pope.drop_columns(["question"]), ["pope"], "name the column that holds it with --question-column COLUMN"),
    ]
    for i, (table, args, expected) in enumerate(cases):
        folder = tmp_path / f"in{i}"
        folder.mkdir()
        write(table, folder / "s.parquet")
        status = cli.main(["vqa", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(tiny_next_path),
                           "--benchmark", *args])
        err = capsys.readouterr().err
        assert status == 2 and len(err.splitlines()) == 1 and expected in err, (args, err)
        assert err.startswith(f"error: shard file://{folder}/s.parquet does not match the input schema: ") or \
            err.startswith("error: --column"), err


def test_shards_join_their_column_types_or_are_refused(tmp_path):
    mme, _ = job_input("mme")
    write(mme, tmp_path / "a.parquet")
    ids = mme.column("question_id").cast(pa.large_string())
    write(mme.set_column(mme.column_names.index("question_id"), "question_id", ids), tmp_path / "b.parquet")
    shards, _ = plan_input(str(tmp_path), "vqa", benchmark="mme")
    assert [s.benchmark.field("question_id").type for s in shards] == [pa.large_string()] * 2  # one type for both
    assert [s.benchmark.names for s in shards] == [["question", "answer", "category", "question_id"]] * 2
    ints = pa.array(range(mme.num_rows), pa.int64())
    write(mme.set_column(mme.column_names.index("question_id"), "question_id", ints), tmp_path / "b.parquet")
    with pytest.raises(InputError, match="the shards hold a benchmark column in types that do not join"):
        plan_input(str(tmp_path), "vqa", benchmark="mme")


def stage_batch(name, tmp_path, **settings):
    """A benchmark shard's rows as the read stage hands them on, and the settings that read them."""
    good, _ = job_input(name)
    write(good, tmp_path / "s.parquet")
    settings = JobSettings(task="vqa", benchmark=name, input=str(tmp_path), **settings)
    shards, _ = plan_input(str(tmp_path), "vqa", benchmark=name)
    slices = [s for t in read_tasks(shards) for s in read_rows({"item": np.array([t], dtype=object)}, settings.input, settings)]
    return good, settings, {k: np.concatenate([s[k] for s in slices]) for k in slices[0]}


def test_the_read_stage_carries_the_benchmarks_columns(tmp_path):
    good, _, batch = stage_batch("scienceqa_img", tmp_path)
    benchmark = BENCHMARKS["scienceqa_img"]
    for column in benchmark.columns:
        assert [v.tolist() if isinstance(v, np.ndarray) else v for v in batch[carried(column.name)]] == \
            good.column(column.name).to_pylist()
    assert "benchmark:lecture" not in batch  # only the columns the prompt and the metric read
    assert list(batch["question"]) == [None] * good.num_rows  # the VQAv2-style parts are not this run's


class Recording:
    """The model's processor, noting the texts it is given."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __getattr__(self, name):
        return getattr(self.processor, name)

    def __call__(self, *args, text, **kwargs):
        self.texts += text
        return self.processor(*args, text=text, **kwargs)


def test_the_prompt_is_the_benchmarks_in_the_chat_template(tmp_path, tiny_next_path, tiny_next):
    _, processor = tiny_next
    _, settings, batch = stage_batch("scienceqa_img", tmp_path, model=str(tiny_next_path))
    batch[carried("hint")][1] = "Look at the picture."
    batch[carried("question")][2] = None
    preprocessor = Preprocessor(settings)
    preprocessor.processor = recording = Recording(preprocessor.processor)
    out = preprocessor(batch)
    errors = error_texts(out)
    assert errors[0].startswith("undecodable image") and errors[1] is None and errors[3] is None
    assert errors[2] == "bad question: scienceqa_img: `question` is null, not a string"
    # The text of the user turn written out by hand, in the model's own chat template.
    question = ("Which animal?\nA. cat\nB. dog\nC. bird\n"
                "Answer with the option's letter from the given choices directly.")
    assert recording.texts == [chat_prompt(processor, "Context: Look at the picture.\n" + question),
                               chat_prompt(processor, question)]  # row 3's hint is empty: no context
    assert chat_prompt(processor, question) == f"USER: <image>\n{question} ASSISTANT:"
    assert [decode_inputs(out["model_inputs"][i])["input_ids"].size > 0 for i in (1, 3)] == [True, True]


def test_the_scoring_stage(tmp_path):
    """Scores as the benchmark's rule gives them; an error row scores 0 and keeps its error; bad
    ground truth is an error row without a score; the benchmark's columns leave under their names."""
    table, scores, _ = LAYOUTS["pope"]()
    n = table.num_rows
    batch = {carried(c): np.array(table.column(c).to_pylist(), dtype=object) for c in ("question", "answer")}
    batch.update(text=np.array(table.column("text").to_pylist(), dtype=object),
                 question=np.array([None] * n, dtype=object), answers=np.array([None] * n, dtype=object),
                 error_kind=np.array([None] * n, dtype=object), error_detail=np.array([None] * n, dtype=object))
    batch["error_kind"][0], batch["error_detail"][0], batch["text"][0] = "undecodable image", "x", None
    batch[carried("answer")][2] = "maybe"
    out = BenchmarkScoring(BENCHMARKS["pope"])(batch)
    assert list(out["score"]) == [0.0, scores[1], None] + scores[3:]
    assert error_texts(out)[:3] == ["undecodable image: x", None, "bad ground truth: pope: `answer` is 'maybe'; "
                                    "POPE's answers are yes or no"]
    assert list(out["answer"]) == ["yes", "yes", "maybe", "no", "no", "no"] and "answers" not in out
    assert not [name for name in out if name.startswith("benchmark:")]


def scored_table(name, scores=None, **metadata):
    table, expected, _ = LAYOUTS[name]()
    table = table.append_column("score", pa.array(expected if scores is None else scores, pa.float64()))
    settings = {"task": "vqa", "benchmark": name, **metadata}
    return table.replace_schema_metadata({META_SETTINGS: json.dumps(settings).encode()})


RUN = dict(processed_rows=0, processed_generated_tokens=0, wall_s=1.0, extra={})


def test_the_summary_folds_the_scored_rows_file_by_file():
    pope = scored_table("pope")
    unscored = pope.set_column(pope.column_names.index("score"), "score", pa.array([None, 1.0] * 3, pa.float64()))
    summary = summarize_tables_of([pope, unscored])
    expected = Aggregator(BENCHMARKS["pope"])
    expected.add_table(pope)
    expected.add_table(unscored.filter(unscored.column("score").is_valid()))
    assert summary["benchmark"] == {"name": "pope", "task": "pope", "scored": 9, "unscored": 3,
                                    "aggregates": expected.result(), "error": None}
    mixed = summarize_tables_of([pope, scored_table("gqa")])["benchmark"]
    assert mixed["aggregates"] is None and mixed["error"] == "the output holds runs of two benchmarks, pope and gqa"
    unpaired = summarize_tables_of([scored_table("mme").slice(0, 3)])["benchmark"]
    assert unpaired["aggregates"] is None and "in pairs" in unpaired["error"]
    assert "benchmark" not in summarize(LAYOUTS["pope"]()[0], **RUN)  # no footer naming a benchmark


def summarize_tables_of(tables):
    from pipeline.summary import summarize_tables

    return summarize_tables(tables, **RUN)


def sweep_summary(name, point, aggregates, paper=None):
    return {"sweep_point": {"name": point, "paper": paper}, "benchmark": {"name": name, "aggregates": aggregates},
            "failed_shards": [],
            "mean_visual_tokens_kept": 10.0, "mean_visual_tokens_full": 50.0, "mean_ttft_ms": 5.0,
            "this_run": {"images_per_s": 1.0, "generated_tokens_per_s": 2.0}, "peak_gpu_mem_bytes": None,
            "items": 8, "errors": 0}


def test_the_paper_table_from_a_sweep(tmp_path):
    """``--benchmark pope --strategy hired,uniform,none --budget 0.2,0.4``: the benchmark's aggregates
    by setting, the paper's number beside each setting it reports (the stock model, HiRED at 20% and
    40% with alpha 0.5) in the row of the aggregate it is comparable with."""
    from pipeline.job.sweep import run_sweep, sweep_points

    settings = JobSettings(task="vqa", benchmark="pope", output=str(tmp_path), run_id="r")
    aggregates = {"accuracy": 0.5, "precision": 0.25, "recall": 0.125, "f1": 0.1, "yes_ratio": 0.5}
    canned = lambda point_settings: sweep_summary("pope", None, aggregates)  # noqa: E731 (what run_job returns)
    summaries = run_sweep(settings, sweep_points(["hired", "uniform", "none"], [0.2, 0.4], 0.5), canned)
    assert [s["sweep_point"]["paper"] for s in summaries] == [
        {"model": "llava-hf/llava-v1.6-vicuna-7b-hf", "key": "f1", "value": v} if v else None
        for v in (0.870, 0.882, None, None, 0.876)]
    lines = sweep_table(summaries).splitlines()
    assert lines[0] == ("| benchmark | aggregate | hired-0.2 | paper | hired-0.4 | paper | uniform-0.2 | uniform-0.4 "
                        "| none | paper |")
    assert lines[2] == "| pope | accuracy | 50.0 |  | 50.0 |  | 50.0 | 50.0 | 50.0 |  |"
    assert lines[5] == "| pope | f1 | 10.0 | 87.0 | 10.0 | 88.2 | 10.0 | 10.0 | 10.0 | 87.6 |"
    assert lines[8].endswith("stock model and HiRED at alpha 0.5; its POPE number is set beside f1.")
    other_alpha = run_sweep(settings, sweep_points(["hired"], [0.2], 0.3), canned)
    assert other_alpha[0]["sweep_point"]["paper"] is None  # the paper's numbers are at alpha 0.5 only


def test_the_sweep_table_of_a_benchmark_the_paper_does_not_report():
    summaries = [sweep_summary("mme", "uniform-0.2", {"perception": 1234.56, "cognition": 300.0}),
                 sweep_summary("mme", "none", {"perception": 1500.0, "cognition": None})]
    lines = sweep_table(summaries).splitlines()
    assert lines[:4] == ["| benchmark | aggregate | uniform-0.2 | none |", "| --- | --- | --- | --- |",
                         "| mme | perception | 1234.6 | 1500.0 |", "| mme | cognition | 300.0 | n/a |"]
    assert lines[5] == "Sums of category scores, scored as lmms-eval's mme task."
    assert lines[7].startswith("| setting | perception | cognition | kept tokens | of |")
    assert lines[9].startswith("| uniform-0.2 | 1234.6 | 300.0 | 10 | 50 |")


def test_no_benchmark_column_shares_a_name_with_the_jobs_own():
    """The output keeps the benchmark's columns under their own names beside the job's columns."""
    from pipeline.columns import OUTPUT_SCHEMA

    for benchmark in BENCHMARKS.values():
        assert not {c.name for c in benchmark.columns} & set(OUTPUT_SCHEMA.names), benchmark.name
