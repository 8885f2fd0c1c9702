"""The VQA job's scoring stage: VQA accuracy and exact match of each generated answer.

The rules (the EvalAI answer processor, VQA accuracy as behind LLaVA's published VQAv2 numbers)
live in :mod:`pipeline.benchmarks.vqa_answers`; this stage applies them to a batch.
"""

from __future__ import annotations

import numpy as np

from ..benchmarks.vqa_answers import exact_match, vqa_accuracy
from ..columns import ANSWERS, ERROR, ID, answer_lists, batch_column


def score_vqa(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: the standard VQA accuracy and exact match of each answer."""
    n = len(batch[ID])
    texts, answers, errors = batch_column(batch, "text"), batch_column(batch, ANSWERS), batch_column(batch, ERROR)
    accuracy, exact = np.empty(n, dtype=object), np.empty(n, dtype=object)
    for i in range(n):
        text, references = texts[i], answers[i]
        references = [] if references is None else [str(a) for a in references]
        if errors[i] is not None or text is None or not references:
            accuracy[i], exact[i] = None, None
        else:
            accuracy[i], exact[i] = vqa_accuracy(text, references), exact_match(text, references)
    references = np.empty(n, dtype=object)
    references[:] = answer_lists(answers)  # Arrow-convertible
    return {**batch, ANSWERS: references, "vqa_accuracy": accuracy, "exact_match": exact}
