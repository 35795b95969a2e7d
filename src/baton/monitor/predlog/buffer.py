"""The prediction log's hot path: sampling, blocks of small batches, a bounded queue.

Serving calls :meth:`PredictionBuffer.log` (HTTP and streams) on the event loop for every
scored batch: a few appends and no I/O. When the
queue is full, batches are dropped and counted; serving is never slowed. The writer
(:mod:`.writer`) takes what is queued from here and hands back what it failed to store.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from baton.batch import Batch, concat_batches
from baton.monitor.predlog.records import Pending, encode_pair, new_ids

#: Most rows gathered into one logged block (one row in the store).
BLOCK_ROWS = 1024


class _Block:
    """Batches of one model version logged since the last write, to be stored as one."""

    def __init__(self, inputs: Batch, outputs: Batch) -> None:
        self.rid = os.urandom(8).hex()
        self.time = time.time()
        self.rows = 0
        self.inputs: list[Batch] = []
        self.outputs: list[Batch] = []
        self.keys: list[str | None] = []
        self.keyed = False
        self.shape = (_shape(inputs), _shape(outputs))

    def takes(self, inputs: Batch, outputs: Batch) -> bool:
        """Whether the batch's columns can be concatenated to this block's."""
        return self.rows + inputs.rows <= BLOCK_ROWS and \
            (_shape(inputs), _shape(outputs)) == self.shape

    def add(self, inputs: Batch, outputs: Batch, keys: Sequence[str | None] | None) -> int:
        start = self.rows
        self.inputs.append(inputs)
        self.outputs.append(outputs)
        if keys:
            self.keyed = True
            self.keys.extend(keys)
        else:
            self.keys.extend([None] * inputs.rows)
        self.rows += inputs.rows
        return start

    def pending(self, model: str, version: str) -> Pending:
        """The block to store, its JSON encoded here, on the event loop: from the writer's
        thread, its 0.5 ms a block held the interpreter in bursts, and at every turn the
        loop waited up to the 5 ms switch interval for it (100-row p99 45-52 ms, 17 ms
        with no log; bench/README.md#the-prediction-logs-cost)."""
        inputs, outputs = concat_batches(self.inputs), concat_batches(self.outputs)
        return Pending(model, version, self.time, self.rid, self.keys if self.keyed else None,
                       inputs, outputs, encode_pair(inputs, outputs))


def _shape(batch: Batch) -> tuple[Any, ...]:
    """Column names, and for arrays their dtype kind and inner dimensions."""
    return tuple((name, col.dtype.kind, col.shape[1:]) if isinstance(col, np.ndarray)
                 else (name,) for name, col in batch.columns.items())


class PredictionBuffer:
    """Scored batches waiting to be written: open blocks, the queue, and the batches of a
    failed write (written first next time), all bounded by ``max_pending`` batches."""

    def __init__(self, *, sample: float = 1.0, max_pending: int = 100_000) -> None:
        self.sample = sample
        self.max_pending = max_pending
        #: Rows not logged because the queue was full (or a failed write's overflow).
        self.dropped = 0
        self._pending: collections.deque[Pending] = collections.deque()
        self._retry: collections.deque[Pending] = collections.deque()
        self._rng = random.Random()
        self._blocks: dict[tuple[str, str], _Block] = {}

    @property
    def queued(self) -> int:
        """Batches waiting for the store (open blocks not counted)."""
        return len(self._pending) + len(self._retry)

    def has_work(self) -> bool:
        return bool(self._pending or self._retry or self._blocks)

    # -- hot path ------------------------------------------------------------------------
    def log(self, model: str, version: str, inputs: Batch, outputs: Batch,
            keys: Sequence[str | None] | None = None) -> list[str]:
        """Log one scored batch (sampled) and return its prediction ids.

        Small batches of one model version are gathered into one *block* (up to
        :data:`BLOCK_ROWS` rows, until the next write): their ids share the block's id and
        count on from the rows before them, and the store writes one row per block, so a
        stream of 1-row requests costs the store a row per few hundred requests, not one
        each. A batch that is not logged still gets ids (random ones)."""
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return new_ids(inputs.rows)[1]
        if len(self._pending) + len(self._retry) >= self.max_pending:
            self.dropped += inputs.rows
            return new_ids(inputs.rows)[1]
        where = (model, version)
        block = self._blocks.get(where)
        if block is not None and not block.takes(inputs, outputs):
            self._seal(where)
            block = None
        if block is None:
            block = self._blocks[where] = _Block(inputs, outputs)
        start = block.add(inputs, outputs, keys)
        if block.rows >= BLOCK_ROWS:
            self._seal(where)
        return [f"{block.rid}-{start + i}" for i in range(inputs.rows)]

    def record(self, model: str, version: str, request_id: str, inputs: Batch,
               outputs: Batch, keys: Sequence[str | None] | None = None) -> None:
        """Queue one scored batch under ids the caller chose: ``f"{request_id}-{i}"``
        (tools and tests; serving calls :meth:`log`); ``keys`` are the records' keys, which
        labels may name instead of the id (a key names the latest prediction logged with
        it)."""
        if self.sample <= 0.0 or (self.sample < 1.0 and self._rng.random() >= self.sample):
            return
        if len(self._pending) + len(self._retry) >= self.max_pending:
            self.dropped += inputs.rows
            return
        self._pending.append(Pending(model, version, time.time(), request_id, keys, inputs,
                                     outputs))

    def _seal(self, where: tuple[str, str]) -> None:
        block = self._blocks.pop(where, None)
        if block is not None:
            self._pending.append(block.pending(*where))

    # -- the writer's side ---------------------------------------------------------------
    def take(self) -> tuple[list[Pending], list[Pending]]:
        """Everything to write: (batches of a failed write, batches new since the last
        take), open blocks sealed first."""
        for where in list(self._blocks):
            self._seal(where)
        retried, new = [], []
        while self._retry:  # popleft, not copy-and-clear: a tool may flush from a thread
            retried.append(self._retry.popleft())
        while self._pending:
            new.append(self._pending.popleft())
        return retried, new

    def give_back(self, items: Sequence[Pending]) -> None:
        """Keep a failed write's batches for the next one, as far as the bound allows
        (the oldest are dropped first, and counted)."""
        room = max(0, self.max_pending - len(self._pending))
        cut = max(0, len(items) - room)
        for item in items[:cut]:
            self.dropped += item.inputs.rows
        self._retry.extend(items[cut:])
