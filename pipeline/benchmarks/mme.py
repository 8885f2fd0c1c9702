"""MME, as lmms-eval's ``mme`` task (lmms-lab/MME, test split): two yes/no questions an image.

Prompt: the question, stripped, with " Please answer yes or no." removed, then "\\nAnswer the
question using a single word or phrase.". Generation: at most 16 new tokens, greedy; no
``until`` declared.

Metric: 1 when the parsed prediction equals the answer, else 0. The parse (Otter's, as lmms-eval
has it): lower-case, strip, delete every "."; "yes" or "no" as such; a single character "y" or "n";
otherwise "yes" if "yes" occurs in the first four characters, else "no" if "no" does, else
neither ("Yes, it is" is yes, "Not really" and "None" are no, "I think yes" is neither).

Aggregates, scored per category then per image (``question_id``): an image's score is acc + acc+,
acc = 100 x its right answers / 2 and acc+ = 100 when both are right; a category's score is the
mean over its images (0 to 200); ``perception`` sums the ten perception categories (out of 2000),
``cognition`` the other four (out of 800). These sums are lmms-eval's, not fractions.

Kept as lmms-eval has it: a category outside the perception list counts as cognition; an image
must have exactly two questions in its category (else an error, as lmms-eval asserts); a
ground truth that is not yes/no after the same lower-casing, stripping and period deletion is an
error. A null prediction is neither yes nor no. A sum over no categories is null.
"""

from __future__ import annotations

from .base import (
    STRING, STRING_OR_INTEGER, Benchmark, BenchmarkDataError, Column, Generation, answers_column, question_column, text,
)

POST_PROMPT = "\nAnswer the question using a single word or phrase."
REMOVED_FROM_QUESTION = " Please answer yes or no."
PERCEPTION = frozenset({"existence", "count", "position", "color", "posters", "celebrity", "scene",
                        "landmark", "artwork", "OCR"})


def parsed(prediction: str) -> str:
    """"yes", "no" or "other"."""
    answer = prediction.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    head = answer[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def ground_truth(row) -> str:
    answer = text(row, "answer").lower().strip().replace(".", "")
    if answer not in ("yes", "no"):
        raise BenchmarkDataError(f"`answer` is {row['answer']!r}; MME's answers are Yes or No")
    text(row, "category")
    if row.get("question_id") is None:
        raise BenchmarkDataError("`question_id` (the image) is null")
    return answer


class MMETally:
    columns = ("question_id", "category")

    def __init__(self):
        self.images: dict[str, dict[object, list]] = {}  # category -> image -> [questions, right]

    def add(self, row, score: float) -> None:
        image = self.images.setdefault(row["category"], {}).setdefault(row["question_id"], [0, 0.0])
        image[0] += 1
        image[1] += score

    def result(self) -> dict[str, float | None]:
        sums: dict[str, float | None] = {"perception": None, "cognition": None}
        for category, images in self.images.items():  # categories in first-seen order, as lmms-eval sums them
            total = 0.0
            for image, (questions, right) in images.items():
                if questions != 2:
                    raise BenchmarkDataError(
                        f"MME scores questions in pairs: image {image!r} of {category!r} has {questions}")
                total += (100.0 if right == 2 else 0.0) + right / questions * 100.0
            part = "perception" if category in PERCEPTION else "cognition"
            sums[part] = (sums[part] or 0.0) + total / len(images)
        return sums


BENCHMARK = Benchmark(
    name="mme",
    task="mme",
    dataset="lmms-lab/MME, test",
    columns=(
        question_column(),
        answers_column("answer", STRING, 'the answer ("Yes" or "No")'),
        Column("category", STRING, "the category (existence, ..., code_reasoning)"),
        Column("question_id", STRING_OR_INTEGER, "the image the question is about"),
    ),
    generation=Generation(max_new_tokens=16),
    prompt=lambda row: text(row, "question").strip().replace(REMOVED_FROM_QUESTION, "") + POST_PROMPT,
    truth=ground_truth,
    rule=lambda prediction, truth: 1.0 if parsed(prediction) == truth else 0.0,
    tally=MMETally,
    keys=("perception", "cognition"),
    metric="yes/no match after Otter's parse, 1 or 0",
    fractions=False,
)
