"""Whether an input's columns fit a benchmark, checked on its Arrow schema before any row is read."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from collections.abc import Iterable

from .base import ANSWERS_FLAG, PREDICTION, PREDICTION_COLUMN, QUESTION_FLAG, Benchmark, Column, ColumnError


def named_columns(benchmark: Benchmark, *, question: str | None = None, answers: str | None = None,
                  prediction: str | None = None, others: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """The input column each flag names for a benchmark column: ``--question-column`` the question,
    ``--answers-column`` the ground truth, ``--text-column`` the prediction, ``--column NAME=COLUMN``
    any of them (given last, it wins). Columns no flag names are read under their own names. A
    NAME the benchmark does not read is refused (:class:`ColumnError`)."""
    named = {PREDICTION: prediction} if prediction else {}
    for column in benchmark.columns:
        given = {QUESTION_FLAG: question, ANSWERS_FLAG: answers}.get(column.flag)
        if given:
            named[column.name] = given
    known = [c.name for c in benchmark.columns + (PREDICTION_COLUMN,)]
    for name, source in others:
        if name not in known:
            raise ColumnError(f"--column {name}={source}: {benchmark.name} reads no column {name!r} "
                              f"(its columns: {', '.join(known)})")
        named[name] = source
    return named


def check_columns(benchmark: Benchmark, schema: pa.Schema, columns: Mapping[str, str] | None = None,
                  *, for_prompt: bool = False) -> dict[str, str]:
    """The input column that holds each column ``benchmark`` reads (its name -> the input's).

    ``columns`` names other input columns for some of them (``{"answers": "refs"}``, from
    ``--answers-column refs``). Scoring reads the ground truth and the prediction (``text``);
    ``for_prompt`` adds the columns the prompt is built from, for a run that generates (which
    produces ``text`` itself, so it is not required then). Extra input columns are fine.
    Raises :class:`ColumnError`, one line naming the column and the flag that fixes it.
    """
    columns = dict(columns or {})
    known = benchmark.columns + (PREDICTION_COLUMN,)
    unknown = sorted(set(columns) - {c.name for c in known})
    if unknown:
        raise ColumnError(f"{benchmark.name} reads no column {unknown[0]!r} (its columns: "
                          f"{', '.join(c.name for c in known)})")
    if for_prompt:
        needed = benchmark.columns
    else:
        needed = benchmark.scoring_columns()
    return {column.name: _found(benchmark, schema, column, columns.get(column.name)) for column in needed}


def _found(benchmark: Benchmark, schema: pa.Schema, column: Column, named: str | None) -> str:
    source = named or column.name
    count = schema.names.count(source)
    if count == 0:
        if named:
            raise ColumnError(f"{column.usage(source)}: the input has no column {source!r}")
        raise ColumnError(f"{benchmark.name} needs a column {column.name!r} ({column.holds}, {column.kind.name}) "
                          f"and the input has none: name the column that holds it with {column.usage()}")
    if count > 1:
        raise ColumnError(f"the input has {count} columns named {source!r}; {benchmark.name} cannot tell which holds "
                          f"{column.holds}")
    found = schema.field(source).type
    if not column.kind.accepts(found):
        what = "null (every value is null)" if pa.types.is_null(found) else str(found)
        raise ColumnError(f"column {source!r} is {what}, but {benchmark.name} reads {column.holds} as "
                          f"{column.kind.name}: name another column with {column.usage()}")
    return source
