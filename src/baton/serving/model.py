"""One served model version: its request path, decode -> worker pool -> output check -> hooks.

What happens to a scored batch beyond the answer (drift observation, the prediction log)
is an ``on_scored`` hook list: a short list of plain callables, so the request path pays a
loop over it and nothing more. Feedback and quality live in :mod:`baton.monitor.feedback`;
this class only holds the thin entry points callers use.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from baton import tracing as _tracing
from baton.batch import Batch
from baton.bundle.loader import Bundle
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.contract.validate import RecordsDecoder, check_outputs
from baton.env.builder import Environment
from baton.errors import BatonError, RequestError
from baton.monitor.drift import DriftMonitor
from baton.monitor.errors import INTERNAL, error_stage
from baton.monitor.feedback import Feedback, LabelsOutcome
from baton.monitor.metrics import EngineMetrics, ModelMetrics
from baton.monitor.predlog import PredictionLog, new_ids
from baton.monitor.quality import QualityTracker, check_metrics, prediction_field
from baton.runtime.pool import WorkerPool
from baton.runtime.template import PoolTemplate
from baton.serving import v2
from baton.serving.defaults import default_timeout
from baton.serving.samples import call, load_samples, request_body
from baton.serving.traffic import Shadow
from baton.serving.workers import worker_spec
from baton.settings import Settings

B = TypeVar("B")
R = TypeVar("R")

log = logging.getLogger("baton.serving")

Keys = Sequence[str | None] | None


class ScoredHook(Protocol):
    """Called with every scored batch (inputs, checked outputs, the records' keys, if any);
    returns the batch's prediction ids if it assigns them, else ``None``."""

    def __call__(self, inputs: Batch, outputs: Batch, keys: Keys, /) -> list[str] | None: ...


class ModelService:
    """A bundle being served: contract checks on both sides of its worker pool."""

    def __init__(self, bundle: Bundle, env: Environment, settings: Settings,
                 check_report: dict[str, Any] | None = None,
                 template: PoolTemplate | None = None) -> None:
        """``check_report``: a ``baton check`` report of this bundle (the registry's), to
        derive the timeout from when nothing sets one (see :mod:`baton.serving.defaults`);
        ``template``: the worker template already started for it (``open_ahead``).
        Raises ``METRIC_NOT_APPLICABLE`` for a declared metric the model cannot yield."""
        m = bundle.manifest
        check_metrics(m.contract, m.monitoring.metrics)
        self.bundle = bundle
        self.env = env
        self.name, self.version = m.name, m.version
        contract = m.contract
        if settings.unknown_fields:
            contract = contract.with_unknown_fields(settings.unknown_fields)  # type: ignore[arg-type]
        self.contract = contract
        self.records = RecordsDecoder(contract) if contract.kind == "records" else None
        timeout = settings.timeout or m.serving.timeout
        #: Where the worker timeout comes from: the settings or bundle, a check, the default.
        self.timeout_from = "setting" if timeout else ""
        if not timeout:
            timeout, self.timeout_from = default_timeout(bundle, check_report)
        spec = worker_spec(bundle, env, settings)
        if template is not None and template.spec != spec:  # started for other settings
            template.abandon()
            template = None
        self.pool = WorkerPool(
            spec,
            workers=settings.workers or m.serving.workers,  # 0: sized by measured memory
            timeout=timeout, max_batch_rows=m.serving.max_batch_rows,
            max_queue_rows=settings.max_queue_rows, restart_wait=settings.restart_wait,
            template=template)
        #: The version replacing this one; requests that reach a closing pool go there.
        self.successor: ModelService | None = None
        #: A candidate version receiving a copy of this version's traffic.
        self.shadow: Shadow | None = None
        self.metrics: ModelMetrics | None = None
        self.predlog: PredictionLog | None = None
        self.quality: QualityTracker | None = None
        self.labels: Feedback | None = None
        self.drift = _drift_monitor(bundle)
        self.drift_alerts: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        #: What runs after each scored batch; see :class:`ScoredHook`.
        self.on_scored: list[ScoredHook] = []
        self._hooks()

    @property
    def ready(self) -> bool:
        return self.pool.ready

    def instrument(self, metrics: EngineMetrics | None, predlog: PredictionLog | None,
                   quality_window: int = 1000) -> None:
        if metrics is not None:
            self.metrics = metrics.model(self.name, self.version)
            self.pool.on_batch = self.metrics.batch_rows.observe
        self.predlog = predlog
        spec = prediction_field(self.contract)
        if predlog is not None and spec is not None:
            self.quality = QualityTracker(spec, quality_window,
                                          declared=self.bundle.manifest.monitoring.metrics)
            self.labels = Feedback(self.name, self.version, predlog, self.quality, self.pool)
            if self.metrics is not None:
                self.metrics.quality = self.quality
        self._hooks()

    def _hooks(self) -> None:
        """Rebuild ``on_scored`` from what is on: drift window first, then the log."""
        hooks: list[ScoredHook] = []
        if self.drift is not None:
            hooks.append(_observe_drift(self.drift))
        if self.predlog is not None:
            hooks.append(_log_to(self.predlog, self.name, self.version))
        self.on_scored = hooks

    def log_predictions(self, inputs: Batch, outputs: Batch, keys: Keys = None) -> list[str]:
        """Run the ``on_scored`` hooks on a scored batch. Returns the batch's prediction
        ids: the log's, or random ones when nothing assigns them."""
        ids = None
        for hook in self.on_scored:
            got = hook(inputs, outputs, keys)
            if got is not None:
                ids = got
        if _tracing.ACTIVE is not None and self.on_scored:
            _tracing.stage(_tracing.HOOKS)
        return ids if ids is not None else new_ids(inputs.rows)[1]

    def _feedback(self) -> Feedback:
        if self.labels is None:
            raise RequestError(f"{self.name} takes no feedback: the prediction log is off or "
                               "the model has no records prediction field",
                               code="FEEDBACK_UNAVAILABLE")
        return self.labels

    def label_spec(self) -> FieldSpec:
        """The output field labels are compared with (and type-checked against); raises
        ``FEEDBACK_UNAVAILABLE`` when this version takes no labels."""
        return self._feedback().spec

    async def feedback(self, body: bytes) -> bytes:
        """``POST /v1/models/NAME/feedback``: parse the body, then :meth:`apply_labels`."""
        labels = self._feedback()
        outcome = await labels.apply(labels.parse(body))
        return orjson.dumps(outcome.to_dict())

    async def apply_labels(self, labels: Sequence[tuple[str, Any]]) -> LabelsOutcome:
        """Attach parsed ``(id, label)`` pairs; see :meth:`Feedback.apply`."""
        return await self._feedback().apply(labels)

    def answering(self) -> ModelService:
        """The version that scores a request arriving now: this one, or, while it closes
        after a hand-off, its successor (when the two take the same inputs). The answer,
        its prediction log entry and its metrics then all carry the successor's version."""
        svc = self
        while svc.pool.closing and svc.successor is not None \
                and svc.successor.contract.inputs == svc.contract.inputs:
            svc = svc.successor
        return svc

    async def predict(self, batch: Batch) -> Batch:
        """Score a checked batch; the output contract is enforced before anything returns."""
        if (svc := self.answering()) is not self:
            return await svc.predict(batch)
        m = self.metrics
        start = time.perf_counter()
        try:
            out = await self.pool.predict(batch)
        finally:
            if m is not None:  # failures take time too
                m.model.observe(time.perf_counter() - start)
        checked = time.perf_counter()
        try:
            if self.contract.kind == "tensors":
                _tensors_from_json(self.contract, out)
            check_outputs(self.contract, out, batch.rows)
        finally:
            if m is not None:
                m.output.observe(time.perf_counter() - checked)
        if len(out.columns) != len(self.contract.outputs):  # extra columns never leave
            out.columns = {n: out.columns[n] for n in self.contract.output_names}
        if _tracing.ACTIVE is not None:
            _tracing.stage(_tracing.OUTPUT)
        if self.shadow is not None:
            if _tracing.ACTIVE is None:
                self.shadow.submit(batch, out)
            else:  # the shadow's own scoring is not this request's
                _tracing.untraced(self.shadow.submit, batch, out)
        return out

    async def measured(self, endpoint: str, body: B,
                       handle: Callable[[B], Awaitable[tuple[R, int]]]) -> R:
        """Run one request (an HTTP body, a gRPC message), counting it and its failure
        stage when metrics are on and recording it on its trace when it is traced."""
        m = self.metrics
        if _tracing.ACTIVE is not None and (trace := _tracing.CURRENT.get()) is not None:
            trace.model(self.name, self.version, self.bundle.digest)
            handle = trace.wrap(handle, error_stage)
        if m is None:
            return (await handle(body))[0]
        start = time.perf_counter()
        try:
            result, rows = await handle(body)
        except BatonError as exc:
            m.error(error_stage(exc), exc.code)
            m.request(endpoint, exc.http_status, 0, time.perf_counter() - start)
            raise
        except Exception:  # the engine's own fault: the caller gets a 500, counted here
            m.error(INTERNAL[0], INTERNAL[1])
            m.request(endpoint, 500, 0, time.perf_counter() - start)
            raise
        m.request(endpoint, 200, rows, time.perf_counter() - start)
        return result

    async def warm_up(self) -> None:
        """Score the bundle's samples once; raise if the version cannot serve them."""
        inputs, _, _ = load_samples(self.bundle)
        if inputs is not None:
            await call(self, request_body(self.contract, inputs))

    async def predict_records(self, body: bytes) -> bytes:
        svc = self.answering()
        return await svc.measured("predict", body, svc._predict_records)

    async def infer(self, body: bytes) -> bytes:
        svc = self.answering()
        return await svc.measured("infer", body, svc._infer)

    async def _predict_records(self, body: bytes) -> tuple[bytes, int]:
        if self.records is None:
            raise RequestError(f"{self.name} has a tensor contract: use "
                               f"/v2/models/{self.name}/infer", code="WRONG_ENDPOINT",
                               details={"endpoint": f"/v2/models/{self.name}/infer"})
        start = time.perf_counter()
        batch = self.records.decode(body)
        if self.metrics is not None:
            self.metrics.decode.observe(time.perf_counter() - start)
        if _tracing.ACTIVE is not None:
            _tracing.decoded(batch.rows)
        out = await self.predict(batch)
        ids = self.log_predictions(batch, out)
        return orjson.dumps({"model_name": self.name, "model_version": self.version,
                             "predictions": out.to_records(), "ids": ids}), batch.rows

    async def _infer(self, body: bytes) -> tuple[bytes, int]:
        start = time.perf_counter()
        req = v2.parse_request(body)
        batch = v2.decode_request(self.contract, req)
        if self.metrics is not None:
            self.metrics.decode.observe(time.perf_counter() - start)
        if _tracing.ACTIVE is not None:
            _tracing.decoded(batch.rows)
        out = await self.predict(batch)
        ids = self.log_predictions(batch, out)
        return v2.encode_response(self.contract, self.name, self.version, req.id, out,
                                  req.outputs, ids), batch.rows

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name, "versions": [self.version],
            "platform": f"baton-{self.bundle.manifest.model.runner}",  # baton-python, -onnx, -r
            "inputs": [v2.spec_metadata(s) for s in self.contract.inputs],
            "outputs": [v2.spec_metadata(s) for s in self.contract.outputs],
            "parameters": {
                "digest": self.bundle.digest, "contract": self.contract.kind,
                "description": self.bundle.manifest.description,
                "owner": self.bundle.manifest.owner, "ready": self.ready,
                "environment": self.env.key, "isolation": self.pool.spec.isolation.to_dict(),
                "load_error": self.pool.load_error.to_dict() if self.pool.load_error else None,
                **self.pool.describe(), "timeout_from": self.timeout_from,
                **({"traffic": self.shadow.describe()} if self.shadow else {})},
        }

    async def close(self, drain_timeout: float) -> None:
        await self.pool.close(drain_timeout)
        if self.shadow is not None:
            await self.shadow.drain()


