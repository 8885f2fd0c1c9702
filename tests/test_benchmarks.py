"""The benchmark library: the registry, each benchmark's prompt and generation settings as
lmms-eval's task gives them to llava_hf, hand-worked metric cases, the column checks, the
scoring stage on Ray-shaped batches, and the aggregates folded table by table."""

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.benchmarks import (
    BENCHMARKS, Aggregator, BenchmarkDataError, BenchmarkScorer, ColumnError, check_columns, get_benchmark, score_batch,
)
from pipeline.benchmarks.anls import anls
from pipeline.benchmarks.mme import parsed
from pipeline.benchmarks.relaxed import relaxed_correct
from pipeline.errors import InputError

from .benchmark_layouts import LAYOUTS

SHORT = "\nAnswer the question using a single word or phrase."


def test_registry_names_keys_and_generation():
    assert list(BENCHMARKS) == ["vqav2", "textvqa", "docvqa", "chartqa", "scienceqa_img", "pope", "mme", "ocrbench", "gqa"]
    keys = {name: b.keys for name, b in BENCHMARKS.items()}
    assert keys == {
        "vqav2": ("accuracy",), "textvqa": ("accuracy",), "scienceqa_img": ("accuracy",), "gqa": ("accuracy",),
        "ocrbench": ("accuracy",), "docvqa": ("anls",),
        "chartqa": ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"),
        "pope": ("accuracy", "precision", "recall", "f1", "yes_ratio"), "mme": ("perception", "cognition"),
    }
    lengths = {name: b.generation.max_new_tokens for name, b in BENCHMARKS.items()}
    # The tasks' yaml; textvqa sets none, so llava_hf's default of 1024 applies.
    assert lengths == {"vqav2": 16, "textvqa": 1024, "docvqa": 32, "chartqa": 16, "scienceqa_img": 16, "pope": 128,
                       "mme": 16, "ocrbench": 128, "gqa": 16}
    assert all(b.generation.stop == () for b in BENCHMARKS.values())  # llava_hf drops `until`
    assert {b.task for b in BENCHMARKS.values()} >= {"vqav2_val", "textvqa_val", "docvqa_val"}
    with pytest.raises(InputError, match="unknown benchmark 'vqa'.*vqav2"):
        get_benchmark("vqa")


def test_every_aggregate_has_exactly_its_keys_and_is_null_over_no_rows():
    for benchmark in BENCHMARKS.values():
        assert benchmark.tally().result() == dict.fromkeys(benchmark.keys), benchmark.name


# (benchmark, row, the user-turn text lmms-eval's doc_to_text gives llava_hf)
PROMPTS = [
    ("vqav2", {"question": "What color is the cat? "}, "What color is the cat? "),  # vqav2_val: no post prompt
    ("textvqa", {"question": "what does the BMW sign say?"}, "What does the bmw sign say?" + SHORT),
    ("docvqa", {"question": "What is the date?"}, "What is the date?" + SHORT),
    ("chartqa", {"question": "How many bars?"}, "How many bars?\nAnswer the question with a single word."),
    ("scienceqa_img", {"question": "Which animal?", "hint": "Look at the picture.", "choices": ["cat", "dog", "bird"]},
     "Context: Look at the picture.\nWhich animal?\nA. cat\nB. dog\nC. bird\n"
     "Answer with the option's letter from the given choices directly."),
    ("scienceqa_img", {"question": "Which is a solid?", "hint": "", "choices": ["milk", "rock"]},
     "Which is a solid?\nA. milk\nB. rock\nAnswer with the option's letter from the given choices directly."),
    ("scienceqa_img", {"question": "Which?", "hint": None, "choices": ["x", "y"]},
     "Which?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."),
    ("pope", {"question": "  Is there a dog in the image? "}, "Is there a dog in the image?" + SHORT),
    ("mme", {"question": "Is there a red car in this image? Please answer yes or no."},
     "Is there a red car in this image?" + SHORT),
    ("ocrbench", {"question": " what is written in the image? "}, "what is written in the image?"),
    ("gqa", {"question": "Is the man on the left?"}, "Is the man on the left?" + SHORT),
]


@pytest.mark.parametrize("name, row, expected", PROMPTS, ids=[f"{p[0]}-{i}" for i, p in enumerate(PROMPTS)])
def test_prompts_are_lmms_eval_doc_to_text(name, row, expected):
    assert BENCHMARKS[name].prompt(row) == expected


