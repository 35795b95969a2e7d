"""IT's figures in the Prometheus format: traffic, errors by stage, latency, workers, streams.

Hot-path observations are plain integer and float updates on objects bound once per model
version (~0.1-0.2 µs each: the event loop is the only writer, so no locks), turned into
Prometheus families only when Prometheus scrapes. Gauges that describe state — queue depth,
workers alive, restarts, per-worker CPU and memory, stream progress — are read at scrape
time too, so they cost nothing between scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from baton.monitor.state import ModelSnapshot, Observable

if TYPE_CHECKING:
    from baton.monitor.predlog import PredictionLog

#: Error stages, in the order a request meets them.
#: ``internal``: an error in the engine itself (a 500 ``INTERNAL_ERROR``), not the request's
#: or the model's.
STAGES = ("decode", "contract", "queue", "model", "output", "internal")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Hist:
    """A histogram updated by one thread: bucket counts, sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """An upper bound of the q-quantile: the first bucket holding it (None if empty)."""
        total = self.count
        if total == 0:
            return None
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            seen += n
            if seen >= q * total:
                return bound
        return float("inf")

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class QualityFigures(Protocol):
    """What the metrics read of a version's quality tracker."""

    @property
    def labelled(self) -> int: ...
    @property
    def current(self) -> Mapping[str, float]: ...
    @property
    def failures(self) -> Mapping[str, int]: ...
    @property
    def last_errors(self) -> Mapping[str, str]: ...
    @property
    def history(self) -> Iterable[dict[str, Any]]: ...


