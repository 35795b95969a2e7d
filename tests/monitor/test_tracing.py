"""OpenTelemetry traces (issue 15): a real `baton serve` exports its spans over OTLP/HTTP to
a real receiver in the test, which decodes them with the OTLP protobuf messages the exporter
itself uses; the caller's W3C traceparent is continued, every stage is a span, the failing
stage says so, sampling follows the caller, and tracing off costs no import."""

from __future__ import annotations

import gzip
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from baton import tracing
from baton.errors import SettingsError
from baton.settings import Settings
from tests.conftest import ROOT, Server

STAGES = ["decode", "queue wait", "worker predict", "output check", "scored hooks"]
SERVER, ERROR = 2, 2  # Span.SpanKind.SPAN_KIND_SERVER, Status.STATUS_CODE_ERROR


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    status: int
    message: str
    trace_state: str
    resource: dict[str, Any]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class Receiver:
    """An OTLP/HTTP receiver: ``POST /v1/traces``, protobuf, every span kept."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    posts: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                        s.kind, s.start_time_unix_nano, s.end_time_unix_nano,
                        {a.key: _value(a.value) for a in s.attributes}, s.status.code,
                        s.status.message, s.trace_state, resource))
        with self.changed:
            self.posts += 1
            self.spans += got
            self.changed.notify_all()

    def wait(self, cond: Callable[[list[Span]], bool], what: str,
             timeout: float = 30.0) -> list[Span]:
        """The spans received once ``cond`` holds (bounded: fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not cond(self.spans):
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} after {timeout}s; got {self.spans}"
                self.changed.wait(left)
            return list(self.spans)

    def trace(self, trace_id: str, count: int) -> list[Span]:
        """The ``count`` spans of one trace, by start time (server span first)."""
        spans = self.wait(lambda got: len([s for s in got if s.trace_id == trace_id]) >= count,
                          f"{count} spans of trace {trace_id}")
        return sorted((s for s in spans if s.trace_id == trace_id),
                      key=lambda s: (s.start, s.kind != SERVER))


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            ok = self.path == "/v1/traces" and \
                self.headers["content-type"] == "application/x-protobuf"
            if ok:
                receiver.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if ok else 404)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def _env(receiver: Receiver | None, **more: str) -> dict[str, str]:
    """The engine's variables: the receiver's endpoint, spans exported within 50 ms."""
    env = {"OTEL_BSP_SCHEDULE_DELAY": "50", **more}
    if receiver is not None:
        env["BATON_OTLP_ENDPOINT"] = receiver.url
    return env


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def _predict(server: Server, records: list[dict[str, Any]], **headers: str) -> Any:
    return server.client.post("/v1/models/chaos/predict", json=records, headers=headers)