def test_a_prompt_without_its_question_is_an_error():
    with pytest.raises(BenchmarkDataError, match="`question` is null"):
        BENCHMARKS["gqa"].prompt({"question": None})


def _ten(answer, matching, other="other"):
    return [answer] * matching + [other] * (10 - matching)


# (benchmark, prediction, row, expected score, why)
CASES = [
    ("vqav2", "Two", {"answers": _ten("2", 3)}, 0.9, "processed '2' matches 3 of 10"),
    ("vqav2", " yes\n", {"answers": ["yes"] * 10}, 1.0, "the prediction is stripped"),
    ("vqav2", "yes", {"answers": ["Yes"] * 10}, 0.0, "unanimous references are compared as written"),
    ("vqav2", "yes", {"answers": [{"answer": "yes", "answer_id": i} for i in range(10)]}, 1.0, "hub structs"),
    ("vqav2", None, {"answers": ["yes"] * 10}, 0.0, "null prediction"),
    ("textvqa", "yes", {"answers": ["Yes"] * 10}, 1.0, "references go through the processor too"),
    ("textvqa", "The Coca-Cola", {"answers": _ten("coca cola", 3, "coke")}, 0.9, "article dropped, '-' spaced"),
    ("textvqa", "two", {"answers": ["2"] * 2 + ["3"] * 8}, 0.6, "number word; 2 of 10"),
    ("docvqa", "Smith", {"answers": ["smith"]}, 1.0, "case ignored"),
    ("docvqa", "Smth", {"answers": ["Smith"]}, 0.8, "1 edit / 5"),
    ("docvqa", "ab", {"answers": ["abcd"]}, 0.5, "2 edits / 4 = 0.5, kept at the threshold"),
    ("docvqa", "abc", {"answers": ["abcdefg"]}, 0.0, "4 / 7 leaves 0.43 < 0.5"),
    ("docvqa", "jon   smith", {"answers": ["John Smith"]}, 1 - 1 / 11, "divisor from the raw 11 characters"),
    ("docvqa", "straße", {"answers": ["strasse"]}, 1 - 2 / 7, "'ß' upper-cases to 'SS': divisor 7"),
    ("docvqa", "", {"answers": [""]}, 1.0, "both empty"),
    ("docvqa", "", {"answers": ["x"]}, 0.0, "empty prediction"),
    ("docvqa", "10", {"answers": ["ten", "10"]}, 1.0, "the best reference counts"),
    ("chartqa", "12.5", {"answer": "12", "type": "human_test"}, 1.0, "within 5%"),
    ("chartqa", "13", {"answer": "12", "type": "human_test"}, 0.0, "8% off"),
    ("chartqa", "50%", {"answer": "0.5", "type": "human_test"}, 1.0, "a percentage is its hundredth"),
    ("chartqa", "0.5", {"answer": "50%", "type": "human_test"}, 1.0, "either side"),
    ("chartqa", "1,000", {"answer": "1000", "type": "human_test"}, 0.0, "'1,000' is text"),
    ("chartqa", "0", {"answer": "0", "type": "human_test"}, 1.0, "a target of 0 compares as text"),
    ("chartqa", "0.0", {"answer": "0", "type": "human_test"}, 0.0, "... so 0.0 misses it"),
    ("chartqa", "1e1", {"answer": "10", "type": "human_test"}, 1.0, "float() reads exponents"),
    ("chartqa", "nan", {"answer": "nan", "type": "human_test"}, 0.0, "NaN targets parse, and nothing is within 5%"),
    ("chartqa", "$12", {"answer": "12", "type": "augmented_test"}, 0.0, "'$12' is text"),
    ("chartqa", "Yes", {"answer": "yes", "type": "augmented_test"}, 1.0, "text ignoring case"),
    ("scienceqa_img", "B", {"choices": ["cat", "dog", "bird"], "answer": 1}, 1.0, "the letter"),
    ("scienceqa_img", " b\n", {"choices": ["cat", "dog", "bird"], "answer": 1}, 1.0, "stripped, any case"),
    ("scienceqa_img", "B.", {"choices": ["cat", "dog", "bird"], "answer": 1}, 0.0, "lower-cased before the 'A.' rule"),
    ("scienceqa_img", "B. dog", {"choices": ["cat", "dog", "bird"], "answer": 1}, 0.0, "same"),
    ("scienceqa_img", "(B)", {"choices": ["cat", "dog", "bird"], "answer": 1}, 0.0, "parenthesised"),
    ("scienceqa_img", "dog", {"choices": ["cat", "dog", "bird"], "answer": 1}, 0.0, "the choice's text"),
    ("scienceqa_img", "Ｂ", {"choices": ["cat", "dog", "bird"], "answer": 1}, 0.0, "fullwidth letter"),
    ("pope", "Yes", {"answer": "yes"}, 1.0, "case ignored"),
    ("pope", " NO ", {"answer": "No"}, 1.0, "both sides stripped and lower-cased"),
    ("pope", "Yes.", {"answer": "yes"}, 0.0, "exact: the period counts"),
    ("pope", "Yes, there is a dog.", {"answer": "yes"}, 0.0, "a sentence"),
    ("mme", "Yes, it is", {"answer": "Yes", "category": "color", "question_id": "a"}, 1.0, "'yes' in the first 4"),
    ("mme", "Not really", {"answer": "No", "category": "color", "question_id": "a"}, 1.0, "'no' in 'not '"),
    ("mme", "None", {"answer": "No", "category": "color", "question_id": "a"}, 1.0, "'none' holds 'no'"),
    ("mme", "Y.", {"answer": "Yes", "category": "color", "question_id": "a"}, 1.0, "periods deleted, then 'y'"),
    ("mme", "I think yes", {"answer": "Yes", "category": "color", "question_id": "a"}, 0.0, "neither"),
    ("mme", "", {"answer": "No", "category": "color", "question_id": "a"}, 0.0, "empty is neither"),
    ("mme", "No.", {"answer": "No.", "category": "color", "question_id": "a"}, 1.0, "the answer's period goes too"),
    ("ocrbench", "The answer is 12", {"answer": ["12"], "dataset": "IIIT5K"}, 1.0, "substring"),
    ("ocrbench", "123", {"answer": ["12"], "dataset": "IIIT5K"}, 1.0, "substring, even inside a number"),
    ("ocrbench", "1 2", {"answer": ["12"], "dataset": "IIIT5K"}, 0.0, "spaces count outside HME100k"),
    ("ocrbench", "line\nbreak", {"answer": ["Line Break"], "dataset": "IIIT5K"}, 1.0, "newlines become spaces"),
    ("ocrbench", "anything", {"answer": [""], "dataset": "IIIT5K"}, 1.0, "an empty reference matches anything"),
    ("ocrbench", "b", {"answer": ["a", "b"], "dataset": "IIIT5K"}, 1.0, "any reference"),
    ("ocrbench", "abc", {"answer": "ABC", "dataset": "IIIT5K"}, 1.0, "a single string answer"),
    ("ocrbench", "x ^ { 2 }", {"answer": ["x^{2}"], "dataset": "HME100k"}, 1.0, "HME100k drops spaces"),
    ("ocrbench", "X^{2}", {"answer": ["X^{2}"], "dataset": "HME100k"}, 0.0, "HME100k keeps the reference's case"),
    ("gqa", "Yes.", {"answer": "yes"}, 1.0, "punctuation and case ignored"),
    ("gqa", "t-shirt", {"answer": "tshirt"}, 1.0, "'-' is punctuation"),
    ("gqa", "a cat", {"answer": "cat"}, 0.0, "articles count"),
    ("gqa", "Ｙｅｓ", {"answer": "yes"}, 0.0, "fullwidth letters are other letters"),
]