def _observe_drift(drift: DriftMonitor) -> ScoredHook:
    def hook(inputs: Batch, outputs: Batch, keys: Keys, /) -> None:
        drift.observe(inputs)
    return hook


def _log_to(predlog: PredictionLog, name: str, version: str) -> ScoredHook:
    def hook(inputs: Batch, outputs: Batch, keys: Keys, /) -> list[str]:
        return predlog.log(name, version, inputs, outputs, keys)
    return hook


def _drift_monitor(bundle: Bundle) -> DriftMonitor | None:
    mon = bundle.manifest.monitoring
    if mon.reference is None:
        return None
    try:
        reference = orjson.loads((bundle.path / mon.reference).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("%s: drift reference unreadable, drift is off: %s", bundle.name, exc)
        return None
    return DriftMonitor(reference, mon.drift_threshold)


def _tensors_from_json(contract: Contract, out: Batch) -> None:
    """Runners without numpy send tensors as nested JSON lists: make them arrays."""
    for spec in contract.outputs:
        col = out.columns.get(spec.name)
        if isinstance(col, list) and isinstance(spec, TensorSpec) and spec.datatype != "BYTES":
            try:
                out.columns[spec.name] = np.asarray(col, dtype=spec.dtype)
            except (ValueError, TypeError):
                pass  # left as a list: the output check reports it