def test_a_request_continues_the_callers_trace_through_every_stage(
        serve: Callable[..., Server], chaos_bundle: Path, receiver: Receiver) -> None:
    server = serve([chaos_bundle], env=_env(receiver))
    digest = server.model("chaos")["parameters"]["digest"]
    header, trace_id, caller = _traceparent()
    answer = _predict(server, [{"action": "ok", "x": 1.0}, {"action": "ok", "x": 2.0}],
                      traceparent=header, tracestate="vendor=abc", **{"X-Request-Id": "ord-7"})
    assert answer.status_code == 200, answer.text

    root, *stages = receiver.trace(trace_id, 1 + len(STAGES))
    assert (root.kind, root.parent, root.name) == (SERVER, caller,
                                                   "POST /v1/models/{name}/predict")
    assert root.trace_state == "vendor=abc"
    assert root.status != ERROR
    assert root.resource["service.name"] == "baton"
    assert {k: root.attributes[k] for k in (
        "http.request.method", "http.route", "http.response.status_code", "url.path",
        "baton.model.name", "baton.model.version", "baton.model.digest", "baton.rows",
        "baton.request_id")} == {
        "http.request.method": "POST", "http.route": "/v1/models/{name}/predict",
        "http.response.status_code": 200, "url.path": "/v1/models/chaos/predict",
        "baton.model.name": "chaos", "baton.model.version": "1.0.0",
        "baton.model.digest": digest, "baton.rows": 2, "baton.request_id": "ord-7"}

    # The stages tile the request: each a child of the server span, one after the other.
    assert [s.name for s in stages] == STAGES
    assert all(s.parent == root.span_id and s.status != ERROR for s in stages)
    assert root.start <= stages[0].start and stages[-1].end <= root.end
    assert all(a.end <= b.start for a, b in zip(stages, stages[1:], strict=False))
    worker = stages[2].attributes
    assert worker["baton.worker.pid"] in server.worker_pids("chaos")
    assert (worker["baton.worker.slot"], worker["baton.rows"]) == (0, 2)
    assert worker["baton.batch.rows"] >= 2 and worker["baton.batch.requests"] >= 1
    assert stages[0].attributes["baton.rows"] == 2

    # V2 infer, and a request with no traceparent: a new trace (sampling 1.0 by default).
    v2 = {"inputs": [{"name": "action", "shape": [1], "datatype": "BYTES", "data": ["ok"]},
                     {"name": "x", "shape": [1], "datatype": "FP64", "data": [3.0]}]}
    answer = server.client.post("/v2/models/chaos/infer", json=v2)
    assert answer.status_code == 200, answer.text
    rid = answer.headers["x-request-id"]
    spans = receiver.wait(lambda got: any(s.attributes.get("baton.request_id") == rid
                                          for s in got), "the V2 request's server span")
    [new] = [s for s in spans if s.attributes.get("baton.request_id") == rid]
    assert (new.name, new.parent, new.attributes["http.route"]) == (
        "POST /v2/models/{name}/infer", "", "/v2/models/{name}/infer")
    assert new.trace_id != trace_id
    assert [s.name for s in receiver.trace(new.trace_id, 1 + len(STAGES))[1:]] == STAGES


def test_the_failing_stage_is_the_span_in_error(
        serve: Callable[..., Server], chaos_bundle: Path, receiver: Receiver) -> None:
    server = serve([chaos_bundle], env=_env(receiver))

    header, model_error, _ = _traceparent()
    assert _predict(server, [{"action": "raise", "x": 1.0}],
                    traceparent=header).status_code == 500
    root, decode, queue, worker = receiver.trace(model_error, 4)
    assert [decode.name, queue.name, worker.name] == STAGES[:3]
    assert (worker.status, worker.attributes["error.type"],
            worker.attributes["baton.error.stage"]) == (ERROR, "MODEL_ERROR", "model")
    assert "boom: the model refused" in worker.message
    assert decode.status != ERROR and queue.status != ERROR
    assert (root.status, root.attributes["error.type"],
            root.attributes["http.response.status_code"]) == (ERROR, "MODEL_ERROR", 500)

    header, violation, _ = _traceparent()
    assert _predict(server, [{"action": "ok", "x": 1000.0}],
                    traceparent=header).status_code == 422
    root, decode = receiver.trace(violation, 2)
    assert (decode.name, decode.status, decode.attributes["error.type"],
            decode.attributes["baton.error.stage"]) == ("decode", ERROR, "CONTRACT_VIOLATION",
                                                        "contract")
    # A refused request is the caller's error, not the server's: 4xx leaves the status unset.
    assert root.status != ERROR and root.attributes["error.type"] == "CONTRACT_VIOLATION"
    assert root.attributes["http.response.status_code"] == 422

    header, bad_output, _ = _traceparent()
    assert _predict(server, [{"action": "bad_output", "x": 1.0}],
                    traceparent=header).status_code == 500
    spans = receiver.trace(bad_output, 5)
    assert [s.name for s in spans[1:]] == STAGES[:4]
    assert (spans[4].status, spans[4].attributes["error.type"]) == (
        ERROR, "OUTPUT_CONTRACT_VIOLATION")
    assert spans[3].status != ERROR  # the worker answered; its answer broke the contract
    assert len([s for s in receiver.spans if s.trace_id == violation]) == 2


