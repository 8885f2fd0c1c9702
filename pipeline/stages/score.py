"""The VQA job's scoring stage: VQA accuracy and exact match of each generated answer.

The rules (the EvalAI answer processor, VQA accuracy as behind LLaVA's published VQAv2 numbers)
live in :mod:`pipeline.benchmarks.vqa_answers`; this stage applies them to a batch.
"""

from __future__ import annotations

import numpy as np

from ..benchmarks.vqa_answers import exact_match, vqa_accuracy
from ..columns import ANSWERS, EXACT_MATCH, GENERATED, READ_COLUMNS, TEXT, VQA_ACCURACY
from .base import Rows

NEEDS = {TEXT: GENERATED[TEXT], ANSWERS: READ_COLUMNS[ANSWERS]}


def score_vqa(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data stage: the standard VQA accuracy and exact match of each answer."""
    rows = Rows(batch, NEEDS, "score")
    texts, answers = rows.column(TEXT), rows.column(ANSWERS)
    accuracy, exact = rows.add(VQA_ACCURACY), rows.add(EXACT_MATCH)
    for i in rows.ok():
        references = [] if answers[i] is None else [str(a) for a in answers[i]]
        if texts[i] is not None and references:
            accuracy[i], exact[i] = vqa_accuracy(texts[i], references), exact_match(texts[i], references)
    return rows.result()
