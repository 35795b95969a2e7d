"""``inference.GRPCInferenceService``: the Open Inference Protocol's six RPCs over the engine.

Each RPC answers as its HTTP route does (:data:`~baton.server.handlers.ENGINE_ROUTES`):

- the token, from the ``authorization: Bearer TOKEN`` metadata, is checked by the same
  :class:`~baton.server.auth.Guard` against the scope the route table gives the HTTP route
  (ServerLive and ServerReady are open, the others need ``infer``), before anything else;
- ModelInfer runs the path of ``ModelService.infer``: the V2 codec's contract check, the
  version's worker pool (greedy batching with HTTP's requests), the output check, the
  ``on_scored`` hooks (drift, prediction log) and the request metrics, counted under the
  endpoint ``grpc`` with the HTTP status the same outcome has;
- a :class:`~baton.errors.BatonError` becomes the gRPC status of its HTTP status, with
  ``CODE: message`` as details and the HTTP error body in the ``baton-error-bin`` trailer.

Any other method of the service (Triton's ModelConfig, ModelStatistics...) is UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any

import grpc
import orjson

from baton import __version__
from baton import tracing as _tracing
from baton.errors import BatonError, Forbidden, Unauthorized
from baton.logs import request_id
from baton.server import grpc_codec
from baton.server import grpc_predict_v2_pb2 as pb
from baton.server.app import error_body
from baton.server.auth import ANY, OPEN, Guard, bearer
from baton.serving import v2
from baton.serving.service import Engine, ModelService

log = logging.getLogger("baton.server.grpc")

SERVICE = "inference.GRPCInferenceService"
#: The ``endpoint`` label of gRPC inference requests in the request metrics.
ENDPOINT = "grpc"
#: HTTP status -> gRPC status; another 4xx is INVALID_ARGUMENT, another 5xx INTERNAL.
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT,
          501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
          504: grpc.StatusCode.DEADLINE_EXCEEDED}
#: Each RPC's HTTP route, whose scope in the route table the RPC needs.
ROUTES = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready",
          "ServerMetadata": "/v2", "ModelMetadata": "/v2/models/NAME",
          "ModelReady": "/v2/models/NAME/ready", "ModelInfer": "/v2/models/NAME/infer"}
_EXTENSIONS = ["binary_tensor_data"]  # as GET /v2 says: the server's, whatever the protocol
#: The most bytes of an error's status message (as gRPC percent-encodes it) and of its
#: ``baton-error-bin`` trailer (before base64): clients drop a call whose metadata passes
#: 8 KiB at random, and past 16 KiB always ("Stream removed", RESOURCE_EXHAUSTED, no
#: error), and a message echoes the names a client sent, of any length.
MAX_MESSAGE = 2048
MAX_TRAILER = 3072

Context = grpc.aio.ServicerContext[Any, Any]


def status_of(err: BatonError) -> grpc.StatusCode:
    found = STATUS.get(err.http_status)
    if found is not None:
        return found
    return grpc.StatusCode.INVALID_ARGUMENT if err.http_status < 500 else \
        grpc.StatusCode.INTERNAL


async def infer(svc: ModelService, msg: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """ModelInfer on one version: ``ModelService.infer``'s path (its metrics and trace by
    ``ModelService.measured``), with the gRPC codec."""
    svc = svc.answering()

    async def handle(msg: pb.ModelInferRequest) -> tuple[pb.ModelInferResponse, int]:
        start = time.perf_counter()
        req = grpc_codec.to_request(msg)
        batch = v2.decode_request(svc.contract, req)
        if svc.metrics is not None:
            svc.metrics.decode.observe(time.perf_counter() - start)
        if _tracing.ACTIVE is not None:
            _tracing.decoded(batch.rows)
        out = await svc.predict(batch)
        resp = grpc_codec.to_response(svc.contract, out, req.outputs,
                                      raw=bool(msg.raw_input_contents))
        ids = svc.log_predictions(batch, out)
        resp.model_name, resp.model_version, resp.id = svc.name, svc.version, msg.id
        resp.parameters["prediction_ids"].string_param = ",".join(ids)
        return resp, batch.rows

    return await svc.measured(ENDPOINT, msg, handle)


class InferenceService:
    """The RPCs over one engine; ``guard`` (None: no authentication) as the HTTP app's."""

    def __init__(self, engine: Engine, guard: Guard | None) -> None:
        self.engine = engine
        self.guard = guard
        #: RPC -> the scope its HTTP route needs (the same for any model name or version).
        self.scopes = {rpc: guard.scope_of(path) for rpc, path in ROUTES.items()} \
            if guard is not None else {}

    def handler(self) -> grpc.GenericRpcHandler:
        rpcs: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(
                self._call(name, fn), request_deserializer=kind.FromString,
                response_serializer=_serialize)
            for name, (fn, kind) in rpcs.items()})

    def _call(self, rpc: str, fn: Callable[[Any], Awaitable[Any]]
              ) -> Callable[[Any, Context], Awaitable[Any]]:
        """``fn`` behind the guard, its errors as gRPC statuses."""
        async def call(request: Any, context: Context) -> Any:
            trace = _trace(rpc, context) if _tracing.ACTIVE is not None else None
            status, failed, code = 500, None, grpc.StatusCode.INTERNAL
            try:
                if self.guard is not None:
                    await self._admit(rpc, context)
                result = await fn(request)
                status, code = 200, grpc.StatusCode.OK
                return result
            except BatonError as err:
                status, failed, code = err.http_status, err, status_of(err)
                await context.abort(code, clipped(f"{err.code}: {err.message}", MAX_MESSAGE),
                                    (("baton-error-bin", _trailer(err)),))
            except Exception:
                log.exception("internal error on gRPC %s", rpc)
                await context.abort(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR: internal "
                                    "error in the engine; see its log")
            finally:
                if trace is not None:
                    trace.end(status, failed, code.value[0])
        return call

    async def _admit(self, rpc: str, context: Context) -> None:
        """What ``Guard.admit`` does for the RPC's HTTP route, the token read from the
        call's metadata."""
        assert self.guard is not None
        needed = self.scopes[rpc]
        if needed == OPEN:
            return
        token = bearer([(key.encode(), value.encode()) for key, value
                        in context.invocation_metadata() or ()
                        if key == "authorization" and isinstance(value, str)])
        if token is None:
            raise Unauthorized("this engine needs a token: send the metadata "
                               "'authorization: Bearer TOKEN'")
        principal = await self.guard.identify(token)
        if needed != ANY and not principal.allows(needed):
            raise Forbidden(f"this token ({principal.name}) lacks the {needed!r} scope that "
                            f"{rpc} needs",
                            details={"scope": needed, "scopes": sorted(principal.scopes)})

    # -- the RPCs ----------------------------------------------------------------------
    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        """As ``GET /v2/health/ready``: every model ready, every stream reaching its
        brokers."""
        engine = self.engine
        return pb.ServerReadyResponse(ready=engine.ready and not any(
            st.unreachable for st in engine.streams))

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        svc = self.engine.lookup(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=svc.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest
                              ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="baton", version=__version__,
                                         extensions=_EXTENSIONS)

    async def model_metadata(self, request: pb.ModelMetadataRequest
                             ) -> pb.ModelMetadataResponse:
        meta = self.engine.lookup(request.name, request.version or None).metadata()
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        svc = self.engine.get(request.model_name, request.model_version or None)
        return await infer(svc, request)


