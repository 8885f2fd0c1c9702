"""What a benchmark is: the columns it reads, its prompt, its generation settings, its per-row
metric and its aggregates, each as lmms-eval (commit c0c0a977, 2025-06-28) runs the task for its
``llava_hf`` model.

A row is a mapping from the benchmark's own column names (lmms-eval's, e.g. ``answers``,
``type``) to plain Python values, plus ``text``: the prediction. lmms-eval strips every
generation before a task's rule sees it (``Task.process_results``), so :meth:`Benchmark.score`
strips it too; a null prediction scores 0 and still counts as a row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from ..errors import InputError

PREDICTION = "text"  # the column holding the model's answer
SCORE = "score"  # the column of per-row values a scored table carries (float64)


class BenchmarkDataError(ValueError):
    """A row whose ground truth the benchmark cannot score (null, empty, out of range): the input
    is not the benchmark's data, and a score for it could not be right. ``row`` is its place in
    the batch, when known."""

    def __init__(self, reason: str, row: int | None = None):
        super().__init__(reason if row is None else f"row {row}: {reason}")
        self.reason, self.row = reason, row


class ColumnError(InputError):
    """The input's columns do not fit the benchmark: one line naming the column and the flag."""


# ---------------------------------------------------------------- the Arrow types a column accepts


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    t = _plain(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _items(t: pa.DataType) -> pa.DataType | None:
    """The item type of a list type, else None."""
    t = _plain(t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


def _is_text_list(t: pa.DataType) -> bool:
    item = _items(t)
    return item is not None and (_is_text(item) or pa.types.is_null(item))


def _is_answer_structs(t: pa.DataType) -> bool:
    item = _items(t)
    if item is None or not pa.types.is_struct(item) or item.get_field_index("answer") < 0:
        return False
    return _is_text(item.field("answer").type)


@dataclass(frozen=True)
class ArrowKind:
    """A set of Arrow types a column may have, named as error messages write it."""

    name: str
    accepts: Callable[[pa.DataType], bool]


STRING = ArrowKind("string", _is_text)
STRING_OR_NULL = ArrowKind("string", lambda t: _is_text(t) or pa.types.is_null(t))
STRING_LIST = ArrowKind("list<string>", _is_text_list)
STRING_OR_LIST = ArrowKind("string or list<string>", lambda t: _is_text(t) or _is_text_list(t))
VQA_ANSWERS = ArrowKind("list<struct<answer: string, ...>> or list<string>",
                        lambda t: _is_answer_structs(t) or _is_text_list(t))
INTEGER = ArrowKind("integer", lambda t: pa.types.is_integer(_plain(t)))
STRING_OR_INTEGER = ArrowKind("string or integer", lambda t: _is_text(t) or pa.types.is_integer(_plain(t)))


# ---------------------------------------------------------------- columns

# How a user names the input column for a part: the references, the question and the prediction
# have flags of their own, every other benchmark column is named with --column NAME=COLUMN.
ANSWERS_FLAG, QUESTION_FLAG, PREDICTION_FLAG = "--answers-column", "--question-column", "--text-column"


@dataclass(frozen=True)
class Column:
    """One column a benchmark reads, by lmms-eval's name for it."""

    name: str
    kind: ArrowKind
    holds: str  # what it holds, for messages
    for_scoring: bool = True  # False: read only to build the prompt
    flag: str = ""  # the flag that names another input column for it; "" for --column NAME=COLUMN

    def usage(self, column: str = "COLUMN") -> str:
        """The flag as it would be given: ``--answers-column COLUMN``, ``--column type=COLUMN``."""
        return f"{self.flag} {column}" if self.flag else f"--column {self.name}={column}"


PREDICTION_COLUMN = Column(PREDICTION, STRING_OR_NULL, "the model's answer", flag=PREDICTION_FLAG)


def question_column(name: str = "question") -> Column:
    return Column(name, STRING, "the question", for_scoring=False, flag=QUESTION_FLAG)


def answers_column(name: str, kind: ArrowKind, holds: str) -> Column:
    return Column(name, kind, holds, flag=ANSWERS_FLAG)


# ---------------------------------------------------------------- reading a row's ground truth


def text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise BenchmarkDataError(f"`{name}` is {'null' if value is None else type(value).__name__}, not a string")
    return value


def texts(row: Mapping[str, Any], name: str, at_least: int = 1) -> list[str]:
    """A list-of-strings cell (a single string counts as a list of one)."""
    value = row.get(name)
    if isinstance(value, str):
        value = [value]
    if value is None or not isinstance(value, (list, tuple)):
        what = "null" if value is None else type(value).__name__
        raise BenchmarkDataError(f"`{name}` is {what}, not a list of strings")
    if any(not isinstance(item, str) for item in value):
        raise BenchmarkDataError(f"`{name}` holds a null or non-string item")
    if len(value) < at_least:
        raise BenchmarkDataError(f"`{name}` holds {len(value)} items; the benchmark needs at least {at_least}")
    return list(value)


# ---------------------------------------------------------------- aggregates


class Tally(Protocol):
    """Folds scored rows into a benchmark's aggregates, one row at a time, in bounded memory."""

    columns: tuple[str, ...]  # the row's columns it reads besides the score

    def add(self, row: Mapping[str, Any], score: float) -> None: ...

    def result(self) -> dict[str, float | None]: ...


class Mean:
    """The mean of the per-row scores under one key (lmms-eval's ``mean`` aggregation); null
    over no rows."""

    columns: tuple[str, ...] = ()

    def __init__(self, key: str):
        self.key, self.total, self.rows = key, 0.0, 0

    def add(self, row: Mapping[str, Any], score: float) -> None:
        self.total += score  # in row order, as lmms-eval's sum(...) / len(...)
        self.rows += 1

    def result(self) -> dict[str, float | None]:
        return {self.key: self.total / self.rows if self.rows else None}


def ratio(part: float, whole: float) -> float:
    """lmms-eval's guarded fractions: 0 when the denominator is 0."""
    return part / whole if whole else 0.0


# ---------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class Generation:
    """How the answer is generated: greedy (lmms-eval's llava_hf: temperature 0, one beam), at
    most ``max_new_tokens``, ending at the model's end-of-sequence token or at any of ``stop``.

    llava_hf at c0c0a977 pops a task's ``until`` strings and never applies them, so ``stop`` is
    empty for every benchmark; each benchmark's docstring records the ``until`` its task declares."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as lmms-eval scores it.

    ``prompt(row)`` is the text of the user turn beside the image (lmms-eval's ``doc_to_text``
    with the task's pre/post prompt for llava_hf); ``truth(row)`` reads and checks the ground
    truth (raising :class:`BenchmarkDataError`); ``rule(prediction, truth)`` scores a stripped,
    non-null prediction; ``tally()`` makes a fresh aggregate with exactly ``keys``."""

    name: str
    task: str  # lmms-eval's task name
    dataset: str  # the hub copy lmms-eval loads: repository, subset, split
    columns: tuple[Column, ...]
    generation: Generation
    prompt: Callable[[Mapping[str, Any]], str]
    truth: Callable[[Mapping[str, Any]], Any]
    rule: Callable[[str, Any], float]
    tally: Callable[[], Tally]
    keys: tuple[str, ...]  # the aggregates' keys, in order
    metric: str  # the per-row value, in a phrase
    fractions: bool = True  # the aggregates are fractions in [0, 1] (MME's are sums of category scores)

    def score(self, prediction: str | None, row: Mapping[str, Any]) -> float:
        """The row's value before aggregation. The ground truth is checked even when the
        prediction is null, so bad data never hides behind a failed generation."""
        truth = self.truth(row)
        if prediction is None:
            return 0.0
        return float(self.rule(prediction.strip(), truth))

    def scoring_columns(self) -> tuple[Column, ...]:
        """The columns scoring and the aggregates read (the prompt's aside), prediction last."""
        return tuple(c for c in self.columns if c.for_scoring) + (PREDICTION_COLUMN,)

    @property
    def aggregate_columns(self) -> tuple[str, ...]:
        """The columns the aggregates read besides ``score`` (POPE's prediction and answer, MME's image and category)."""
        return self.tally().columns

    def shown(self, value: float | None) -> str:
        """An aggregate as people read it: a fraction as a percentage, MME's sums as they are."""
        if value is None:
            return "n/a"
        return f"{100 * value:.1f}%" if self.fractions else f"{value:.1f}"

    def column(self, name: str) -> Column:
        for c in self.columns + (PREDICTION_COLUMN,):
            if c.name == name:
                return c
        raise KeyError(name)
