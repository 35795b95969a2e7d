"""A batch of rows held as named columns: the unit that flows from decoding to a worker.

A column is either a numpy array whose first axis is the row axis (numbers, booleans, tensors)
or a plain list of Python values (strings, nullable booleans). Numeric nulls are NaN, the
convention pandas and scikit-learn use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Column = np.ndarray | list[Any]


@dataclass(slots=True)
class Batch:
    columns: dict[str, Column]
    rows: int

    def nbytes(self) -> int:
        """Bytes its arrays hold; a list column counts 8 bytes a value."""
        return sum(c.nbytes if isinstance(c, np.ndarray) else 8 * len(c)
                   for c in self.columns.values())

    def slice(self, start: int, stop: int) -> Batch:
        return Batch({k: v[start:stop] for k, v in self.columns.items()}, stop - start)

    def row_lists(self) -> list[list[Any]]:
        """Columns as plain Python lists (for JSON encoding)."""
        return [c.tolist() if isinstance(c, np.ndarray) else c for c in self.columns.values()]

    def to_records(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [dict(zip(names, row, strict=True)) for row in zip(*self.row_lists(), strict=True)]


def concat_batches(batches: Sequence[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    columns: dict[str, Column] = {}
    for name, col in first.columns.items():
        parts = [b.columns[name] for b in batches]
        if isinstance(col, np.ndarray):
            columns[name] = np.concatenate(parts)
        else:
            merged: list[Any] = []
            for p in parts:
                merged.extend(p)
            columns[name] = merged
    return Batch(columns, sum(b.rows for b in batches))


def split_batch(batch: Batch, sizes: Sequence[int]) -> list[Batch]:
    if len(sizes) == 1:
        return [batch]
    out, start = [], 0
    for n in sizes:
        out.append(batch.slice(start, start + n))
        start += n
    return out
