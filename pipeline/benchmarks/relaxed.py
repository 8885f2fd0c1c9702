"""Relaxed accuracy (ChartQA, Methani et al. 2020) as lmms-eval's ``chartqa`` task computes it
(its ``relaxed_correctness``, from Qwen-VL's evaluation script).

When the prediction parses as a number and the target parses as a non-zero number, the
prediction is right within 5% of the target; otherwise the two must be equal ignoring case.
A number is what Python's ``float`` accepts (so "1e3", " 7 ", "1_000", "inf", "nan" and
non-ASCII digits), or such a text followed by "%" signs, divided by 100. "1,000", "$5" and
"5 kg" are not numbers and compare as text.
"""

from __future__ import annotations

MAX_RELATIVE_CHANGE = 0.05


def as_number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str) -> bool:
    predicted, expected = as_number(prediction), as_number(target)
    if predicted is not None and expected:  # a target of 0 (falsy) or text compares as text
        return abs(predicted - expected) / abs(expected) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()