@pytest.mark.parametrize("name, prediction, row, expected, why", CASES, ids=[f"{c[0]}-{c[1]!r}" for c in CASES])
def test_hand_worked_scores(name, prediction, row, expected, why):
    assert BENCHMARKS[name].score(prediction, row) == pytest.approx(expected, abs=1e-12), why


def test_shared_rules_directly():
    assert anls("Smth", ["Smith", "xyz"]) == pytest.approx(0.8)
    assert relaxed_correct("12.6", "12") and not relaxed_correct("12.61", "12")  # 5% exactly is in
    assert [parsed(p) for p in ["yes", "No", "yesno", "Nope", "n", "x", "maybe"]] == \
           ["yes", "no", "yes", "no", "no", "other", "other"]


# (benchmark, row whose ground truth cannot be scored, the reason's words)
BAD_TRUTH = [
    ("vqav2", {"answers": None}, "null"),
    ("vqav2", {"answers": ["yes"]}, "at least 2"),
    ("vqav2", {"answers": ["yes", None]}, "null or non-string"),
    ("textvqa", {"answers": []}, "at least 2"),
    ("docvqa", {"answers": []}, "at least 1"),
    ("chartqa", {"answer": None, "type": "human_test"}, "`answer` is null"),
    ("scienceqa_img", {"choices": ["a", "b"], "answer": 2}, "outside the 2 choices"),
    ("scienceqa_img", {"choices": ["a", "b"], "answer": -1}, "outside"),
    ("pope", {"answer": "maybe"}, "yes or no"),
    ("mme", {"answer": "Yes", "category": None, "question_id": "a"}, "`category` is null"),
    ("mme", {"answer": "Sure", "category": "color", "question_id": "a"}, "Yes or No"),
    ("ocrbench", {"answer": None, "dataset": "x"}, "null"),
    ("gqa", {"answer": None}, "null"),
]


