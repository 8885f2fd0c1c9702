"""What every stage shares, so a stage's own code is its transformation alone: the columns it
needs checked on arrival, a row failed with a typed error, the columns it does not consume
handed on untouched.

Ray Data hands a stage a dict of 1-D numpy arrays, one per column (see pipeline.columns).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..columns import ERROR_DETAIL, ERROR_KIND
from ..row_errors import RowError


class MissingColumns(ValueError):
    """A batch lacks a column its stage needs: a broken pipeline, never bad data."""


def missing(value) -> bool:
    """Null in a column batch. A column that was all nulls in one block travels through Ray as
    Arrow's null type and comes back as float NaN (np.float32, not a Python float), so NaN counts
    as missing too."""
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def object_array(values) -> np.ndarray:
    """A 1-D object array of ``values`` (numpy would make a 2-D array of equal-length lists)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _plain(value):
    """A value as Arrow takes it back: Ray hands list columns over as numpy arrays."""
    return value.tolist() if isinstance(value, np.ndarray) else value


class Rows:
    """One batch in a stage: the columns it declared, its rows' errors, the columns it adds."""

    def __init__(self, batch: Mapping[str, np.ndarray], needs: Mapping[str, str], stage: str):
        absent = [name for name in needs if name not in batch]
        if absent:
            wanted = "; ".join(f"{name} ({needs[name]})" for name in absent)
            raise MissingColumns(f"the {stage} stage needs {wanted}; the batch has {', '.join(sorted(batch)) or 'nothing'}")
        self.stage, self.needs, self.batch = stage, needs, batch
        self.size = len(batch[next(iter(needs))]) if needs else len(next(iter(batch.values()), ()))
        self.added: dict[str, list] = {}
        self.dropped: set[str] = set()
        self.kinds = self._values(ERROR_KIND) if ERROR_KIND in batch else [None] * self.size
        self.details = self._values(ERROR_DETAIL) if ERROR_DETAIL in batch else [None] * self.size

    def _values(self, name: str) -> list:
        return [None if missing(v) else _plain(v) for v in self.batch[name]]

    def column(self, name: str) -> list:
        """A declared (or added) column as a list, nulls as None."""
        if name in self.added:
            return self.added[name]
        if name not in self.needs:
            raise MissingColumns(f"the {self.stage} stage reads {name!r} without declaring it")
        return self._values(name)

    def ok(self) -> list[int]:
        """The rows without an error so far."""
        return [i for i, kind in enumerate(self.kinds) if kind is None]

    def fail(self, row: int, error: RowError) -> None:
        self.kinds[row], self.details[row] = error.kind.value, error.detail

    def add(self, name: str, values: list | None = None) -> list:
        """A new column (nulls unless given); the list returned is the one handed on."""
        self.added[name] = [None] * self.size if values is None else list(values)
        return self.added[name]

    def drop(self, *names: str) -> None:
        """Columns consumed here: not handed on."""
        self.dropped.update(names)

    def repeated(self, times: int) -> "Rows":
        """Every row ``times`` times over, in place (row ``i`` becomes rows ``i * times`` ... ``i * times +
        times - 1``): a stage that makes several output rows of one input row, such as one per prompt."""
        batch = {name: np.repeat(values, times) for name, values in self.batch.items()
                 if name not in (ERROR_KIND, ERROR_DETAIL)}
        batch[ERROR_KIND] = np.repeat(object_array(self.kinds), times)
        batch[ERROR_DETAIL] = np.repeat(object_array(self.details), times)
        out = Rows(batch, self.needs, self.stage)
        for name, values in self.added.items():
            out.add(name, [v for v in values for _ in range(times)])
        out.dropped = set(self.dropped)
        return out

    def result(self) -> dict[str, np.ndarray]:
        out = {name: values for name, values in self.batch.items()
               if name not in self.dropped and name not in self.added and name not in (ERROR_KIND, ERROR_DETAIL)}
        for name, values in out.items():
            if values.dtype == object and any(isinstance(v, np.ndarray) for v in values):
                out[name] = object_array([_plain(v) for v in values])
        out[ERROR_KIND], out[ERROR_DETAIL] = object_array(self.kinds), object_array(self.details)
        out.update({name: object_array(values) for name, values in self.added.items()})
        return out
