"""Labels for one model version: parse feedback, attach it to logged predictions, and
recompute the quality figures.

HTTP feedback (``POST /v1/models/NAME/feedback``, one call per request) and the labels
stream (one call per micro-batch) both come to :meth:`Feedback.apply`. The serving layer
builds one :class:`Feedback` per version when the prediction log is on and the model has a
records prediction field; this module knows nothing of serving, only the two small
protocols below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from baton.contract.spec import FieldSpec
from baton.errors import BatonError, RequestError
from baton.monitor.predlog import FeedbackResult
from baton.monitor.quality import QualityTracker, parse_feedback

log = logging.getLogger("baton.feedback")


class LabelStore(Protocol):
    """Where predictions are logged and labels attached (a ``PredictionLog``)."""

    async def flush(self) -> None: ...

    def add_labels(self, model: str, labels: Sequence[tuple[str, Any]]) -> FeedbackResult: ...

    def labelled(self, model: str, version: str, window: int) -> list[tuple[Any, Any]]: ...


class MetricRunner(Protocol):
    """Runs a bundle's ``module:function`` metrics in its own environment (a worker pool)."""

    async def metrics(self, functions: list[str], y_true: list[Any], y_pred: list[Any],
                      outputs: list[Any]) -> dict[str, Any]: ...


@dataclass
class LabelsOutcome:
    """What attaching one batch of labels did, and the quality figures after it."""

    result: FeedbackResult
    quality: dict[str, float]
    labelled: int
    metric_errors: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The body ``POST /v1/models/NAME/feedback`` answers."""
        return {"accepted": len(self.result.accepted), "unknown": self.result.unknown,
                "duplicates": self.result.duplicates, "quality": self.quality,
                "labelled": self.labelled, "metric_errors": self.metric_errors}


class Feedback:
    """The labels of one model version (``name``, ``version``) and its quality."""

    def __init__(self, name: str, version: str, store: LabelStore, quality: QualityTracker,
                 runner: MetricRunner) -> None:
        self.name, self.version = name, version
        self.store = store
        self.quality = quality
        self.runner = runner

    @property
    def spec(self) -> FieldSpec:
        """The output field labels are compared with (and type-checked against)."""
        return self.quality.spec

    def parse(self, body: bytes) -> list[tuple[str, Any]]:
        """A feedback request body as ``(id, label)`` pairs, labels type-checked."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"request body is not valid JSON: {exc}",
                               code="INVALID_JSON") from None
        return parse_feedback(data, self.spec)

    async def apply(self, labels: Sequence[tuple[str, Any]]) -> LabelsOutcome:
        """Join parsed ``(id, label)`` pairs to logged predictions, in one ``add_labels``
        transaction, then recompute the quality figures once.

        It raises only before anything was attached, so a caller may retry it; the
        quality update never fails it.
        """
        await self.store.flush()  # predictions made a moment ago are in the log
        result = await asyncio.to_thread(self.store.add_labels, self.name, labels)
        if result.accepted or not self.quality.history:
            await self.update_quality()
        q = self.quality
        return LabelsOutcome(result, q.current, q.labelled, q.last_errors)

    async def update_quality(self) -> None:
        """Recompute the quality over the latest labelled window of this version."""
        q = self.quality
        try:
            pairs = await asyncio.to_thread(self.store.labelled, self.name, self.version,
                                            q.window)
        except Exception as exc:  # the labels are attached: report, keep the last figures
            log.warning("%s@%s: cannot read labelled predictions for quality: %s",
                        self.name, self.version, exc)
            return
        custom: dict[str, float] = {}
        if q.custom and pairs:
            try:
                field = q.spec.name
                res = await self.runner.metrics(q.custom, [t for _, t in pairs],
                                                [o.get(field) for o, _ in pairs],
                                                [o for o, _ in pairs])
                custom = res["values"]
                q.failed(res.get("errors") or {})
            except BatonError as exc:  # a metric never fails the feedback, nor serving
                q.failed({m: exc.message for m in q.custom})
        q.update(pairs, custom)
