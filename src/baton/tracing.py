"""OpenTelemetry traces of the request path, exported over OTLP/HTTP; off unless configured.

A traced HTTP request is one server span (``POST /v2/models/{name}/infer``) that continues
the caller's W3C ``traceparent``/``tracestate``, with one child span per stage it went
through: ``decode`` (body and input contract), ``queue wait`` (in the model's queue until
its batch left), ``worker predict`` (the batch in a worker: its rows, requests, pid and
slot), ``output check`` and ``scored hooks`` (drift window, prediction log). A batch retried
one request at a time shows a second ``queue wait`` and ``worker predict``. The stage that
fails has the error status, ``error.type`` (the error's code) and ``baton.error.stage``.

A traced request is plain data while it runs (:class:`Trace`: each stage from where the
previous one ended to now, so they tile the request); its spans are made together when it
ends, back to back, rather than one SDK call between each two stages (bench/README.md,
"Tracing overhead", for what a trace costs).
While tracing is off, :data:`ACTIVE` is None, every hook on the request path is behind one
``if tracing.ACTIVE is not None`` and nothing of OpenTelemetry is imported; while it is on,
the request being traced is :data:`CURRENT` (a context variable, so the serving and pool
code reach it without new arguments). Sampling is parent-based: a caller's traceparent that
says sampled is traced, one that says not sampled is not, and a request without one is
traced with probability ``trace_sample``, decided before any span exists.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from baton.errors import BatonError, SettingsError

if TYPE_CHECKING:  # asyncio too: `baton serve` imports this module before its event loop's
    import asyncio

    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from baton.settings import Settings

log = logging.getLogger("baton.tracing")

#: Stage span names, in the order a request meets them.
#: The Open Inference Protocol's gRPC service, as a traced call's span names it.
GRPC_SERVICE = "inference.GRPCInferenceService"
DECODE, QUEUE, WORKER, OUTPUT, HOOKS = ("decode", "queue wait", "worker predict",
                                        "output check", "scored hooks")
#: An error's stage (as :func:`baton.monitor.errors.error_stage` names it) -> its span.
STAGE_SPANS = {"decode": DECODE, "contract": DECODE, "queue": QUEUE, "model": WORKER,
               "output": OUTPUT}
INSTALL = "pip install 'baton[tracing]'"
_TRACEPARENT, _TRACESTATE, _USER_AGENT = b"traceparent", b"tracestate", b"user-agent"

B = TypeVar("B")
R = TypeVar("R")


class WorkerLike(Protocol):
    """What a worker span says of the worker (:class:`baton.runtime.worker.Worker`)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def slot(self) -> int: ...


