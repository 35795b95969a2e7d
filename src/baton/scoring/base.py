"""What every part of batch scoring shares: file formats, errors, the checked chunk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from baton.batch import Batch
from baton.errors import BatonError

#: File name endings and the format each one means.
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
              ".pq": "parquet"}
FORMATS = ("csv", "jsonl", "parquet")
#: The output column holding each input row's 0-based number when no --id-column is given.
ROW_COLUMN = "row"


class ScoringError(BatonError):
    """A scoring job cannot run: unreadable input, unwritable output, unusable model."""

    code = "SCORING_FAILED"
    exit_code = 2


def file_format(path: Path, explicit: str | None = None, default: str | None = None) -> str:
    """``explicit`` if given, else the format the file's extension names, else ``default``."""
    if explicit is not None:
        return explicit
    fmt = EXTENSIONS.get(path.suffix.lower(), default)
    if fmt is None:
        raise ScoringError(f"cannot tell the format of {path} from its extension: name it "
                           f"*.csv, *.jsonl or *.parquet, or pass --format",
                           code="UNKNOWN_FORMAT", details={"path": str(path)})
    return fmt


@dataclass
class DeadRow:
    """An input row that will not be scored, and why."""

    row: int | None
    key: Any
    stage: str
    error: BatonError
    payload: bytes


@dataclass
class Chunk:
    """A slice of the input, checked: the rows the model will score and those it won't.

    ``batch`` holds the good rows (contract columns, as a worker receives them); ``ids`` and
    ``rows`` hold each good row's id value and 0-based input row number; ``payload(i)`` is
    good row ``i`` as read (needed only when the model fails on it).
    """

    seq: int
    rows_read: int
    batch: Batch | None
    ids: pa.Array
    rows: np.ndarray
    payload: Callable[[int], bytes]
    dead: list[DeadRow] = field(default_factory=list)
    #: Input bytes consumed once this chunk was read (for progress and the ETA).
    end_bytes: int = 0
