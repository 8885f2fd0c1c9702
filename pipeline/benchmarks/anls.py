"""ANLS, the average normalized Levenshtein similarity of DocVQA, as lmms-eval's ``anls`` metric
computes it for one question (``lmms_eval/api/metrics.py``; from Qwen-VL's InfographicVQA script).

For each reference: the edit distance between the two strings, each stripped, lower-cased and
with its whitespace runs collapsed to one space, divided by the length of the longer of the two
strings *as given* (upper-cased, as the published code measures them: "ß" counts 2), 0 when both
are empty. The question's similarity is 1 minus the smallest such value, and 0 below 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein

THRESHOLD = 0.5  # similarities below it count as 0


def _squashed(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, references: Sequence[str]) -> float:
    """ANLS of ``prediction`` against ``references`` (at least one)."""
    if not references:
        raise ValueError("ANLS needs at least one reference")
    answer = _squashed(prediction)
    distances = []
    for reference in references:
        # The divisor comes from the raw strings, the distance from the normalised ones: a
        # prediction with extra spaces inside is measured longer than it is compared.
        length = max(len(reference.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else Levenshtein.distance(_squashed(reference), answer) / length)
    similarity = 1 - min(distances)
    return similarity if similarity >= THRESHOLD else 0.0
