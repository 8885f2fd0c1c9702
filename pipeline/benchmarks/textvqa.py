"""TextVQA, as lmms-eval's ``textvqa_val`` task (lmms-lab/textvqa, validation split).

Prompt: ``question.capitalize()`` then "\\nAnswer the question using a single word or phrase."
(no OCR tokens: the task's ``ocr`` option is off). Python's ``capitalize`` also lower-cases the
rest of the question ("What does the BMW sign say?" -> "What does the bmw sign say?"), as lmms-eval
sends it. Generation: the task sets no length, so llava_hf's default of 1024 new tokens applies;
it declares ``until: ["ASSISTANT:"]``, which llava_hf does not apply (the end-of-sequence token
ends the answer).

Metric: VQA accuracy with every reference put through the whole EvalAI processor, like the
prediction (:func:`~pipeline.benchmarks.vqa_answers.textvqa_accuracy`), and the leave-one-out mean
of min(1, matches / 3). Aggregate: ``accuracy``, the mean.

Where lmms-eval has no rule: a row needs at least two references (TextVQA has ten), and a null
``answers`` is an error (lmms-eval scores it 0, which only its test split has).
"""

from __future__ import annotations

from .base import STRING_LIST, Benchmark, Generation, Mean, answers_column, question_column, text, texts
from .vqa_answers import textvqa_accuracy

POST_PROMPT = "\nAnswer the question using a single word or phrase."

BENCHMARK = Benchmark(
    name="textvqa",
    task="textvqa_val",
    dataset="lmms-lab/textvqa, validation",
    columns=(question_column(), answers_column("answers", STRING_LIST, "the annotators' answers")),
    generation=Generation(max_new_tokens=1024),
    prompt=lambda row: text(row, "question").capitalize() + POST_PROMPT,
    truth=lambda row: texts(row, "answers", at_least=2),
    rule=textvqa_accuracy,
    tally=lambda: Mean("accuracy"),
    keys=("accuracy",),
    metric="VQA accuracy (0, 0.3, 0.6, 0.9 or 1 with ten references)",
)
