"""The prediction log: sampled inputs and outputs by prediction id, and the labels that
arrive later, joined to them so the data scientist's quality metrics can be computed.

Every prediction has its own id, ``REQUEST-ROW``: the scored batch's random id and the row
in it (HTTP callers get them back; stream outputs carry them in their ``id`` field). Stream
records are also found by their key, which names the latest prediction made for that key
(keys name entities, which repeat; ids name events).

One concern per module:

- :mod:`.buffer`: the hot path. Serving appends to an in-memory queue (bounded: when
  full, entries are dropped and counted; serving is never slowed);
- :mod:`.writer`: a background task hands what is queued to a thread that writes it to the
  store (retried with backoff when it fails) and deletes what is older than the retention;
- :mod:`.store` (with :mod:`.tables`, :mod:`.keys` and ``migrations/``): one SQLAlchemy
  Core store, the same tables on the local SQLite file (``HOME/predictions.sqlite``) and on
  a shared database (the registry's, SQLite or PostgreSQL), imported only when a store is
  made, so importing this package does not load SQLAlchemy;
- :mod:`.log`: :class:`PredictionLog`, the three together; :mod:`.factory`: the engine's
  log as the settings describe it.

An optional **export** (``BATON_PREDICTION_LOG_SINK``, :mod:`baton.monitor.export`) also
receives every logged prediction, one JSON record each, for the data team's own tools.
"""

from __future__ import annotations

from baton.monitor.predlog.buffer import BLOCK_ROWS, PredictionBuffer
from baton.monitor.predlog.factory import open_prediction_log
from baton.monitor.predlog.log import PredictionLog
from baton.monitor.predlog.records import (
    FeedbackResult,
    Pending,
    PredictionStore,
    encode_columns,
    labelled_pairs,
    new_ids,
)

__all__ = ["BLOCK_ROWS", "FeedbackResult", "Pending", "PredictionBuffer", "PredictionLog",
           "PredictionStore", "encode_columns", "labelled_pairs", "new_ids",
           "open_prediction_log"]
