"""The OpenAPI 3.1 document, generated from the route table and the served models' contracts.

Every route of the table is listed: a static route as the table describes it, a per-model
route once per served model (and per version path), described from that model's contract
by the generator named by the route's ``operation``; a generator that returns None leaves
the route out for that model because it answers there only with an error (records on a
tensor model, feedback without labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from baton import __version__
from baton.contract.jsonschema import field_schema, record_schema, tensor_schema
from baton.contract.spec import FieldSpec
from baton.errors import BatonError
from baton.server.routes import OPEN, ModelRoutes, Route, RouteTable
from baton.serving import binary, v2
from baton.serving.service import Engine, ModelService

Operation = dict[str, Any]
_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 404: "Unknown model", 413: "Body too large",
            415: "Content-Encoding other than gzip or deflate",
            422: "Contract violated", 500: "Exception inside the model",
            503: "Model not ready"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ERROR}}} for c in codes}


def _predict_op(svc: ModelService, versioned: bool) -> Operation | None:
    """``POST /v1/models/NAME/predict``, for a model with a records contract."""
    c = svc.contract
    if c.kind != "records":
        return None
    request = {"type": "array", "minItems": 1,
               "items": record_schema(c.inputs, reject_unknown=c.unknown_fields == "reject")}
    response = {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "predictions": {"type": "array",
                        "items": record_schema(c.outputs, reject_unknown=True)}}}
    return {
        "summary": f"Score records with {svc.name} {svc.version}",
        "description": svc.bundle.manifest.description,
        "operationId": f"predict_{svc.name}",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "One prediction per record, in order",
                              "content": {"application/json": {"schema": response}}},
                      **_errors(400, 404, 413, 415, 422, 500, 503)}}


def _v2_input_schema(svc: ModelService) -> dict[str, Any]:
    """Every contract input is required (the server answers 422 without one), each with
    the datatypes the server accepts for it."""
    items, required = [], []
    for spec in svc.contract.inputs:
        item: dict[str, Any]
        if isinstance(spec, FieldSpec):
            item = {"type": "object", "required": ["name", "shape", "datatype", "data"],
                    "properties": {"name": {"const": spec.name},
                                   "shape": {"type": "array", "items": {"type": "integer"}},
                                   "data": {"type": "array", "items": field_schema(spec)}}}
            declared = v2.field_datatype(spec)
        else:
            item, declared = tensor_schema(spec), spec.datatype
        item["properties"]["datatype"] = {"enum": v2.accepted_datatypes(declared)}
        items.append(item)
        required.append({"contains": {"type": "object", "required": ["name"],
                                      "properties": {"name": {"const": spec.name}}}})
    binary_flag = {"type": "boolean", "description": "Answer as binary tensor data"}
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": binary_flag}},
        "inputs": {"type": "array", "minItems": len(items), "items": {"oneOf": items},
                   "allOf": required},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {
            "name": {"enum": list(svc.contract.output_names)},
            "parameters": {"type": "object", "additionalProperties": False,
                           "properties": {"binary_data": binary_flag}}}}}}}


_BINARY_BODY = {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"},
    "x-baton-framing": f"The binary tensor data extension: the JSON request (the "
                       f"application/json schema; an input may carry "
                       f"parameters.binary_data_size instead of data) in the first "
                       f"{binary.HEADER} bytes, then each binary input's bytes in order"}}


def _infer_op(svc: ModelService, versioned: bool) -> Operation:
    return {
        "summary": f"Open Inference Protocol inference on {svc.name}",
        "parameters": [{"name": binary.HEADER, "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Length of the JSON part of a body that carries "
                                       "binary tensor data"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _v2_input_schema(svc)}, **_BINARY_BODY}},
        "responses": {"200": {"description": "V2 inference response (binary outputs follow "
                                             f"the JSON when asked for; {binary.HEADER} "
                                             "then gives its length)"},
                      **_errors(400, 404, 413, 415, 422, 500, 503)},
        "operationId": f"infer_{svc.name}_versioned" if versioned else f"infer_{svc.name}"}


def _metadata_op(svc: ModelService, versioned: bool) -> Operation:
    return {"summary": f"Metadata of {svc.name}",
            "responses": {"200": {"description": "V2 model metadata"}, **_errors(404)}}


def _ready_op(svc: ModelService, versioned: bool) -> Operation:
    return {"summary": "Model readiness", "responses": {
        "200": {"description": "ready"}, **_errors(404, 503)}}


def _feedback_op(svc: ModelService, versioned: bool) -> Operation | None:
    """``POST /v1/models/NAME/feedback``, for a version that takes labels."""
    try:
        label = field_schema(svc.label_spec())
    except BatonError:  # no prediction log or no prediction field: the route answers 400
        return None
    request = {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["id", "label"],
        "properties": {"id": {"type": "string", "description": "A prediction id, from the "
                                                             "answer's ids"},
                       "label": label}}}
    counts = {"type": "array", "items": {"type": "string"}}
    response = {"type": "object", "properties": {
        "accepted": {"type": "integer"}, "unknown": counts, "duplicates": counts,
        "quality": {"type": "object", "additionalProperties": {"type": "number"}},
        "labelled": {"type": "integer"},
        "metric_errors": {"type": "object", "additionalProperties": {"type": "string"}}}}
    return {
        "summary": f"Attach true labels to predictions of {svc.name}",
        "operationId": f"feedback_{svc.name}",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "What was attached, and the quality now",
                              "content": {"application/json": {"schema": response}}},
                      **_errors(400, 404, 413, 415, 422)}}


#: A per-model route's ``operation`` -> its description from a model's contract (None:
#: the route answers only errors for that model).
OPERATIONS: dict[str, Callable[[ModelService, bool], Operation | None]] = {
    "metadata": _metadata_op, "ready": _ready_op, "infer": _infer_op,
    "predict": _predict_op, "feedback": _feedback_op}


def _static_op(route: Route) -> Operation:
    responses: dict[str, Any] = {}
    for status, (description, schema) in route.responses.items():
        responses[str(status)] = {"description": description} if schema is None else {
            "description": description, "content": {route.media: {"schema": schema}}}
    return {"summary": route.summary, "responses": responses}


def model_path(family: ModelRoutes, name: str, version: str | None, rest: str) -> str:
    """The path of a per-model route for one model (and version)."""
    base = f"{family.prefix}/{name}" + (f"/versions/{version}" if version else "")
    return f"{base}/{rest}" if rest else base


def _model_paths(svc: ModelService, family: ModelRoutes) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for versioned in (False, True) if family.versions else (False,):
        for route in family.routes:
            op = OPERATIONS[route.operation](svc, versioned)
            if op is not None:
                path = model_path(family, svc.name, svc.version if versioned else None,
                                  route.path)
                paths[path] = {m.lower(): op for m in route.methods}
    return paths


def openapi_document(engine: Engine, routes: RouteTable, *, auth: bool = False
                     ) -> dict[str, Any]:
    """``auth``: the engine asks for tokens; every path but the open ones then says so."""
    paths: dict[str, Any] = {}
    for route in routes.static.values():
        if route.offered is None or route.offered(engine):
            op = _static_op(route)
            if auth and route.scope == OPEN:
                op["security"] = []
            paths[route.path] = {m.lower(): op for m in route.methods}
    for svc in engine.models.values():
        for family in routes.families:
            paths.update(_model_paths(svc, family))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Baton engine", "version": __version__,
                 "description": "Models served by this engine, with their contracts."},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error", "code"],
            "properties": {"error": {"type": "string"}, "code": {"type": "string"},
                           "details": {"type": "object"}}}}},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token with the route's scope: infer, feedback, read or admin"}}
        doc["security"] = [{"bearer": []}]
    return doc
