"""The benchmarks the HiRED paper reports (and GQA), each scored as lmms-eval scores it.

One module a benchmark: its columns, prompt, generation settings, per-row metric and aggregates,
with lmms-eval's quirks in its docstring (docs/benchmarks.md has them all). Shared rules have
their own modules: the EvalAI answer processor and VQA accuracy (:mod:`.vqa_answers`), ANLS
(:mod:`.anls`), relaxed accuracy (:mod:`.relaxed`).
"""

from __future__ import annotations

from ..errors import InputError
from . import chartqa, docvqa, gqa, mme, ocrbench, pope, scienceqa, textvqa, vqav2
from .base import PREDICTION, Benchmark, BenchmarkDataError, Column, ColumnError, Generation
from .schema import check_columns, named_columns
from .scoring import Aggregator, BenchmarkScorer, score_batch

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (vqav2.BENCHMARK, textvqa.BENCHMARK, docvqa.BENCHMARK, chartqa.BENCHMARK, scienceqa.BENCHMARK,
              pope.BENCHMARK, mme.BENCHMARK, ocrbench.BENCHMARK, gqa.BENCHMARK)
}


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise InputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}") from None


__all__ = [
    "BENCHMARKS", "PREDICTION", "Aggregator", "Benchmark", "BenchmarkDataError", "BenchmarkScorer", "Column",
    "ColumnError", "Generation", "check_columns", "get_benchmark", "named_columns", "score_batch",
]
