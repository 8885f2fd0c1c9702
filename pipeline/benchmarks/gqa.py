"""GQA, as lmms-eval's ``gqa`` task (lmms-lab/GQA, subset testdev_balanced_instructions, split
testdev; the pictures come from its testdev_balanced_images subset by ``imageId``).

Prompt: the question, then "\\nAnswer the question using a single word or phrase.".
Generation: at most 16 new tokens, greedy; no ``until`` declared.

Metric: lmms-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``, 1 or 0: the
prediction (stripped) and the answer (as written) are lower-cased and lose every ASCII
punctuation mark, then must be equal ("Yes." matches "yes"; "a cat" does not match "cat").
Aggregate: ``accuracy``, the mean.

Not reproduced: lmms-eval runs this through numpy's fixed-width strings, where a character that
lower-cases to two ("İ") is cut back to the original width and trailing NUL characters are
ignored; here both sides are Python strings.
"""

from __future__ import annotations

import string

from .base import STRING, Benchmark, Generation, Mean, answers_column, question_column, text

POST_PROMPT = "\nAnswer the question using a single word or phrase."
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def comparable(s: str) -> str:
    return s.lower().translate(_NO_PUNCTUATION)


BENCHMARK = Benchmark(
    name="gqa",
    task="gqa",
    dataset="lmms-lab/GQA, testdev_balanced_instructions, testdev",
    columns=(question_column(), answers_column("answer", STRING, "the answer")),
    generation=Generation(max_new_tokens=16),
    prompt=lambda row: text(row, "question") + POST_PROMPT,
    truth=lambda row: comparable(text(row, "answer")),
    rule=lambda prediction, answer: 1.0 if comparable(prediction) == answer else 0.0,
    tally=lambda: Mean("accuracy"),
    keys=("accuracy",),
    metric="exact match ignoring case and punctuation, 1 or 0",
)