class Tracing:
    """The tracer of this process: provider, batch processor and OTLP/HTTP exporter."""

    def __init__(self, endpoint: str, ratio: float, environ: Mapping[str, str]) -> None:
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace import (
            SpanKind,
            Status,
            StatusCode,
            get_current_span,
            set_span_in_context,
        )
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        from baton import __version__

        self.endpoint, self.ratio = endpoint, ratio
        # The root decision is taken here (ratio), so the SDK samples every root it is given
        # and follows a parent's flag; OTEL_RESOURCE_ATTRIBUTES adds to the resource.
        resource = Resource.create({
            "service.name": environ.get("OTEL_SERVICE_NAME") or "baton",
            "service.version": __version__, "service.instance.id": str(uuid.uuid4()),
            "host.name": socket.gethostname(), "process.pid": os.getpid()})
        self.provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint)))
        self.tracer = self.provider.get_tracer("baton", __version__)
        self._root = Context()
        self._propagator = TraceContextTextMapPropagator()
        self._current_span = get_current_span
        self.in_context = set_span_in_context
        self._server = SpanKind.SERVER
        self._status, self._error = Status, StatusCode.ERROR

    # -- a request ---------------------------------------------------------------------
    def parent(self, headers: Sequence[tuple[bytes, bytes]]) -> Context | None:
        """The context a request's server span starts in, or None when it is not traced:
        its caller's sampled ``traceparent``, else (none, or an invalid one) a new trace
        with probability ``ratio``."""
        traceparent = None
        for key, value in headers:
            if key == _TRACEPARENT:
                traceparent = value.decode("latin-1")
                break
        if traceparent is None:
            return self._root if random.random() < self.ratio else None
        if len(traceparent) == 55 and traceparent[:3] == "00-" and \
                traceparent[54] in "02468ace":  # the caller did not sample it: a quick no
            return None
        state = [v.decode("latin-1") for k, v in headers if k == _TRACESTATE]
        ctx = self._propagator.extract({"traceparent": traceparent, "tracestate": state}
                                       if state else {"traceparent": traceparent})
        remote = self._current_span(ctx).get_span_context()
        if not remote.is_valid:
            return self._root if random.random() < self.ratio else None
        return ctx if remote.trace_flags.sampled else None

    def start(self, parent: Context, scope: Mapping[str, Any], route: str,
              request_id: str) -> Trace:
        """A request taken for tracing; it is :data:`CURRENT` until :meth:`Trace.end`."""
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method, "http.route": route, "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"), "baton.request_id": request_id}
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        for key, value in scope["headers"]:
            if key == _USER_AGENT:
                attributes["user_agent.original"] = value.decode("latin-1")
        return Trace(self, parent, f"{method} {route}", attributes)

    def start_rpc(self, parent: Context, method: str, peer: str | None,
                  request_id: str) -> Trace:
        """A gRPC call taken for tracing (OpenTelemetry's RPC conventions)."""
        attributes: dict[str, Any] = {
            "rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method,
            "baton.request_id": request_id}
        if peer:  # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/path"
            kind, _, where = peer.partition(":")
            attributes["client.address"] = where.rsplit(":", 1)[0].strip("[]") \
                if kind in ("ipv4", "ipv6") else where or peer
        return Trace(self, parent, f"{GRPC_SERVICE}/{method}", attributes)

    def record(self, trace: Trace, end: int) -> None:
        """The request's spans, made at once when it ends (the SDK's code and data stay
        warm in the caches for all six, instead of going cold between stages)."""
        server = self.tracer.start_span(trace.name, trace.parent, self._server,
                                        trace.attributes, start_time=trace.start)
        parent = self.in_context(server)
        for name, start, stop, attributes, error, stage in trace.stages:
            span = self.tracer.start_span(name, parent, attributes=attributes,
                                          start_time=start)
            if error is not None:
                self.failed(span, error, stage)
            span.end(stop)
        if trace.status is not None:
            server.set_status(trace.status)
        server.end(end)

    def failed(self, span: Span, exc: BaseException, stage: str = "") -> None:
        """Mark ``span`` as the one that failed: status, ``error.type``, an event."""
        message = exc.message if isinstance(exc, BatonError) else str(exc)
        code = exc.code if isinstance(exc, BatonError) else type(exc).__name__
        span.set_status(self._status(self._error, message))
        span.set_attribute("error.type", code)
        if stage:
            span.set_attribute("baton.error.stage", stage)
        span.add_event("exception", {"exception.type": code, "exception.message": message})

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter's thread."""
        self.provider.shutdown()


Stage = tuple[str, int, int, "Mapping[str, Any] | None", "BaseException | None", str]


class Trace:
    """One traced request as plain data while it runs: the server span's attributes and
    its stages, each from where the previous one ended; :meth:`end` makes the spans."""

    __slots__ = ("tracing", "parent", "name", "attributes", "start", "cursor", "token",
                 "rows", "batch", "stages", "status")

    def __init__(self, tracing: Tracing, parent: Context, name: str,
                 attributes: dict[str, Any]) -> None:
        self.tracing, self.parent, self.name = tracing, parent, name
        self.attributes = attributes
        self.start = self.cursor = time.time_ns()
        self.token = CURRENT.set(self)
        self.rows = 0
        #: What the batch sent to a worker was (attributes of the worker span).
        self.batch: dict[str, Any] = {}
        self.stages: list[Stage] = []
        self.status: Any = None

    def stage(self, name: str, attributes: Mapping[str, Any] | None = None,
              error: BaseException | None = None, error_stage: str = "") -> None:
        """A child span from the end of the previous stage to now."""
        now = time.time_ns()
        self.stages.append((name, self.cursor, now, attributes, error, error_stage))
        self.cursor = now

    def model(self, name: str, version: str, digest: str) -> None:
        self.attributes.update({"baton.model.name": name, "baton.model.version": version,
                                "baton.model.digest": digest})

    def wrap(self, handle: Callable[[B], Awaitable[R]],
             stage_of: Callable[[BatonError], str]) -> Callable[[B], Awaitable[R]]:
        """``handle`` with its failure recorded on the stage it belongs to."""
        async def traced(body: B) -> R:
            try:
                return await handle(body)
            except BatonError as exc:
                self.fail_at(exc, stage_of(exc))
                raise
        return traced

    def fail_at(self, exc: BatonError, stage: str) -> None:
        """Record ``exc`` on the span of the stage it belongs to (the worker span already
        has it when the model failed)."""
        name = STAGE_SPANS.get(stage, WORKER)
        last = self.stages[-1] if self.stages else None
        if last is None or last[0] != name or last[4] is None:
            self.stage(name, None, exc, stage)

    def end(self, status: int, failed: BatonError | None, grpc_code: int | None = None
            ) -> None:
        """The answer's status as HTTP would give it (5xx: an error), and a gRPC call's
        own code: make the spans, stop being current."""
        CURRENT.reset(self.token)
        attributes = self.attributes
        if grpc_code is None:
            attributes["http.response.status_code"] = status
        else:
            attributes["rpc.grpc.status_code"] = grpc_code
        if self.rows:
            attributes["baton.rows"] = self.rows
        if failed is not None:
            attributes["error.type"] = failed.code
        if status >= 500:
            self.status = self.tracing._status(
                self.tracing._error, failed.message if failed else "internal error")
        self.tracing.record(self, time.time_ns())