@pytest.mark.parametrize("name, row, words", BAD_TRUTH, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_TRUTH)])
def test_ground_truth_that_cannot_be_scored_is_an_error_even_for_a_null_prediction(name, row, words):
    for prediction in ("yes", None):
        with pytest.raises(BenchmarkDataError, match=words):
            BENCHMARKS[name].score(prediction, row)


# ---------------------------------------------------------------- columns


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_hub_layouts_fit_their_benchmark(name):
    table, _, _ = LAYOUTS[name]()
    benchmark = BENCHMARKS[name]
    sources = check_columns(benchmark, table.schema)
    assert set(sources) == {c.name for c in benchmark.scoring_columns()} and all(k == v for k, v in sources.items())
    assert set(check_columns(benchmark, table.schema, for_prompt=True)) == {c.name for c in benchmark.columns}


def test_missing_and_mistyped_columns_name_the_column_and_the_flag():
    schema = pa.schema([("question", pa.string()), ("refs", pa.list_(pa.string())), ("text", pa.string()),
                        ("kind", pa.string())])
    with pytest.raises(ColumnError) as missing:
        check_columns(BENCHMARKS["vqav2"], schema)
    message = str(missing.value)
    assert "'answers'" in message and "--answers-column COLUMN" in message and "\n" not in message
    assert check_columns(BENCHMARKS["vqav2"], schema, {"answers": "refs"})["answers"] == "refs"
    with pytest.raises(ColumnError, match=r"--answers-column nope: the input has no column 'nope'"):
        check_columns(BENCHMARKS["vqav2"], schema, {"answers": "nope"})
    with pytest.raises(ColumnError, match=r"needs a column 'type'.*--column type=COLUMN"):
        check_columns(BENCHMARKS["chartqa"], schema, {"answer": "question"})
    assert check_columns(BENCHMARKS["chartqa"], schema, {"answer": "question", "type": "kind"})["type"] == "kind"
    with pytest.raises(ColumnError, match=r"column 'refs' is list<item: string>, but pope reads the answer .*as string"):
        check_columns(BENCHMARKS["pope"], schema, {"answer": "refs"})
    with pytest.raises(ColumnError, match="pope reads no column 'category'"):
        check_columns(BENCHMARKS["pope"], schema, {"category": "kind"})
    typed = pa.schema([("answer", pa.string()), ("text", pa.int64())])
    with pytest.raises(ColumnError, match="column 'text' is int64.*--text-column COLUMN"):
        check_columns(BENCHMARKS["pope"], typed)
    nulls = pa.schema([("answer", pa.null()), ("text", pa.null())])  # all-null predictions are fine, truth is not
    with pytest.raises(ColumnError, match=r"column 'answer' is null \(every value is null\)"):
        check_columns(BENCHMARKS["pope"], nulls)
    # a generating run needs the prompt's columns, not the prediction
    assert "text" not in check_columns(BENCHMARKS["pope"], pa.schema([("answer", pa.string()), ("question", pa.string())]),
                                       for_prompt=True)
    with pytest.raises(ColumnError, match="needs a column 'hint'"):
        check_columns(BENCHMARKS["scienceqa_img"], pa.schema([("question", pa.string()), ("choices", pa.list_(pa.string())),
                                                             ("answer", pa.int8())]), for_prompt=True)


