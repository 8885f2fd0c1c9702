"""VQAv2, as lmms-eval's ``vqav2_val`` task (lmms-lab/VQAv2, validation split).

Prompt: the question as it stands, nothing before or after it: ``vqav2_val.yaml`` gives its own
``lmms_eval_specific_kwargs`` (pre and post prompt empty), and lmms-eval's ``include`` merge
replaces the template's whole block, so the template's "\\nAnswer the question using a single
word or phrase." does not reach this task (it did before lmms-eval's commit 9596fbd7 of
2025-04-17). Generation: at most 16 new tokens; the task declares no ``until``.

Metric: VQA accuracy (:func:`~pipeline.benchmarks.vqa_answers.vqav2_accuracy`): the EvalAI
processor over the prediction; the references with newlines and tabs made spaces and stripped,
then compared as written when they are unanimous and punctuation/word-normalised otherwise;
the leave-one-out mean of min(1, matches / 3). Aggregate: ``accuracy``, the mean.

Kept as lmms-eval has it: unanimous references are not normalised (ten "Yes" never match "yes");
the references' own "," "?" and "'s" are left as they are when they differ. Where lmms-eval has
no rule: a row needs at least two references (leave-one-out gives 0 to one reference whatever
the answer; VQAv2 rows have ten), and a null or empty ``answers`` is an error (lmms-eval scores
a null one 0, which only its test split has).
"""

from __future__ import annotations

from .base import VQA_ANSWERS, Benchmark, BenchmarkDataError, Generation, Mean, answers_column, question_column, text
from .vqa_answers import vqav2_accuracy


def references(row) -> list[str]:
    """The ``answers`` cell as strings: hub rows hold {answer, answer_confidence, answer_id}
    structs, the VQA job's output plain strings."""
    answers = row.get("answers")
    if answers is None:
        raise BenchmarkDataError("`answers` is null (a split without ground truth cannot be scored)")
    found = [a.get("answer") if isinstance(a, dict) else a for a in answers]
    if any(not isinstance(a, str) for a in found):
        raise BenchmarkDataError("`answers` holds a null or non-string answer")
    if len(found) < 2:
        raise BenchmarkDataError(f"`answers` holds {len(found)} references; VQA accuracy needs at least 2 (VQAv2 has 10)")
    return found


BENCHMARK = Benchmark(
    name="vqav2",
    task="vqav2_val",
    dataset="lmms-lab/VQAv2, validation",
    columns=(question_column(), answers_column("answers", VQA_ANSWERS, "the annotators' answers")),
    generation=Generation(max_new_tokens=16),
    prompt=lambda row: text(row, "question"),
    truth=references,
    rule=vqav2_accuracy,
    tally=lambda: Mean("accuracy"),
    keys=("accuracy",),
    metric="VQA accuracy (0, 0.3, 0.6, 0.9 or 1 with ten references)",
)
