"""What the prediction log's parts hand each other: a scored batch waiting to be stored
(:class:`Pending`), the answer to a feedback request, and the store's protocol.

No SQLAlchemy here: this module is on the hot path's side of the log."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

from baton.batch import Batch

_NP = orjson.OPT_SERIALIZE_NUMPY


class Pending(NamedTuple):
    """One scored batch (or block of batches) waiting to be written. Its predictions' ids
    are ``f"{rid}-{row}"``; ``keys`` are stream records' keys (None: no key at all)."""

    model: str
    version: str
    time: float
    rid: str
    keys: Sequence[str | None] | None
    inputs: Batch
    outputs: Batch
    #: ``inputs`` and ``outputs`` as the store's JSON, when serving encoded them as it
    #: sealed the block (None: the writer's thread encodes them).
    encoded: tuple[str, str] | None = None

    def stored_json(self) -> tuple[str, str]:
        """``inputs`` and ``outputs`` as the store's JSON text."""
        return self.encoded or encode_pair(self.inputs, self.outputs)


@dataclass
class FeedbackResult:
    accepted: list[str]
    unknown: list[str]
    duplicates: list[str]


class PredictionStore(Protocol):
    """Where logged predictions and their labels are kept. Every method but ``describe``
    is called from a worker thread, never on the event loop."""

    kind: str

    def describe(self) -> dict[str, Any]:
        """``{"store": kind, ...where}``, with no secret in it."""

    def open(self) -> None:
        """Create or migrate the tables; raise :class:`BatonError` if impossible."""

    def write(self, items: Sequence[Pending]) -> None:
        """Store scored batches in one transaction (a batch id already there is kept as it
        is; a stream key names the latest of them)."""

    def prune(self, cutoff: float) -> None:
        """Delete predictions, keys and labels older than ``cutoff`` (Unix seconds)."""

    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Attach labels in one transaction; each prediction at most once."""

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]:
        """The latest ``window`` (output record, label) pairs of a model version."""

    def close(self) -> None: ...


def labelled_pairs(rows: Sequence[tuple[str, int, str]],
                   outputs: dict[str, dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(output record, label) for each (batch id, row, label as JSON) whose batch's output
    columns are known (a pruned batch's labels are left out)."""
    pairs = []
    for rid, idx, label in rows:
        cols = outputs.get(rid)
        if cols is not None:
            pairs.append(({k: v[idx] for k, v in cols.items()}, orjson.loads(label)))
    return pairs


def encode_columns(batch: Batch) -> bytes:
    """A batch's columns as one JSON object of lists (NaN becomes null)."""
    return orjson.dumps(batch.columns, option=_NP)


def encode_pair(inputs: Batch, outputs: Batch) -> tuple[str, str]:
    """A scored batch's inputs and outputs as the store's JSON text."""
    return encode_columns(inputs).decode(), encode_columns(outputs).decode()


def new_ids(n: int) -> tuple[str, list[str]]:
    """A request id and its prediction ids: the request id, then the row index."""
    request = os.urandom(8).hex()
    return request, [f"{request}-{i}" for i in range(n)]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
