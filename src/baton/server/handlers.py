"""The engine's routes: each handler returns its :class:`~baton.server.routes.Reply`, and
:data:`ENGINE_ROUTES` lists them with their methods, scopes and documentation."""

from __future__ import annotations

from typing import Any

import orjson

from baton import __version__
from baton.errors import RouteNotFound
from baton.monitor.metrics import CONTENT_TYPE
from baton.server.openapi import openapi_document
from baton.server.routes import OPEN, ModelRoutes, Reply, Request, Route, RouteTable
from baton.serving import binary
from baton.serving.service import Engine

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_BINARY = b"application/octet-stream"
_INFER_HEADER = binary.HEADER.lower().encode()
_METRICS = CONTENT_TYPE.encode()


# -- server-wide routes -------------------------------------------------------------------
async def server_metadata(req: Request) -> Reply:
    return Reply(200, orjson.dumps({"name": "baton", "version": __version__,
                                    "extensions": ["binary_tensor_data"]}))


async def live(req: Request) -> Reply:
    return Reply(200, b'{"live":true}')


async def ready(req: Request) -> Reply:
    """Every model ready, and every stream binding reaching its brokers."""
    if not req.engine.ready:
        return Reply(503, b'{"ready":false}')
    down = [why for st in req.engine.streams if (why := st.unreachable)]
    if down:
        return Reply(503, orjson.dumps({"ready": False, "streams": down}))
    return Reply(200, b'{"ready":true}')


async def models(req: Request) -> Reply:
    engine = req.engine
    body: dict[str, Any] = {"models": engine.describe()}
    if engine.source is not None:
        body["source"] = engine.source.describe()
    if engine.streams:
        body["streams"] = [st.describe() for st in engine.streams]
    return Reply(200, orjson.dumps(body))


async def stats(req: Request) -> Reply:
    return Reply(200, orjson.dumps(req.engine.stats(), option=_NUMPY))


async def metrics(req: Request) -> Reply:
    if req.engine.metrics is None:
        raise RouteNotFound("metrics are off (BATON_METRICS=false)")
    return Reply(200, req.engine.metrics.render(), _METRICS)


async def openapi(req: Request) -> Reply:
    return Reply(200, orjson.dumps(openapi_document(req.engine, ENGINE_ROUTES, auth=req.auth)))


# -- per-model routes ---------------------------------------------------------------------
async def model_metadata(req: Request) -> Reply:
    svc = req.engine.lookup(req.name, req.version)
    return Reply(200, orjson.dumps(svc.metadata(), option=_NUMPY))


async def model_ready(req: Request) -> Reply:
    if not req.engine.lookup(req.name, req.version).ready:
        return Reply(503, orjson.dumps({"name": req.name, "ready": False}))
    return Reply(200, orjson.dumps({"name": req.name, "ready": True}))


async def infer(req: Request) -> Reply:
    body = await req.body()
    for key, value in req.scope["headers"]:
        if key == _INFER_HEADER:  # the V2 binary extension: JSON, then tensors
            body = binary.Framed(body, binary.header_length(value, len(body)))
            break
    out = await req.engine.get(req.name, req.version).infer(body)
    if isinstance(out, binary.Framed):
        return Reply(200, out, _BINARY, ((_INFER_HEADER, str(out.json_length).encode()),))
    return Reply(200, out)


async def predict(req: Request) -> Reply:
    req.engine.lookup(req.name)  # 404 before reading the body
    body = await req.body()
    return Reply(200, await req.engine.get(req.name).predict_records(body))


async def feedback(req: Request) -> Reply:
    svc = req.engine.lookup(req.name)
    return Reply(200, await svc.feedback(await req.body()))


# -- the table ----------------------------------------------------------------------------
def _metrics_on(engine: Engine) -> bool:
    return engine.metrics is not None


_OBJECTS = {"type": "array", "items": {"type": "object"}}

ENGINE_ROUTES = RouteTable(static=[
    Route("/v2/health/live", ("GET",), live, OPEN, "Liveness",
          responses={200: ("live", None)}),
    Route("/v2/health/ready", ("GET",), ready, OPEN, "Readiness of every model",
          responses={200: ("ready", None), 503: ("not ready", None)}),
    Route("/v2", ("GET",), server_metadata, "infer", "Server metadata (Open Inference "
          "Protocol)", responses={200: ("Name, version and extensions", {
              "type": "object", "properties": {"name": {"type": "string"},
                                               "version": {"type": "string"},
                                               "extensions": {"type": "array"}}})}),
    Route("/openapi.json", ("GET",), openapi, "infer", "This document",
          responses={200: ("OpenAPI 3.1", {"type": "object"})}),
    Route("/v1/models", ("GET",), models, "read", "Served models, their source and streams",
          responses={200: ("The live version of each model", {
              "type": "object", "required": ["models"],
              "properties": {"models": _OBJECTS, "source": {"type": "object"},
                             "streams": _OBJECTS}})}),
    Route("/v1/stats", ("GET",), stats, "read", "Live figures per served version",
          responses={200: ("Traffic, errors, latency, workers, drift, the prediction log", {
              "type": "object", "properties": {"time": {"type": "number"},
                                               "models": _OBJECTS, "streams": _OBJECTS,
                                               "prediction_log": {}}})}),
    Route("/metrics", ("GET",), metrics, "read", "Prometheus metrics",
          responses={200: ("Prometheus text exposition", {"type": "string"})},
          media=CONTENT_TYPE.split(";")[0], offered=_metrics_on),
], families=[
    ModelRoutes("/v2/models", (
        Route("", ("GET",), model_metadata, "infer", "Model metadata", "metadata"),
        Route("ready", ("GET",), model_ready, "infer", "Model readiness", "ready"),
        Route("infer", ("POST",), infer, "infer", "Open Inference Protocol inference",
              "infer"),
    ), versions=True, model_first=True, scope="infer"),
    ModelRoutes("/v1/models", (
        Route("predict", ("POST",), predict, "infer", "Score records", "predict"),
        Route("feedback", ("POST",), feedback, "feedback", "Attach true labels",
              "feedback"),
    )),
])
