"""Transport-agnostic serving: one ModelService per bundle, an Engine holding them all."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from baton.batch import Batch
from baton.bundle.loader import Bundle
from baton.contract.spec import Contract, FieldSpec, TensorSpec
from baton.contract.validate import RecordsDecoder, check_outputs
from baton.env.builder import Environment
from baton.errors import BatonError, ModelNotFound, RequestError
from baton.monitor.drift import DriftMonitor
from baton.monitor.errors import error_stage
from baton.monitor.metrics import EngineMetrics, ModelMetrics, ProcessSampler
from baton.monitor.predlog import FeedbackResult, PredictionLog, new_ids
from baton.monitor.quality import QualityTracker, parse_feedback, prediction_field
from baton.runtime.pool import WorkerPool
from baton.runtime.worker import WorkerSpec
from baton.serving import v2
from baton.serving.defaults import default_timeout
from baton.serving.samples import call, load_samples, request_body
from baton.serving.traffic import Canary, Shadow
from baton.settings import Settings

log = logging.getLogger("baton.serving")


def worker_spec(bundle: Bundle, env: Environment, settings: Settings) -> WorkerSpec:
    m = bundle.manifest
    return WorkerSpec(
        model=m.name, python=env.python, bundle_dir=bundle.path,
        load={"model": m.model.to_dict(), "kind": m.contract.kind,
              "inputs": m.contract.input_names, "outputs": m.contract.output_names,
              "fields": [s.to_dict() for s in m.contract.inputs]},
        env={"PYTHONUNBUFFERED": "1"}, load_timeout=settings.load_timeout,
        threads=settings.worker_threads)


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


class ModelService:
    """A bundle being served: contract checks on both sides of its worker pool."""

    def __init__(self, bundle: Bundle, env: Environment, settings: Settings,
                 check_report: dict[str, Any] | None = None) -> None:
        """``check_report``: a ``baton check`` report of this bundle (the registry's), to
        derive the timeout from when nothing sets one (see :mod:`baton.serving.defaults`)."""
        m = bundle.manifest
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
        self.pool = WorkerPool(
            worker_spec(bundle, env, settings),
            workers=settings.workers or m.serving.workers,  # 0: sized by measured memory
            timeout=timeout, max_batch_rows=m.serving.max_batch_rows,
            max_queue_rows=settings.max_queue_rows, restart_wait=settings.restart_wait)
        #: The version replacing this one; requests that reach a closing pool go there.
        self.successor: ModelService | None = None
        #: A candidate version receiving a copy of this version's traffic.
        self.shadow: Shadow | None = None
        self.metrics: ModelMetrics | None = None
        self.predlog: PredictionLog | None = None
        self.quality: QualityTracker | None = None
        self.drift = _drift_monitor(bundle)
        self.drift_alerts: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)

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
            if self.metrics is not None:
                self.metrics.quality = self.quality

    def log_predictions(self, inputs: Batch, outputs: Batch,
                        keys: Sequence[str | None] | None = None) -> list[str]:
        """Every scored batch: into the prediction log (sampled) and the drift window.
        Returns the batch's prediction ids (random ones when the log is off)."""
        if self.drift is not None:
            self.drift.observe(inputs)
        if self.predlog is not None:
            return self.predlog.log(self.name, self.version, inputs, outputs, keys)
        return new_ids(inputs.rows)[1]

    def label_spec(self) -> FieldSpec:
        """The output field labels are compared with (and type-checked against); raises
        ``FEEDBACK_UNAVAILABLE`` when this version takes no labels."""
        if self.predlog is None or self.quality is None:
            raise RequestError(f"{self.name} takes no feedback: the prediction log is off or "
                               "the model has no records prediction field",
                               code="FEEDBACK_UNAVAILABLE")
        return self.quality.spec

    async def feedback(self, body: bytes) -> bytes:
        """``POST /v1/models/NAME/feedback``: parse the body, then :meth:`apply_labels`."""
        spec = self.label_spec()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"request body is not valid JSON: {exc}",
                               code="INVALID_JSON") from None
        outcome = await self.apply_labels(parse_feedback(data, spec))
        return orjson.dumps(outcome.to_dict())

    async def apply_labels(self, labels: Sequence[tuple[str, Any]]) -> LabelsOutcome:
        """Join parsed ``(id, label)`` pairs to logged predictions, in one ``add_labels``
        transaction, then recompute the quality figures once.

        HTTP feedback (one call per request) and the labels stream (one call per
        micro-batch) both come here. It raises only before anything was attached, so a
        caller may retry it; the quality update never fails it.
        """
        self.label_spec()
        assert self.predlog is not None and self.quality is not None
        await self.predlog.flush()  # predictions made a moment ago are in the log
        result = await asyncio.to_thread(self.predlog.add_labels, self.name, labels)
        if result.accepted or not self.quality.history:
            await self._update_quality()
        return LabelsOutcome(result, self.quality.current, self.quality.labelled,
                             self.quality.last_errors)

    async def _update_quality(self) -> None:
        """Recompute the quality over the latest labelled window of this version."""
        assert self.predlog is not None and self.quality is not None
        try:
            pairs = await asyncio.to_thread(self.predlog.labelled, self.name, self.version,
                                            self.quality.window)
        except Exception as exc:  # the labels are attached: report, keep the last figures
            log.warning("%s@%s: cannot read labelled predictions for quality: %s",
                        self.name, self.version, exc)
            return
        custom: dict[str, float] = {}
        if self.quality.custom and pairs:
            try:
                field = self.quality.spec.name
                res = await self.pool.metrics(self.quality.custom, [t for _, t in pairs],
                                              [o.get(field) for o, _ in pairs],
                                              [o for o, _ in pairs])
                custom = res["values"]
                self.quality.failed(res.get("errors") or {})
            except BatonError as exc:  # a metric never fails the feedback, nor serving
                self.quality.failed({m: exc.message for m in self.quality.custom})
        self.quality.update(pairs, custom)

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
        if self.shadow is not None:
            self.shadow.submit(batch, out)
        return out

    async def _measured(self, endpoint: str, body: bytes,
                        handle: Callable[[bytes], Awaitable[tuple[bytes, int]]]) -> bytes:
        """Run one request, counting it and its failure stage when metrics are on."""
        m = self.metrics
        if m is None:
            return (await handle(body))[0]
        start = time.perf_counter()
        try:
            result, rows = await handle(body)
        except BatonError as exc:
            m.error(error_stage(exc), exc.code)
            m.request(endpoint, exc.http_status, 0, time.perf_counter() - start)
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
        return await svc._measured("predict", body, svc._predict_records)

    async def infer(self, body: bytes) -> bytes:
        svc = self.answering()
        return await svc._measured("infer", body, svc._infer)

    async def _predict_records(self, body: bytes) -> tuple[bytes, int]:
        if self.records is None:
            raise RequestError(f"{self.name} has a tensor contract: use "
                               f"/v2/models/{self.name}/infer", code="WRONG_ENDPOINT",
                               details={"endpoint": f"/v2/models/{self.name}/infer"})
        start = time.perf_counter()
        batch = self.records.decode(body)
        if self.metrics is not None:
            self.metrics.decode.observe(time.perf_counter() - start)
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
        out = await self.predict(batch)
        ids = self.log_predictions(batch, out)
        return v2.encode_response(self.contract, self.name, self.version, req.id, out,
                                  req.outputs, ids), batch.rows

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name, "versions": [self.version], "platform": "baton-python",
            "inputs": [v2.spec_metadata(s) for s in self.contract.inputs],
            "outputs": [v2.spec_metadata(s) for s in self.contract.outputs],
            "parameters": {
                "digest": self.bundle.digest, "contract": self.contract.kind,
                "description": self.bundle.manifest.description,
                "owner": self.bundle.manifest.owner, "ready": self.ready,
                "environment": self.env.key,
                "load_error": self.pool.load_error.to_dict() if self.pool.load_error else None,
                **self.pool.describe(), "timeout_from": self.timeout_from,
                **({"traffic": self.shadow.describe()} if self.shadow else {})},
        }

    async def close(self, drain_timeout: float) -> None:
        await self.pool.close(drain_timeout)
        if self.shadow is not None:
            await self.shadow.drain()


