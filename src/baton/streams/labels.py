"""The labels stream: true values read from a stream and joined to logged predictions.

Each message holds one JSON object ``{"id": ..., "label": ...}``; without ``"id"`` the
message's key is the id. An id is a prediction id, or a stream record's key (its latest
prediction), exactly as in ``POST /v1/models/NAME/feedback``: each micro-batch goes through
:meth:`ModelService.apply_labels`, the function HTTP feedback uses, so its labels are
attached in one transaction and the quality is recomputed once per batch.

A label that cannot be attached never stops the flow and is never lost: it goes to the
dead-letter destination with stage ``labels`` and a code (``INVALID_JSON``,
``LABEL_INVALID``, ``UNKNOWN_PREDICTION``, ``DUPLICATE_LABEL``, ``FEEDBACK_UNAVAILABLE``).
A batch is acknowledged only after its labels are committed and its dead letters written
(at least once: a batch redelivered after a crash finds its labels already attached, and
they go to the dead letters as duplicates). A label that arrives before its prediction is
logged is unknown: nothing waits for it (replay it later with ``baton replay``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from baton.backoff import Backoff
from baton.contract.spec import FieldSpec
from baton.errors import BatonError, ContractViolation
from baton.monitor.quality import check_label
from baton.streams.base import Message, OutRecord
from baton.streams.binding import StreamBinding
from baton.streams.pipeline import Scored, StreamPipeline
from baton.streams.records import ModelIdentity, StreamModel, dead_letter

#: The dead-letter stage of every label that could not be attached.
STAGE = "labels"
#: What happened to labels, as /v1/stats and ``baton_stream_labels_total`` count them.
RESULTS = ("accepted", "unknown", "duplicate", "invalid", "unavailable")


def labels_binding(model: str, url: str, dead_letter_url: str, group: str = "",
                   max_batch: int = 256) -> StreamBinding:
    """A binding that reads labels for ``model`` (consumer group ``baton-MODEL-labels``
    unless ``group`` is given: its own, apart from the model's input stream)."""
    return StreamBinding(model, url, "", dead_letter_url, group or f"baton-{model}-labels",
                         max_batch, kind="labels")


def parse_label(msg: Message, spec: FieldSpec) -> tuple[str, Any]:
    """``(id, label)`` of one message; raises :class:`BatonError` with the code to
    dead-letter it under."""
    try:
        body = orjson.loads(msg.value)
    except orjson.JSONDecodeError as exc:
        raise BatonError(f"label message is not valid JSON: {exc}", code="INVALID_JSON") \
            from None
    if not isinstance(body, dict) or "label" not in body:
        raise BatonError("a label message must be a JSON object with a 'label' (and an "
                         "'id', or a message key)", code="LABEL_INVALID")
    given = body.get("id", msg.key)
    if not isinstance(given, str) or not given:
        raise BatonError(f"label message has no string 'id' and no message key (id "
                         f"{given!r})", code="LABEL_INVALID")
    try:
        check_label(spec, 0, body["label"])
    except ContractViolation as exc:
        err = ContractViolation(f"label {body['label']!r} of {given!r} is not a {spec.type} "
                                f"like the model's {spec.name!r} output",
                                violations=exc.violations)
        err.code = "LABEL_INVALID"
        raise err from None
    return given, body["label"]


class LabelsPipeline(StreamPipeline):
    """Read labels, attach each micro-batch at once, dead-letter what cannot be attached,
    acknowledge. ``service()`` returns the model's live version (the one quality is for)."""

    def __init__(self, binding: StreamBinding, service: Callable[[], StreamModel]) -> None:
        super().__init__(binding, service)
        self.results = dict.fromkeys(RESULTS, 0)
        self._serial = asyncio.Lock()

    def _count_dead(self, svc: StreamModel, dead: Sequence[OutRecord]) -> None:
        """Label failures are counted in ``results``, not as the model's scoring errors."""

    async def _score(self, messages: Sequence[Message]) -> Scored:
        # One batch at a time, in the order read: the first label of a prediction stays.
        async with self._serial:
            svc = await self._live_service()
            return Scored(svc, [], await self._attach(svc, messages))

    async def _attach(self, svc: StreamModel, messages: Sequence[Message]) -> list[OutRecord]:
        model = ModelIdentity(svc.name, svc.version, svc.bundle.digest)
        outcome: list[tuple[str, BatonError | None]] = []  # per message: result, reason
        try:
            spec = svc.label_spec()
        except BatonError as exc:  # a version that takes no labels: keep them all
            return self._dead(messages, [("unavailable", exc)] * len(messages), model)
        labels: list[tuple[str, Any]] = []
        for msg in messages:
            try:
                labels.append(parse_label(msg, spec))
                outcome.append(("", None))  # known once attached
            except BatonError as exc:
                outcome.append(("invalid", exc))
        if labels:
            done = await self._retry("attach labels", lambda: svc.apply_labels(labels))
            resolved = iter(_per_label(labels, done.result, svc.name))
            outcome = [next(resolved) if why is None and not result else (result, why)
                       for result, why in outcome]
        return self._dead(messages, outcome, model)

    def _dead(self, messages: Sequence[Message],
              outcome: Sequence[tuple[str, BatonError | None]],
              model: ModelIdentity) -> list[OutRecord]:
        dead = []
        for msg, (result, why) in zip(messages, outcome, strict=True):
            self.results[result] += 1
            if why is not None:
                dead.append(dead_letter(msg, STAGE, why, model))
        return dead

    async def _live_service(self) -> StreamModel:
        """The live version; waited for (never dead-lettered) while there is none yet."""
        backoff = Backoff(0.1, 10.0)
        while True:
            try:
                return self.service()
            except BatonError as exc:
                self.stats.last_error = exc.message
                await backoff.sleep()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": dict(self.results)}


def _per_label(labels: Sequence[tuple[str, Any]], result: Any,
               model: str) -> list[tuple[str, BatonError | None]]:
    """What happened to each label, in order, from ``add_labels``' lists of ids.

    An unknown id is unknown every time; an accepted id was accepted the first time it
    came in the batch and is a duplicate after that; any other id is a duplicate.
    """
    unknown, accepted = set(result.unknown), set(result.accepted)
    seen: set[str] = set()
    out: list[tuple[str, BatonError | None]] = []
    for given, _ in labels:
        if given in unknown:
            out.append(("unknown", BatonError(
                f"no logged prediction of {model} has the id or key {given!r} (not logged "
                "yet, sampled out, pruned, or never made)", code="UNKNOWN_PREDICTION")))
        elif given in accepted and given not in seen:
            out.append(("accepted", None))
        else:
            out.append(("duplicate", BatonError(
                f"{given!r} names a prediction that already has a label; the first label "
                "stays", code="DUPLICATE_LABEL")))
        seen.add(given)
    return out
