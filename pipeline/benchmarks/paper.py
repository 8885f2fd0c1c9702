"""The HiRED paper's accuracy for LLaVA-Next-7B (Arif et al., AAAI 2025, arXiv 2408.10945), set
beside a sweep's own numbers: the stock model (every visual token) and HiRED at 20% and 40% of the
tokens with the paper's alpha of 0.5, scored with lmms-eval.

The paper gives one number per benchmark. For POPE it is set beside ``f1``, the value LLaVA-family
papers report for POPE; the paper does not name which of lmms-eval's five POPE values it is.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "llava-hf/llava-v1.6-vicuna-7b-hf"
ALPHA = 0.5
FULL = None  # the stock model's column (strategy "none")


@dataclass(frozen=True)
class PaperResult:
    key: str  # the aggregate it is comparable with
    value: dict[float | None, float]  # budget fraction (FULL for every token) -> the aggregate, as a fraction


RESULTS = {  # the paper's percentages, as the fractions the aggregates are
    "vqav2": PaperResult("accuracy", {FULL: 0.803, 0.2: 0.775, 0.4: 0.788}),
    "textvqa": PaperResult("accuracy", {FULL: 0.648, 0.2: 0.614, 0.4: 0.636}),
    "docvqa": PaperResult("anls", {FULL: 0.734, 0.2: 0.608, 0.4: 0.687}),
    "pope": PaperResult("f1", {FULL: 0.876, 0.2: 0.870, 0.4: 0.882}),
}


def paper_value(benchmark: str, strategy: str, budget, alpha: float | None) -> tuple[str, float] | None:
    """(aggregate key, fraction) the paper reports for this setting, or None where it reports none:
    strategy "none", or "hired" at a fractional budget of 0.2 or 0.4 with alpha 0.5."""
    result = RESULTS.get(benchmark)
    if result is None:
        return None
    if strategy == "none":
        column = FULL
    elif strategy == "hired" and isinstance(budget, float) and alpha == ALPHA:
        column = budget
    else:
        return None
    value = result.value.get(column)
    return None if value is None else (result.key, value)
