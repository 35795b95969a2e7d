"""Messages to checked batches, outputs to records, failures to dead letters.

The whole micro-batch is decoded in one pass when every record is good (the usual case);
only when that fails is each record decoded alone, so one bad record costs the others
nothing but the retry, and goes to the dead-letter destination with its reason.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from baton.batch import Batch, Column, concat_batches
from baton.contract.validate import RecordsDecoder
from baton.errors import BatonError, ContractViolation
from baton.streams.base import Message, OutRecord

if TYPE_CHECKING:
    from baton.bundle.loader import Bundle
    from baton.contract.spec import FieldSpec
    from baton.monitor.predlog import FeedbackResult


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    digest: str


class ModelCounts(Protocol):
    """The model's counters a stream adds to."""

    def records(self, source: str, rows: int) -> None: ...

    def error(self, stage: str, code: str) -> None: ...


class LabelsResult(Protocol):
    @property
    def result(self) -> FeedbackResult: ...


class StreamModel(Protocol):
    """What a stream binding needs of the model version it scores with or labels (serving's
    ModelService is one)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def bundle(self) -> Bundle: ...

    @property
    def records(self) -> RecordsDecoder | None: ...

    @property
    def metrics(self) -> ModelCounts | None: ...

    @property
    def ready(self) -> bool: ...

    def answering(self) -> StreamModel: ...

    async def predict(self, batch: Batch) -> Batch: ...

    def log_predictions(self, inputs: Batch, outputs: Batch,
                        keys: Sequence[str | None] | None = None) -> list[str]: ...

    def label_spec(self) -> FieldSpec: ...

    async def apply_labels(self, labels: Sequence[tuple[str, Any]]) -> LabelsResult: ...


def dead_letter(msg: Message, stage: str, err: BatonError, model: ModelIdentity) -> OutRecord:
    """The dead-letter record: original payload, stage, error code and message, digest, time."""
    try:
        payload, encoding = msg.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(msg.value).decode(), "base64"
    body: dict[str, Any] = {
        "key": msg.key, "stage": stage, "code": err.code, "message": err.message,
        "payload": payload, "payload_encoding": encoding, "model": model.name,
        "version": model.version, "digest": model.digest, "time": time.time(),
    }
    if isinstance(err, ContractViolation):
        body["violations"] = err.violations
    return OutRecord(msg.key, orjson.dumps(body, default=str),
                     {"baton-stage": stage, "baton-code": err.code})


def output_record(msg: Message, outputs: dict[str, Any], model: ModelIdentity,
                  prediction_id: str) -> OutRecord:
    """``{"key", "id", "model", "version", "output"}``: ``id`` is the prediction id, which
    feedback names (the key may repeat; the id is this event's)."""
    body = {"key": msg.key, "id": prediction_id, "model": model.name,
            "version": model.version, "output": outputs}
    return OutRecord(msg.key, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def output_records(messages: Sequence[Message], outputs: Batch, model: ModelIdentity,
                   prediction_ids: Sequence[str]) -> list[OutRecord]:
    """:func:`output_record` for a whole scored batch, byte for byte, built column by
    column: each column (keys, ids, every output) is encoded in one ``orjson`` call and cut
    at its separators, and each record is one ``%`` of a template made once per batch."""
    rows = len(messages)
    if not (rows == outputs.rows == len(prediction_ids)):
        raise ValueError(f"{rows} messages, {outputs.rows} outputs, "
                         f"{len(prediction_ids)} prediction ids")
    if not rows:
        return []
    names = list(outputs.columns)
    head = orjson.dumps({"key": None, "id": None, "model": model.name,
                         "version": model.version, "output": dict.fromkeys(names)})
    # {"key":null,"id":null,...,"output":{"a":null,"b":null}}: each null is one value's place
    template = head.replace(b"%", b"%%").replace(b"null", b"%b")
    if template.count(b"%b") != 2 + len(names):  # a name or the model held "null"
        return [output_record(m, r, model, pid) for m, r, pid in
                zip(messages, outputs.to_records(), prediction_ids, strict=True)]
    columns = [_json_column([m.key for m in messages], rows),
               _json_column(list(prediction_ids), rows),
               *(_json_column(outputs.columns[name], rows) for name in names)]
    return [OutRecord(m.key, template % values)
            for m, values in zip(messages, zip(*columns, strict=True), strict=True)]


def _json_column(column: Column, rows: int) -> list[bytes]:
    """Each value of ``column`` as ``orjson`` encodes it inside a record: one call for the
    column, cut at the commas between values when there are exactly ``rows - 1`` of them
    (so none inside a value); else one call per value."""
    values = column.tolist() if isinstance(column, np.ndarray) else column
    whole = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    if whole.count(b",") == rows - 1:
        return whole[1:-1].split(b",")
    return [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in values]


@dataclass
class Decoded:
    """Good messages with their checked batch, and dead letters for the rest."""

    good: list[Message]
    batch: Batch | None
    dead: list[OutRecord]


def decode_messages(messages: Sequence[Message], decoder: RecordsDecoder,
                    model: ModelIdentity) -> Decoded:
    if not messages:
        return Decoded([], None, [])
    try:
        batch = decoder.decode(b"[" + b",".join(m.value for m in messages) + b"]")
        if batch.rows == len(messages):
            return Decoded(list(messages), batch, [])
    except BatonError:
        pass  # at least one bad record: decode one by one
    good, parts, dead = [], [], []
    for m in messages:
        try:
            one = decoder.decode(b"[" + m.value + b"]")
            if one.rows != 1:
                raise BatonError("a message must hold exactly one JSON record",
                                 code="NOT_ONE_RECORD")
            parts.append(one)
            good.append(m)
        except ContractViolation as exc:
            dead.append(dead_letter(m, "contract", exc, model))
        except BatonError as exc:
            dead.append(dead_letter(m, "decode", exc, model))
    return Decoded(good, concat_batches(parts) if parts else None, dead)