async def _post_alert(url: str, alert: dict[str, Any]) -> None:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.post(url, content=orjson.dumps(alert),
                                     headers={"content-type": "application/json"})
            resp.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("drift webhook %s failed: %s", url, exc)


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


class Engine:
    """Every model served by one process; started and stopped as a whole."""

    def __init__(self, services: list[ModelService], settings: Settings,
                 metrics: EngineMetrics | None = None,
                 predlog: PredictionLog | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predlog = predlog
        self.models = {s.name: s for s in services}
        if len(self.models) != len(services):
            names = [s.name for s in services]
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise BatonError(f"two bundles share the name {dupes[0]!r}", code="DUPLICATE_MODEL")
        #: Canary splits and shadow mirrors by model name; they survive version switches.
        self.canaries: dict[str, Canary] = {}
        self.shadows: dict[str, Shadow] = {}
        #: Long-running helpers (e.g. a registry follower) started with the engine.
        self.background: list[Callable[[], Awaitable[None]]] = []
        #: False until the background helpers' first pass is done (e.g. first registry sync).
        self.synced = True
        #: Where models come from, when not from the command line (e.g. a registry follower).
        self.source: Any = None
        #: Stream bindings: anything with ``run()``, ``stop()`` and ``describe()``.
        self.streams: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sampler = ProcessSampler()

    def get(self, name: str, version: str | None = None) -> ModelService:
        """The version that answers a request: a canary split applies to unversioned ones."""
        canary = self.canaries.get(name)
        if version is None and canary is not None and name in self.models:
            return canary.choose(self.models[name])
        return self.lookup(name, version)

    def lookup(self, name: str, version: str | None = None) -> ModelService:
        """The live version of ``name``, or exactly ``version`` (live or canary candidate)."""
        svc = self.models.get(name)
        canary = self.canaries.get(name)
        if svc is not None and canary is not None and version == canary.candidate.version:
            return canary.candidate
        if svc is None or (version is not None and version != svc.version):
            what = f"{name} version {version}" if version else name
            serving = ", ".join(f"{s.name}@{s.version}" for s in self.models.values())
            raise ModelNotFound(f"no model named {what}; serving: {serving or 'nothing'}",
                                details={"model": name, "version": version})
        return svc

    @property
    def ready(self) -> bool:
        return self.synced and all(s.ready for s in self.models.values())

    async def start(self) -> None:
        """Start every model's workers; a model that fails to load is reported, not fatal."""
        for svc in self.models.values():
            svc.shadow = self.shadows.get(svc.name)
        services = self._all_services()
        if self.metrics is not None:
            self.metrics.watch(self)
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.open)  # no-op when serve opened it already
            self.background.append(self.predlog.run)
        self.background.append(self._watch_drift)
        for svc in services:
            self._instrument(svc)
        results = await asyncio.gather(*(s.pool.start() for s in services),
                                       return_exceptions=True)
        for svc, res in zip(services, results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s@%s failed to load: %s", svc.name, svc.version, res)
            else:
                log.info("%s@%s ready (%s, pid %s)", svc.name, svc.version, svc.bundle.digest,
                         ",".join(str(w.pid) for w in svc.pool.workers if w))
        loop = asyncio.get_running_loop()
        jobs = [*self.background, *(stream.run for stream in self.streams)]
        self._tasks = [loop.create_task(job()) for job in jobs]

    async def replace(self, new: ModelService) -> ModelService | None:
        """Serve ``new`` in place of the live version of its model, with no failed request.

        ``new`` must already be started and warmed up. Requests already queued on the old
        version finish there; any that reach it while it closes are handed to ``new``.
        """
        old = self.models.get(new.name)
        new.shadow = self.shadows.get(new.name)
        self._instrument(new)
        self.models[new.name] = new
        if old is not None:
            old.successor = new
            await old.close(self.settings.drain_timeout)
        return old

    async def _watch_drift(self) -> None:
        """Raise an alert (log, webhook) when a feature starts drifting."""
        while True:
            await asyncio.sleep(self.settings.drift_interval)
            for svc in list(self.models.values()):
                if svc.drift is None:
                    continue
                result = svc.drift.compute(max_age=0)
                for feature in svc.drift.newly_drifting(result):
                    alert = {"model": svc.name, "version": svc.version, "feature": feature,
                             "threshold": svc.drift.threshold, "time": time.time(),
                             **{k: v for k, v in result[feature].items() if k != "drifting"}}
                    svc.drift_alerts.append(alert)
                    log.warning("%s@%s: input feature %r is drifting (PSI %.3f > %.3f)",
                                svc.name, svc.version, feature, result[feature]["psi"],
                                svc.drift.threshold)
                    if self.settings.drift_webhook:
                        await _post_alert(self.settings.drift_webhook, alert)

    def _instrument(self, svc: ModelService) -> None:
        svc.instrument(self.metrics, self.predlog, self.settings.quality_window)

    def _all_services(self) -> list[ModelService]:
        return [*self.models.values(), *(c.candidate for c in self.canaries.values()),
                *(m.candidate for m in self.shadows.values())]

    async def remove(self, name: str) -> None:
        old = self.models.pop(name, None)
        if old is not None:
            await old.close(self.settings.drain_timeout)

    async def close(self) -> None:
        """Drain streams first (their batches finish and are acknowledged), then models."""
        if self.streams:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.stop() for s in self.streams)),
                                       self.settings.drain_timeout)
            except TimeoutError:
                log.warning("streams did not drain within %.0fs", self.settings.drain_timeout)
        for task in self._tasks:
            task.cancel()
        if self.predlog is not None:
            await self.predlog.aclose()  # writes what is queued; never fails the shutdown
        services = self._all_services()
        await asyncio.gather(*(s.close(self.settings.drain_timeout) for s in services))

    def stats(self) -> dict[str, Any]:
        """Live figures per served version: traffic, errors by stage, latency, workers,
        resources. Each model's live version comes first, then its canary and shadow
        candidates; a candidate whose model has no live version yet is still listed."""
        models = []
        for name in dict.fromkeys([*self.models, *self.canaries, *self.shadows]):
            live = self.models.get(name)
            canary, shadow = self.canaries.get(name), self.shadows.get(name)
            split = canary.describe() if canary is not None else None
            mirror = shadow.describe() if shadow is not None else None
            if live is not None:
                models.append(self._version_stats(live, "live", split or mirror))
            if canary is not None:
                models.append(self._version_stats(canary.candidate, "canary", split))
            if shadow is not None:
                models.append(self._version_stats(shadow.candidate, "shadow", mirror))
        return {"time": time.time(), "models": models,
                "streams": [st.describe() for st in self.streams]}

    def _version_stats(self, svc: ModelService, role: str,
                       traffic: dict[str, Any] | None) -> dict[str, Any]:
        """One served version's entry in :meth:`stats`: ``role`` is live, canary or shadow;
        ``traffic`` the canary split or shadow comparison it takes part in, if any."""
        workers = []
        for w in svc.pool.workers:
            entry: dict[str, Any] = {"slot": w.slot if w else None,
                                     "pid": w.pid if w else None,
                                     "state": w.state if w else "absent"}
            sample = self._sampler.sample(w.pid) \
                if w is not None and w.pid and w.state == "ready" else None
            if sample is not None:
                entry["cpu_seconds"], entry["rss_bytes"] = sample[0], int(sample[1])
            workers.append(entry)
        return {"name": svc.name, "version": svc.version, "role": role, "ready": svc.ready,
                "digest": svc.bundle.digest, "queued_rows": svc.pool.queued_rows,
                "in_flight": svc.pool.in_flight, "restarts": svc.pool.stats.restarts,
                "last_failure": svc.pool.stats.last_failure, "workers": workers,
                "traffic": traffic,
                "metrics": svc.metrics.snapshot() if svc.metrics else None,
                "drift": svc.drift.compute() if svc.drift else None,
                "drift_alerts": list(svc.drift_alerts)}

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for s in self.models.values():
            item: dict[str, Any] = {"name": s.name, "version": s.version, "ready": s.ready,
                                    "digest": s.bundle.digest, "pid": os.getpid()}
            if s.name in self.canaries:
                item["traffic"] = self.canaries[s.name].describe()
            elif s.shadow is not None:
                item["traffic"] = s.shadow.describe()
            out.append(item)
        return out
