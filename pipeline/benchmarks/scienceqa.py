"""ScienceQA with images, as lmms-eval's ``scienceqa_img`` task (lmms-lab/ScienceQA, subset
ScienceQA-IMG, test split).

Prompt: "Context: {hint}\\n" when the hint is not empty, the question, a newline, the choices one
a line as "A. {choice}", "B. {choice}", ..., then "\\nAnswer with the option's letter from the
given choices directly.". Generation: at most 16 new tokens, greedy; no ``until`` declared.

Metric: exact match, 1 or 0: the prediction, stripped and lower-cased, must equal the right
option's letter lower-cased ("B", "b" and " b\\n" score 1). Aggregate: ``accuracy``, the mean.

Kept as lmms-eval has it: the prediction is lower-cased before the task's "A. ..." rule looks for
a capital letter and a period, so that rule never fires and "B.", "B. cat", "(B)" and "The
answer is B" all score 0. Where lmms-eval has none: a null hint is no context (lmms-eval would
print "None"); an answer index outside the choices is an error (lmms-eval reads a negative one
from the end).
"""

from __future__ import annotations

from .base import (
    INTEGER, STRING_LIST, STRING_OR_NULL, Benchmark, BenchmarkDataError, Column, Generation, Mean,
    answers_column, question_column, text, texts,
)

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def letter(index: int) -> str:
    return chr(ord("A") + index)


def prompt(row) -> str:
    hint = row.get("hint")
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{letter(i)}. {choice}" for i, choice in enumerate(texts(row, "choices")))
    return f"{context}{text(row, 'question')}\n{options}{POST_PROMPT}"


def right_letter(row) -> str:
    choices, answer = texts(row, "choices"), row.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool):
        what = "null" if answer is None else type(answer).__name__
        raise BenchmarkDataError(f"`answer` is {what}, not a choice's index")
    if not 0 <= answer < len(choices):
        raise BenchmarkDataError(f"`answer` is {answer}, outside the {len(choices)} choices")
    return letter(answer)


BENCHMARK = Benchmark(
    name="scienceqa_img",
    task="scienceqa_img",
    dataset="lmms-lab/ScienceQA, ScienceQA-IMG, test",
    columns=(
        question_column(),
        Column("hint", STRING_OR_NULL, "the context", for_scoring=False),
        Column("choices", STRING_LIST, "the options"),
        answers_column("answer", INTEGER, "the right choice's index"),
    ),
    generation=Generation(max_new_tokens=16),
    prompt=prompt,
    truth=right_letter,
    rule=lambda prediction, target: 1.0 if prediction.lower() == target.lower() else 0.0,
    tally=lambda: Mean("accuracy"),
    keys=("accuracy",),
    metric="exact match of the option's letter, 1 or 0",
)
