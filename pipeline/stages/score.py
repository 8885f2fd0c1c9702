"""The VQA job's scoring stage.

Without ``--benchmark``: VQA accuracy and exact match of each generated answer against the row's
``answers`` (the EvalAI answer processor and VQA accuracy as behind LLaVA's published VQAv2
numbers, :mod:`pipeline.benchmarks.vqa_answers`).

With ``--benchmark``: the benchmark's per-row ``score`` (:mod:`pipeline.benchmarks`), computed for
every row whose ground truth can be scored, error rows included: a row without an answer scores
0 and counts, as a null prediction does in ``pipeline.score``. A row whose ground truth cannot be
scored gets no score and, if it was fine so far, the error "bad ground truth" with the reason.
"""

from __future__ import annotations

import numpy as np

from ..benchmarks import Benchmark, BenchmarkDataError, get_benchmark
from ..benchmarks.scoring import rows_of
from ..benchmarks.vqa_answers import exact_match, vqa_accuracy
from ..columns import ANSWERS, EXACT_MATCH, GENERATED, QUESTION, READ_COLUMNS, SCORE, TEXT, VQA_ACCURACY, carried
from ..row_errors import ErrorKind, RowError
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


class BenchmarkScoring:
    """Ray Data stage (a callable class; tests call it directly): each row's ``score`` as the
    benchmark defines it, and the benchmark's columns handed on under their own names, as the
    output keeps them."""

    def __init__(self, benchmark: Benchmark):
        self.benchmark = benchmark
        self.sources = {c.name: carried(c.name) for c in benchmark.columns}
        self.needs = {TEXT: GENERATED[TEXT], **{carried(c.name): c.holds for c in benchmark.columns}}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = Rows(batch, self.needs, "score")
        texts = rows.column(TEXT)
        values = rows_of(batch, self.sources)
        fine = set(rows.ok())
        scores = rows.add(SCORE)
        for i, row in enumerate(values):
            try:  # the ground truth is checked on every row: bad data never hides behind a failed row
                scores[i] = self.benchmark.score(texts[i] if i in fine else None, row)
            except BenchmarkDataError as error:
                if i in fine:
                    rows.fail(i, RowError(ErrorKind.BAD_GROUND_TRUTH, f"{self.benchmark.name}: {error.reason}"))
        # The read stage's own question and references are not this run's: the benchmark's columns replace them.
        rows.drop(QUESTION, ANSWERS, *self.sources.values())
        for name in self.sources:
            rows.add(name, [row[name] for row in values])
        return rows.result()


def score_benchmark(batch: dict[str, np.ndarray], benchmark: str) -> dict[str, np.ndarray]:
    """Ray Data stage (a function: no actor to hold): :class:`BenchmarkScoring` of the benchmark named."""
    return BenchmarkScoring(get_benchmark(benchmark))(batch)
