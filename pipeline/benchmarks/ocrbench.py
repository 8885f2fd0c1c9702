"""OCRBench, as lmms-eval's ``ocrbench`` task (echo840/OCRBench, test split).

Prompt: the question, stripped, nothing before or after it. Generation: at most 128 new tokens,
greedy; no ``until`` declared.

Metric: 1 when a reference occurs in the prediction as a substring, else 0. The prediction is
lower-cased and stripped; for rows whose ``dataset`` is "HME100k" (handwritten formulas) both
sides then lose every space and newline, and the reference keeps its case; for every other row
both are lower-cased and stripped and their newlines become spaces. Aggregate: ``accuracy``, the
right rows over all rows (lmms-eval reports the sum over its ten question types / 1000, the same
over the full 1000-row set).

Kept as lmms-eval has it: the substring rule ("the answer is 12" matches "12", and so does
"123"); an empty reference matches any prediction; an HME100k reference with a capital letter
never matches, the prediction having been lower-cased. A ``answer`` cell may be a string or a
list of strings; a null or empty one is an error.
"""

from __future__ import annotations

from .base import (
    STRING_OR_LIST, STRING_OR_NULL, Benchmark, Column, Generation, Mean, answers_column, question_column, text, texts,
)

HANDWRITTEN_FORMULAS = "HME100k"


def _no_spaces(s: str) -> str:
    return s.strip().replace("\n", " ").replace(" ", "")


def _lowered(s: str) -> str:
    return s.lower().strip().replace("\n", " ")


def found(prediction: str, truth: tuple[list[str], bool]) -> float:
    references, handwritten = truth
    prediction = prediction.lower().strip()
    if handwritten:
        return 1.0 if any(_no_spaces(r) in _no_spaces(prediction) for r in references) else 0.0
    return 1.0 if any(_lowered(r) in _lowered(prediction) for r in references) else 0.0


BENCHMARK = Benchmark(
    name="ocrbench",
    task="ocrbench",
    dataset="echo840/OCRBench, test",
    columns=(
        question_column(),
        answers_column("answer", STRING_OR_LIST, "the accepted answers"),
        Column("dataset", STRING_OR_NULL, 'the source set ("HME100k" scores without spaces)'),
    ),
    generation=Generation(max_new_tokens=128),
    prompt=lambda row: text(row, "question").strip(),
    truth=lambda row: (texts(row, "answer"), row.get("dataset") == HANDWRITTEN_FORMULAS),
    rule=found,
    tally=lambda: Mean("accuracy"),
    keys=("accuracy",),
    metric="a reference found in the prediction, 1 or 0",
)