def _trace(rpc: str, context: Context) -> _tracing.Trace | None:
    """The server span of a ModelInfer call, when it is sampled (as over HTTP, only
    inference is traced); its request id is the caller's ``x-request-id``, else new."""
    assert _tracing.ACTIVE is not None
    if rpc != "ModelInfer":
        return None
    metadata = [(k.encode("latin-1"), v.encode("latin-1")) for k, v
                in context.invocation_metadata() or () if isinstance(v, str)]
    parent = _tracing.ACTIVE.parent(metadata)
    if parent is None:
        return None
    rid = request_id(next((v for k, v in metadata if k == b"x-request-id"), None))
    return _tracing.ACTIVE.start_rpc(parent, rpc, context.peer(), rid)


def clipped(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` bytes as a status message travels (percent-encoded
    outside printable ASCII)."""
    costs = [1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "replace"))
             for ch in text]
    if sum(costs) <= limit:
        return text
    end = next(i for i, spent in enumerate(accumulate(costs)) if spent > limit - 3)
    return text[:end] + "..."


def _trailer(err: BatonError) -> bytes:
    """The HTTP error body; past :data:`MAX_TRAILER`, its message clipped and no details."""
    body = error_body(err)
    if len(body) <= MAX_TRAILER:
        return body
    return orjson.dumps({"error": clipped(err.message, MAX_TRAILER // 4), "code": err.code})


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