class ModelMetrics:
    """Everything observed for one model version."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self.stages = {s: Hist(_LATENCY_BUCKETS) for s in ("decode", "model", "output",
                                                           "total")}
        self.decode, self.model = self.stages["decode"], self.stages["model"]
        self.output, self.total = self.stages["output"], self.stages["total"]
        self.batch_rows = Hist(_ROW_BUCKETS)
        self.requests: dict[tuple[str, str], int] = {}
        self.record_counts: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        #: Set when predictions are logged and labels can arrive (a QualityTracker).
        self.quality: QualityFigures | None = None

    def request(self, endpoint: str, status: int, rows: int, seconds: float) -> None:
        key = (endpoint, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        if rows:
            self.records(endpoint, rows)
        self.total.observe(seconds)

    def records(self, source: str, rows: int) -> None:
        self.record_counts[source] = self.record_counts.get(source, 0) + rows

    def error(self, stage: str, code: str) -> None:
        key = (stage, code)
        self.errors[key] = self.errors.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Counters and latency quantiles as plain data (for /v1/stats and the terminal)."""
        by_stage = {stage: 0 for stage in STAGES}
        for (stage, _), n in self.errors.items():
            by_stage[stage] = by_stage.get(stage, 0) + n
        return {
            "requests": sum(self.requests.values()),
            "records": sum(self.record_counts.values()),
            "errors": sum(self.errors.values()),
            "errors_by_stage": by_stage,
            "errors_by_code": {f"{st}/{code}": n for (st, code), n in self.errors.items()},
            "latency_seconds": {q: self.total.quantile(v) for q, v in
                                (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            "stage_mean_seconds": {k: (h.sum / h.count if h.count else None)
                                   for k, h in self.stages.items()},
            "batch_rows_mean": (self.batch_rows.sum / self.batch_rows.count
                                if self.batch_rows.count else None),
            "quality": ({"labelled": self.quality.labelled, **self.quality.current,
                         "metric_failures": self.quality.failures,
                         "metric_errors": self.quality.last_errors,
                         "history": list(self.quality.history)[-100:]}
                        if self.quality is not None else None),
        }


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self.registry.register(_TrafficCollector(self._models))

    def model(self, name: str, version: str) -> ModelMetrics:
        key = (name, version)
        if key not in self._models:
            self._models[key] = ModelMetrics(name, version)
        return self._models[key]

    def watch(self, source: Observable) -> None:
        """Expose the engine's state (workers, queues, drift, streams) at scrape time."""
        self.registry.register(_StateCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TrafficCollector(Collector):
    def __init__(self, models: dict[tuple[str, str], ModelMetrics]) -> None:
        self.models = models

    def collect(self) -> Iterable[Metric]:
        mv = ["model", "version"]
        requests = CounterMetricFamily("baton_requests", "Requests answered, by endpoint and "
                                       "status.", labels=[*mv, "endpoint", "status"])
        records = CounterMetricFamily("baton_records", "Records scored successfully, by "
                                      "source.", labels=[*mv, "source"])
        errors = CounterMetricFamily("baton_errors", "Failed requests or records, by the stage "
                                     "that failed (decode, contract, queue, model, output) and "
                                     "error code.", labels=[*mv, "stage", "code"])
        latency = HistogramMetricFamily("baton_stage_duration_seconds", "Time spent per "
                                        "stage: decode (parse and input contract), model "
                                        "(queue, worker, IPC), output (output contract), "
                                        "total.", labels=[*mv, "stage"])
        rows = HistogramMetricFamily("baton_batch_rows", "Rows per batch sent to a worker.",
                                     labels=mv)
        quality = GaugeMetricFamily("baton_quality", "Model quality over the latest labelled "
                                    "predictions (accuracy; or mae and rmse).",
                                    labels=[*mv, "metric"])
        labelled = GaugeMetricFamily("baton_quality_labelled_predictions", "Labelled "
                                     "predictions the quality figures cover.", labels=mv)
        metric_failures = CounterMetricFamily("baton_quality_metric_failures", "Times a "
                                              "declared metric function raised.",
                                              labels=[*mv, "metric"])
        for m in list(self.models.values()):
            lv = [m.name, m.version]
            for (endpoint, status), n in m.requests.items():
                requests.add_metric([*lv, endpoint, status], n)
            for source, n in m.record_counts.items():
                records.add_metric([*lv, source], n)
            for (stage, code), n in m.errors.items():
                errors.add_metric([*lv, stage, code], n)
            for stage, h in m.stages.items():
                latency.add_metric([*lv, stage], h.buckets(), h.sum)
            rows.add_metric(lv, m.batch_rows.buckets(), m.batch_rows.sum)
            if m.quality is not None and m.quality.labelled:
                labelled.add_metric(lv, m.quality.labelled)
                for metric, v in m.quality.current.items():
                    quality.add_metric([*lv, metric], v)
            if m.quality is not None:
                for metric, n in m.quality.failures.items():
                    metric_failures.add_metric([*lv, metric], n)
        yield from (requests, records, errors, latency, rows, quality, labelled,
                    metric_failures)


class ProcessSampler:
    """CPU seconds and resident bytes of worker processes, reusing one handle per pid."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> tuple[float, float] | None:
        try:
            proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
            with proc.oneshot():
                t = proc.cpu_times()
                return t.user + t.system, float(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None

    def forget_except(self, live: set[int]) -> None:
        for pid in set(self._procs) - live:
            del self._procs[pid]


class _StateCollector(Collector):
    """The engine's state, read from its snapshots when Prometheus scrapes."""

    def __init__(self, source: Observable) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        snapshots = self.source.snapshots()
        yield from _worker_metrics(snapshots)
        yield from _drift_metrics(snapshots)
        yield from _stream_metrics(self.source.stream_states())
        yield from _prediction_log_metrics(self.source.prediction_log())
        yield _refusal_metrics(self.source.refusals())


def _worker_metrics(snapshots: list[ModelSnapshot]) -> Iterable[Metric]:
    labels = ["model", "version"]
    queued = GaugeMetricFamily("baton_queue_rows", "Rows waiting for a worker.", labels=labels)
    inflight = GaugeMetricFamily("baton_in_flight_batches", "Batches being scored.",
                                 labels=labels)
    alive = GaugeMetricFamily("baton_workers_alive", "Workers ready to score.",
                              labels=labels)
    ready = GaugeMetricFamily("baton_model_ready", "1 when the model can serve.",
                              labels=labels)
    restarts = CounterMetricFamily("baton_worker_restarts", "Workers restarted after a "
                                   "crash, a hang or a failed load.", labels=labels)
    cpu = CounterMetricFamily("baton_worker_cpu_seconds", "CPU time of each worker.",
                              labels=[*labels, "slot"])
    rss = GaugeMetricFamily("baton_worker_resident_memory_bytes", "Resident memory of "
                            "each worker.", labels=[*labels, "slot"])
    for snap in snapshots:
        lv = [snap.name, snap.version]
        queued.add_metric(lv, snap.queued_rows)
        inflight.add_metric(lv, snap.in_flight)
        alive.add_metric(lv, snap.workers_alive)
        ready.add_metric(lv, 1.0 if snap.ready else 0.0)
        restarts.add_metric(lv, snap.restarts)
        for w in snap.workers:
            if w.cpu_seconds is not None and w.rss_bytes is not None:
                cpu.add_metric([*lv, str(w.slot)], w.cpu_seconds)
                rss.add_metric([*lv, str(w.slot)], w.rss_bytes)
    yield from (queued, inflight, alive, ready, restarts, cpu, rss)


def _drift_metrics(snapshots: list[ModelSnapshot]) -> Iterable[Metric]:
    labels = ["model", "version", "feature"]
    psi = GaugeMetricFamily("baton_drift_psi", "Population stability index of recent inputs "
                            "against the training reference, per feature.", labels=labels)
    ks = GaugeMetricFamily("baton_drift_ks_at_percentiles", "Largest gap between the "
                           "cumulative distribution of recent inputs and the training "
                           "reference's, at the reference's 101 percentiles (numeric "
                           "features).", labels=labels)
    ks_alias = GaugeMetricFamily("baton_drift_ks", "Deprecated: the same figure as "
                                 "baton_drift_ks_at_percentiles.", labels=labels)
    drifting = GaugeMetricFamily("baton_drift_alert", "1 when a feature's PSI is above the "
                                 "bundle's drift threshold.", labels=labels)
    for snap in snapshots:
        for feature, d in (snap.drift or {}).items():
            lv = [snap.name, snap.version, feature]
            psi.add_metric(lv, d["psi"])
            drifting.add_metric(lv, 1.0 if d["drifting"] else 0.0)
            if "ks_at_percentiles" in d:
                ks.add_metric(lv, d["ks_at_percentiles"])
                ks_alias.add_metric(lv, d["ks_at_percentiles"])
    yield from (psi, ks, ks_alias, drifting)


def _stream_metrics(streams: list[dict[str, Any]]) -> Iterable[Metric]:
    labels = ["model", "input"]
    families = {k: CounterMetricFamily(f"baton_stream_{k}", text, labels=labels) for k, text in (
        ("consumed", "Records read from the input and acknowledged."),
        ("produced", "Scores written to the output."),
        ("dead_lettered", "Records written to the dead-letter destination."),
        ("retries", "Stream steps retried (broker or model unavailable)."))}
    lag = GaugeMetricFamily("baton_stream_lag_records", "Records waiting in the input, where "
                            "the connector can tell.", labels=labels)
    results = CounterMetricFamily("baton_stream_labels", "Labels read from a labels stream, "
                                  "by what became of them (accepted, unknown, duplicate, "
                                  "invalid, unavailable).", labels=[*labels, "result"])
    for d in streams:
        lv = [d["model"], d["input"]]
        for key, fam in families.items():
            fam.add_metric(lv, d[key])
        if d.get("lag") is not None:
            lag.add_metric(lv, d["lag"])
        for result, n in (d.get("labels") or {}).items():
            results.add_metric([*lv, result], n)
    yield from families.values()
    yield lag
    yield results


def _prediction_log_metrics(predlog: PredictionLog | None) -> Iterable[Metric]:
    """The prediction log's store (label ``store``: local, registry) and export sink
    (label ``sink``, its URL without password); families are empty when they are off."""
    written = CounterMetricFamily("baton_prediction_log_written", "Predictions written to "
                                  "the prediction log's store.", labels=["store"])
    dropped = CounterMetricFamily("baton_prediction_log_dropped", "Predictions not logged: "
                                  "the queue in front of the store was full.",
                                  labels=["store"])
    exported = CounterMetricFamily("baton_prediction_log_exported", "Logged predictions "
                                   "written to the export sink.", labels=["sink"])
    export_dropped = CounterMetricFamily("baton_prediction_log_export_dropped", "Logged "
                                         "predictions the export dropped (buffer full, or "
                                         "still unwritten at shutdown).", labels=["sink"])
    export_failures = CounterMetricFamily("baton_prediction_log_export_failures", "Failed "
                                          "writes to the export sink (each retried).",
                                          labels=["sink"])
    export_pending = GaugeMetricFamily("baton_prediction_log_export_pending_records",
                                       "Logged predictions waiting for the export sink.",
                                       labels=["sink"])
    if predlog is not None:
        store = [predlog.store.kind]
        written.add_metric(store, predlog.written)
        dropped.add_metric(store, predlog.dropped)
        export = predlog.export
        if export is not None:
            sink = [export.sink]
            exported.add_metric(sink, export.exported)
            export_dropped.add_metric(sink, export.dropped)
            export_failures.add_metric(sink, export.failures)
            export_pending.add_metric(sink, export.pending)
    yield from (written, dropped, exported, export_dropped, export_failures, export_pending)


def _refusal_metrics(refusals: Mapping[tuple[str, str], int]) -> Metric:
    """Versions a registry-following engine refused (counts by model and code, each
    refusal counted once when it appears)."""
    refused = CounterMetricFamily("baton_registry_refusals", "Registry versions this engine "
                                  "refused to serve, by model and code (STAGE_NOT_ALLOWED, "
                                  "NOT_APPROVED, UNSIGNED, BAD_SIGNATURE, DECISION_MISMATCH, "
                                  "DECISION_REPLAYED, ...).", labels=["model", "code"])
    for (model, code), n in refusals.items():
        refused.add_metric([model, code], n)
    return refused


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
