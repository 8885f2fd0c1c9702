"""DocVQA, as lmms-eval's ``docvqa_val`` task (lmms-lab/DocVQA, subset DocVQA, validation split).

Prompt: the question, then "\\nAnswer the question using a single word or phrase.".
Generation: at most 32 new tokens, greedy; no ``until`` declared.

Metric: ANLS (:func:`~pipeline.benchmarks.anls.anls`): 1 minus the smallest normalised edit
distance to a reference, 0 below 0.5. Aggregate: ``anls``, the mean.

Kept as lmms-eval has it: the distance is taken between stripped, lower-cased, space-collapsed
strings but divided by the longer raw string's length (upper-cased), so inner runs of spaces
or characters that upper-case longer ("ß") enlarge the divisor; an empty prediction against an
empty reference scores 1. A null or empty ``answers`` is an error (lmms-eval fails on it).
"""

from __future__ import annotations

from .anls import anls
from .base import STRING_LIST, Benchmark, Generation, Mean, answers_column, question_column, text, texts

POST_PROMPT = "\nAnswer the question using a single word or phrase."

BENCHMARK = Benchmark(
    name="docvqa",
    task="docvqa_val",
    dataset="lmms-lab/DocVQA, DocVQA, validation",
    columns=(question_column(), answers_column("answers", STRING_LIST, "the accepted answers")),
    generation=Generation(max_new_tokens=32),
    prompt=lambda row: text(row, "question") + POST_PROMPT,
    truth=lambda row: texts(row, "answers"),
    rule=anls,
    tally=lambda: Mean("anls"),
    keys=("anls",),
    metric="ANLS, in [0.5, 1] or 0",
)