#: The process's tracer; None while tracing is off (the only check the request path makes).
ACTIVE: Tracing | None = None
#: The traced request being handled (None: this request is not traced).
CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("baton_trace",
                                                                      default=None)


# -- the request path's hooks, called only behind `if ACTIVE is not None` -------------------
def stage(name: str) -> None:
    """Record stage ``name`` of the current request, if it is traced."""
    trace = CURRENT.get()
    if trace is not None:
        trace.stage(name)


def decoded(rows: int) -> None:
    """The request's body is decoded and checked: ``rows`` rows."""
    trace = CURRENT.get()
    if trace is not None:
        trace.rows = rows
        trace.stage(DECODE, {"baton.rows": rows})


def dispatched(traces: Sequence[Trace | None], worker: WorkerLike, rows: int,
               answer: asyncio.Future[Any]) -> None:
    """A batch of these requests (``rows`` rows in all) left the queue for ``worker``;
    ``answer`` is its result, whose worker span is recorded when it comes."""
    traced = [t for t in traces if t is not None]
    if not traced:
        return
    for trace in traced:
        trace.batch = {"baton.batch.rows": rows, "baton.batch.requests": len(traces),
                       "baton.worker.slot": worker.slot, "baton.rows": trace.rows}
        if worker.pid is not None:
            trace.batch["baton.worker.pid"] = worker.pid
        trace.stage(QUEUE)

    def answered(answer: asyncio.Future[Any]) -> None:
        exc = None if answer.cancelled() else answer.exception()
        for trace in traced:
            trace.stage(WORKER, trace.batch, exc, "model")

    answer.add_done_callback(answered)


def untraced(call: Callable[..., None], *args: Any) -> None:
    """``call(*args)`` outside the current trace (a task it starts does not inherit it)."""
    token = CURRENT.set(None)
    try:
        call(*args)
    finally:
        CURRENT.reset(token)


# -- configuration ------------------------------------------------------------------------
def endpoint(settings: Settings, environ: Mapping[str, str]) -> tuple[str, str]:
    """The OTLP/HTTP traces URL and the variable that set it; ("", "") when tracing is off.

    ``BATON_OTLP_ENDPOINT`` first (a bare ``http://host:4318`` gets ``/v1/traces``), then the
    standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) and
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces`` appended); ``OTEL_SDK_DISABLED=true``
    turns tracing off whatever is set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "", ""
    if settings.otlp_endpoint:
        url = settings.otlp_endpoint
        if urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/v1/traces"
        return url, "BATON_OTLP_ENDPOINT"
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = environ.get(variable, "").strip()
        if url:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"{variable}={url!r} is not an http:// or https:// URL "
                                    "(Baton exports traces over OTLP/HTTP)",
                                    details={"field": "otlp_endpoint"})
            if variable == "OTEL_EXPORTER_OTLP_ENDPOINT":
                url = url.rstrip("/") + "/v1/traces"
            return url, variable
    return "", ""


def configure(settings: Settings, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Turn tracing on when an endpoint is set (see :func:`endpoint`); raise
    ``INVALID_SETTING`` naming the extra to install when OpenTelemetry is missing."""
    global ACTIVE
    environ = os.environ if environ is None else environ
    url, source = endpoint(settings, environ)
    if not url:
        return None
    try:
        tracing = Tracing(url, settings.trace_sample, environ)
    except ImportError as exc:
        raise SettingsError(f"{source} is set, which turns tracing on, but OpenTelemetry is "
                            f"not installed ({exc.name} is missing): {INSTALL}",
                            details={"field": "otlp_endpoint", "install": INSTALL}) from None
    log.info("tracing on: spans to %s over OTLP/HTTP (set by %s); requests without a "
             "sampled traceparent traced at %g", url, source, settings.trace_sample)
    ACTIVE = tracing
    return tracing


def shutdown() -> None:
    """Flush and stop the exporter (the engine's shutdown); tracing is off afterwards."""
    global ACTIVE
    tracing, ACTIVE = ACTIVE, None
    if tracing is not None:
        tracing.shutdown()