def test_other_encodings_of_the_same_columns_are_accepted():
    schema = pa.schema([("answers", pa.large_list(pa.large_string())), ("text", pa.dictionary(pa.int32(), pa.string()))])
    assert check_columns(BENCHMARKS["vqav2"], schema) == {"answers": "answers", "text": "text"}
    assert check_columns(BENCHMARKS["ocrbench"], pa.schema([("answer", pa.string()), ("dataset", pa.null()),
                                                           ("text", pa.string())]))


# ---------------------------------------------------------------- the stage and the aggregates


def test_score_batch_on_a_ray_shaped_batch():
    # As Ray Data hands a batch: object arrays, lists as numpy arrays, structs as dicts, numpy
    # scalars, and NaN for nulls in a block that was all null.
    answers = np.empty(3, dtype=object)
    answers[:] = [np.array(["2"] * 3 + ["3"] * 7, dtype=object),
                  np.array([{"answer": "yes", "answer_id": np.int64(i)} for i in range(10)], dtype=object),
                  ["red"] * 10]
    batch = {"id": np.array(["a", "b", "c"], dtype=object), "answers": answers,
             "text": np.array([np.str_("two"), "yes", float("nan")], dtype=object)}
    scores = score_batch(BENCHMARKS["vqav2"], batch)
    assert scores.dtype == np.float64 and scores.tolist() == [0.9, 1.0, 0.0]
    out = BenchmarkScorer(BENCHMARKS["vqav2"])(batch)
    assert out["score"].tolist() == [0.9, 1.0, 0.0] and out["id"] is batch["id"]
    choices = {"choices": np.array([np.array(["x", "y"], dtype=object)], dtype=object),
               "answer": np.array([1], dtype=np.int8), "refs": None, "text": np.array(["B"], dtype=object)}
    assert score_batch(BENCHMARKS["scienceqa_img"], choices).tolist() == [1.0]
    with pytest.raises(ColumnError, match="--answers-column"):
        score_batch(BENCHMARKS["pope"], {"text": np.array(["yes"], dtype=object)})
    with pytest.raises(BenchmarkDataError, match="row 1: `answer` is 'maybe'"):
        score_batch(BENCHMARKS["pope"], {"answer": ["yes", "maybe"], "text": ["yes", "no"]})


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_aggregates_folded_table_by_table_equal_the_hand_worked_ones(name):
    table, scores, aggregates = LAYOUTS[name]()
    benchmark = BENCHMARKS[name]
    assert score_batch(benchmark, table.to_pydict()).tolist() == pytest.approx(scores, abs=1e-12)
    scored = table.append_column("score", pa.array(scores, pa.float64()))
    whole, pieces = Aggregator(benchmark), Aggregator(benchmark)
    whole.add_table(scored)
    for start in range(0, scored.num_rows, 2):  # two rows a table, as file after file
        pieces.add_table(scored.slice(start, 2))
    assert whole.result() == pytest.approx(aggregates, abs=1e-12)
    assert pieces.result() == whole.result() and pieces.rows == table.num_rows
    assert all(v is None or (math.isfinite(v) and (name == "mme" or 0 <= v <= 1)) for v in whole.result().values())


def test_aggregator_refuses_unscored_or_unpaired_rows():
    aggregator = Aggregator(BENCHMARKS["gqa"])
    with pytest.raises(ColumnError, match="float column 'score'"):
        aggregator.add_table(pa.table({"answer": ["a"], "text": ["a"]}))
    with pytest.raises(BenchmarkDataError, match="row 1: `score` is null"):
        aggregator.add_table(pa.table({"score": pa.array([1.0, None], pa.float64())}))
    mme = Aggregator(BENCHMARKS["mme"], {"question_id": "image"})
    mme.add_table(pa.table({"image": ["a", "a", "a"], "category": ["color"] * 3, "score": [1.0, 1.0, 0.0]}))
    with pytest.raises(BenchmarkDataError, match="image 'a' of 'color' has 3"):
        mme.result()
    cognition = Aggregator(BENCHMARKS["mme"])  # a category outside perception counts as cognition
    cognition.add_table(pa.table({"question_id": ["a", "a"], "category": ["made_up"] * 2, "score": [1.0, 0.0]}))
    assert cognition.result() == {"perception": None, "cognition": 50.0}


def test_the_docs_example_runs_as_written(capsys):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "docs/benchmarks.md", "exec"), namespace)
    assert namespace["scores"].tolist() == [1.0, 0.0]
    assert namespace["aggregator"].result() == {"accuracy": 0.5, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}
    assert capsys.readouterr().out.splitlines()[0] == str(namespace["aggregator"].result())
