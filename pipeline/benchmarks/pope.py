"""POPE, as lmms-eval's ``pope`` task (lmms-lab/POPE, test split: the adversarial, popular and
random sets together).

Prompt: the question, stripped, then "\\nAnswer the question using a single word or phrase.".
Generation: at most 128 new tokens, greedy; no ``until`` declared.

Metric: 1 when the prediction, stripped and lower-cased, is exactly the answer ("yes" or "no",
lower-cased and stripped), else 0: "Yes" scores, "Yes." and "Yes, there is" do not.
Aggregates: ``accuracy`` (the mean), ``precision`` = TP / (TP + FP) and ``recall`` = TP / (TP + FN)
with "yes" the positive class, ``f1``, and ``yes_ratio``.

Kept as lmms-eval has it: ``yes_ratio`` is the share of "yes" in the ground truth, not in the
predictions; a false negative is a "yes" row answered exactly "no", so an answer that is neither
lowers accuracy but not recall; precision, recall and f1 are 0 when their denominator is. A null
prediction is neither yes nor no. A ground truth other than yes/no is an error (lmms-eval
asserts it).
"""

from __future__ import annotations

from .base import STRING, Benchmark, BenchmarkDataError, Generation, answers_column, question_column, ratio, text

POST_PROMPT = "\nAnswer the question using a single word or phrase."


def ground_truth(row) -> str:
    answer = text(row, "answer").lower().strip()
    if answer not in ("yes", "no"):
        raise BenchmarkDataError(f"`answer` is {row['answer']!r}; POPE's answers are yes or no")
    return answer


def said(prediction: str | None) -> str | None:
    """The prediction as the task compares it."""
    return None if prediction is None else prediction.strip().lower().strip()


class POPETally:
    columns = ("text", "answer")

    def __init__(self):
        self.rows, self.total = 0, 0.0
        self.true_yes = self.false_yes = self.false_no = 0
        self.truth_yes = self.truth_no = 0

    def add(self, row, score: float) -> None:
        truth, answer = ground_truth(row), said(row.get("text"))
        self.rows += 1
        self.total += score
        self.truth_yes += truth == "yes"
        self.truth_no += truth == "no"
        self.true_yes += truth == "yes" and answer == "yes"
        self.false_yes += truth == "no" and answer == "yes"
        self.false_no += truth == "yes" and answer == "no"

    def result(self) -> dict[str, float | None]:
        if not self.rows:
            return dict.fromkeys(BENCHMARK.keys)
        precision = ratio(self.true_yes, self.true_yes + self.false_yes)
        recall = ratio(self.true_yes, self.true_yes + self.false_no)
        return {
            "accuracy": self.total / self.rows,
            "precision": precision,
            "recall": recall,
            "f1": ratio(2 * (precision * recall), precision + recall),
            "yes_ratio": ratio(self.truth_yes, self.truth_yes + self.truth_no),
        }


BENCHMARK = Benchmark(
    name="pope",
    task="pope",
    dataset="lmms-lab/POPE, test",
    columns=(question_column(), answers_column("answer", STRING, 'the answer ("yes" or "no")')),
    generation=Generation(max_new_tokens=128),
    prompt=lambda row: text(row, "question").strip() + POST_PROMPT,
    truth=ground_truth,
    rule=lambda prediction, truth: 1.0 if said(prediction) == truth else 0.0,
    tally=POPETally,
    keys=("accuracy", "precision", "recall", "f1", "yes_ratio"),
    metric="exact yes/no match, 1 or 0",
)
