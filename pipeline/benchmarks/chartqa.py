"""ChartQA, as lmms-eval's ``chartqa`` task (lmms-lab/ChartQA, test split).

Prompt: the question, then "\\nAnswer the question with a single word.". Generation: at most 16
new tokens, greedy; no ``until`` declared.

Metric: relaxed accuracy (:func:`~pipeline.benchmarks.relaxed.relaxed_correct`), 1 or 0: within
5% of the target when both sides parse as numbers (the target non-zero), else equal ignoring
case. Aggregates: ``relaxed_overall`` over every row, ``relaxed_human_split`` over the rows whose
``type`` is "human_test", ``relaxed_augmented_split`` over all the others.

Kept as lmms-eval has it: nothing but the prediction's ends is stripped, so "12 " parses but
"12%." and "$12" do not and compare as text; a target of "0" is compared as text; "1,000" is
text; a percentage counts as its hundredth ("50%" is within 5% of "0.5"); a ``type`` other
than "human_test", null included, counts in the augmented split.
"""

from __future__ import annotations

from .base import STRING, Benchmark, Column, Generation, answers_column, question_column, text
from .relaxed import relaxed_correct

POST_PROMPT = "\nAnswer the question with a single word."
HUMAN = "human_test"


class ChartQATally:
    columns = ("type",)

    def __init__(self):
        self.total, self.rows = 0.0, 0  # its own sum, in row order, as lmms-eval's overall mean
        self.sums, self.counts = {"human": 0.0, "augmented": 0.0}, {"human": 0, "augmented": 0}

    def add(self, row, score: float) -> None:
        split = "human" if row.get("type") == HUMAN else "augmented"
        self.total += score
        self.rows += 1
        self.sums[split] += score
        self.counts[split] += 1

    def result(self) -> dict[str, float | None]:
        def mean(total: float, rows: int) -> float | None:
            return total / rows if rows else None

        return {
            "relaxed_overall": mean(self.total, self.rows),
            "relaxed_human_split": mean(self.sums["human"], self.counts["human"]),
            "relaxed_augmented_split": mean(self.sums["augmented"], self.counts["augmented"]),
        }


BENCHMARK = Benchmark(
    name="chartqa",
    task="chartqa",
    dataset="lmms-lab/ChartQA, test",
    columns=(
        question_column(),
        answers_column("answer", STRING, "the answer"),
        Column("type", STRING, 'the split ("human_test" or "augmented_test")'),
    ),
    generation=Generation(max_new_tokens=16),
    prompt=lambda row: text(row, "question") + POST_PROMPT,
    truth=lambda row: text(row, "answer"),
    rule=lambda prediction, answer: 1.0 if relaxed_correct(prediction, answer) else 0.0,
    tally=ChartQATally,
    keys=("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"),
    metric="relaxed accuracy, 1 or 0",
)