def test_sampling_follows_the_callers_flag(
        serve: Callable[..., Server], chaos_bundle: Path, receiver: Receiver) -> None:
    """Sampling 0: neither a request without a traceparent nor one whose caller did not
    sample it is traced; one the caller sampled is (parent-based)."""
    server = serve([chaos_bundle], env=_env(receiver, BATON_TRACE_SAMPLE="0"))
    unsampled, dropped, _ = _traceparent(sampled=False)
    for headers in ({}, {"traceparent": unsampled}) * 5:
        assert _predict(server, [{"action": "ok", "x": 1.0}], **headers).status_code == 200
    header, kept, _ = _traceparent()
    assert _predict(server, [{"action": "ok", "x": 1.0}], traceparent=header).status_code == 200
    receiver.trace(kept, 1 + len(STAGES))
    # Spans leave in the order they end: the earlier requests' would have come first.
    assert {s.trace_id for s in receiver.spans} == {kept}
    assert dropped not in {s.trace_id for s in receiver.spans}


def test_a_grpc_model_infer_is_traced_as_http_is(
        serve: Callable[..., Server], chaos_bundle: Path, receiver: Receiver) -> None:
    """ModelInfer continues the caller's traceparent (gRPC metadata) through the same
    stages; a model error marks the worker span and the call's gRPC code."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from tests.conftest import free_port

    port = free_port()
    server = serve([chaos_bundle], "--grpc-port", str(port), env=_env(receiver))
    digest = server.model("chaos")["parameters"]["digest"]

    def infer(action: str, **metadata: str) -> grpc.RpcError | None:
        request = service_pb2.ModelInferRequest(model_name="chaos", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="action", datatype="BYTES", shape=[1],
                contents=service_pb2.InferTensorContents(bytes_contents=[action.encode()])),
            service_pb2.ModelInferRequest.InferInputTensor(
                name="x", datatype="FP64", shape=[1],
                contents=service_pb2.InferTensorContents(fp64_contents=[1.0]))])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request, metadata=tuple(metadata.items()), timeout=30)
            except grpc.RpcError as exc:
                return exc
        return None

    header, trace_id, caller = _traceparent()
    assert infer("ok", traceparent=header, tracestate="vendor=abc",
                 **{"x-request-id": "ord-8"}) is None
    root, *stages = receiver.trace(trace_id, 1 + len(STAGES))
    assert (root.kind, root.parent, root.name, root.trace_state) == (
        SERVER, caller, "inference.GRPCInferenceService/ModelInfer", "vendor=abc")
    assert {k: root.attributes.get(k) for k in (
        "rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "client.address",
        "baton.model.name", "baton.model.digest", "baton.rows", "baton.request_id")} == {
        "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer", "rpc.grpc.status_code": 0, "client.address": "127.0.0.1",
        "baton.model.name": "chaos", "baton.model.digest": digest, "baton.rows": 1,
        "baton.request_id": "ord-8"}
    assert "http.response.status_code" not in root.attributes
    assert [s.name for s in stages] == STAGES
    assert all(s.parent == root.span_id for s in stages)

    header, failing, _ = _traceparent()
    error = infer("raise", traceparent=header)
    assert error is not None and error.code() == grpc.StatusCode.INTERNAL
    root, decode, queue, worker = receiver.trace(failing, 4)
    assert (worker.status, worker.attributes["error.type"]) == (ERROR, "MODEL_ERROR")
    assert (root.status, root.attributes["error.type"],
            root.attributes["rpc.grpc.status_code"]) == (ERROR, "MODEL_ERROR", 13)

    # Only inference is traced, as over HTTP; an unsampled caller is not.
    unsampled, dropped, _ = _traceparent(sampled=False)
    assert infer("ok", traceparent=unsampled) is None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            service_pb2.ServerLiveRequest(), metadata=(("traceparent", _traceparent()[0]),))
    assert server.stop() == 0  # what the engine still held is exported as it stops
    grpc_traces = {s.trace_id for s in receiver.spans if "rpc.system" in s.attributes}
    assert grpc_traces == {trace_id, failing}  # (the HTTP metadata request has its own)


def test_spans_still_buffered_are_exported_when_the_engine_stops(
        serve: Callable[..., Server], chaos_bundle: Path, receiver: Receiver) -> None:
    """Exports every 10 minutes: only the shutdown's flush can deliver the spans."""
    server = serve([chaos_bundle], env=_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000"))
    header, trace_id, _ = _traceparent()
    assert _predict(server, [{"action": "ok", "x": 1.0}], traceparent=header).status_code == 200
    assert receiver.posts == 0
    assert server.stop() == 0
    assert len([s for s in receiver.spans if s.trace_id == trace_id]) == 1 + len(STAGES)


def test_tracing_is_off_by_default(serve: Callable[..., Server], chaos_bundle: Path,
                                   receiver: Receiver) -> None:
    """No endpoint, no export: an engine with the receiver's address only in a variable it
    does not read sends nothing, even for a sampled caller, up to its exit."""
    env = _env(None, BATON_TRACE_SAMPLE="1", OTEL_SDK_DISABLED="false")
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env[variable] = ""
    server = serve([chaos_bundle], env=env)
    header, _, _ = _traceparent()
    answer = _predict(server, [{"action": "ok", "x": 1.0}], traceparent=header)
    assert answer.status_code == 200 and "traceparent" not in answer.headers
    assert server.stop() == 0  # a tracing engine exports what it holds before it exits
    assert "tracing on" not in Path(server.log.name).read_text()
    assert (receiver.posts, receiver.spans) == (0, [])


def test_with_tracing_off_the_engine_imports_nothing_of_opentelemetry() -> None:
    """The CLI and the request path (app, serving, pool, tracing itself) load no
    OpenTelemetry module while no endpoint is set."""
    probe = (
        "import sys, baton.cli.main, baton.server.app, baton.serving.assembly, "
        "baton.runtime.pool, baton.tracing\n"
        "from baton.settings import Settings\n"
        "assert baton.tracing.configure(Settings(), {}) is None\n"
        "from click.testing import CliRunner\n"
        "assert CliRunner().invoke(baton.cli.main.main, ['--help']).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tracing_asked_for_without_the_extra_is_a_clear_error(tmp_path: Path) -> None:
    """An engine told to trace, with OpenTelemetry missing, stops before it does anything."""
    blocked = ("import sys\nsys.modules['opentelemetry.sdk.trace'] = None\n"
               "from baton.cli.main import main\nmain()\n")
    env = dict(os.environ, BATON_HOME=str(tmp_path), BATON_OTLP_ENDPOINT="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", blocked, "serve", str(tmp_path / "none")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert ("error [INVALID_SETTING]: BATON_OTLP_ENDPOINT is set, which turns tracing on, "
            "but OpenTelemetry is not installed (opentelemetry.sdk.trace is missing): "
            "pip install 'baton[tracing]'") in out.stderr


@pytest.mark.parametrize("given, environ, url, source", [
    ("", {}, "", ""),
    ("http://otel:4318", {}, "http://otel:4318/v1/traces", "BATON_OTLP_ENDPOINT"),
    ("https://otel:4318/", {}, "https://otel:4318/v1/traces", "BATON_OTLP_ENDPOINT"),
    ("http://otel:4318/custom/path", {}, "http://otel:4318/custom/path", "BATON_OTLP_ENDPOINT"),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces",
     "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/x"}, "http://t:4318/x",
     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    ("http://otel:4318", {"OTEL_SDK_DISABLED": "true"}, "", ""),
])
def test_the_endpoint_comes_from_baton_then_the_standard_variables(
        given: str, environ: dict[str, str], url: str, source: str) -> None:
    assert tracing.endpoint(Settings(otlp_endpoint=given), environ) == (url, source)


def test_tracing_settings_are_checked() -> None:
    for bad in ({"otlp_endpoint": "otel:4317"}, {"otlp_endpoint": "grpc://otel:4317"},
                {"trace_sample": 1.5}, {"trace_sample": -0.1}):
        with pytest.raises(SettingsError, match=r"setting (otlp_endpoint|trace_sample) "):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT='otel:4317' is not"):
        tracing.endpoint(Settings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4317"})
    assert Settings.from_env({"BATON_TRACE_SAMPLE": "0.01"}).trace_sample == 0.01
